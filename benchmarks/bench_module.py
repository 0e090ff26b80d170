"""Benchmark: load xfs.ko the way SECvma's hypervisor would, next to GNU ld on the same object.

Timed per run (median over --runs): parse (decompress, split the Linux signature, strict
ELF parse) + SECvma signed message (docs/eval-spec.md §3.3, with the exact heapsort) + Ed25519
verify + link (load-time view, kernel layout, symbol resolution against Module.symvers and
libcrc32c's exports, all ~40,000 relocations). Each run times the native accelerator
(secvma.module.native, when it can be built) and the pure-Python reference, and
`aarch64-linux-gnu-ld` linking the same object at pinned addresses (process wall time).
Targets (on the native figures): ≤ 150 ms and ≤ 2 × ld. JSON keys: total_ms, ld_ms, ratio,
total_ms_python, and per-stage medians.

    python benchmarks/bench_module.py [--runs 9] [--module PATH] [--json] [--python-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secvma import fixtures
from secvma.module import native, secvma_sig
from secvma.module.api import link_module, open_module
from secvma.module.config import LINUX_6_1
from secvma.module.ldcheck import ld_link, oracle_layout
from secvma.module.symbols import ExportTable, module_exports, parse_symvers

TARGET_MS = 150.0
TARGET_RATIO = 2.0
CORE, INIT, KERNEL = 0xFFFF800008000000, 0xFFFF800008800000, 0xFFFF800009000000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--module", type=Path, help="module to load (default: fixture xfs.ko)")
    ap.add_argument("--ld", default="aarch64-linux-gnu-ld")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--python-only", action="store_true",
                    help="skip the native accelerator (pure-Python figures only)")
    args = ap.parse_args(argv)

    try:
        fs = fixtures.fetch()
    except fixtures.FixturesUnavailable as exc:
        print(f"Debian fixtures unavailable: {exc}", file=sys.stderr)
        return 2
    path = args.module or fs.modules["xfs"]
    raw = path.read_bytes()
    symvers = parse_symvers(fs.symvers.read_text())
    exports = ExportTable.kernel_from_symvers(symvers, KERNEL)
    dep = open_module(fs.modules["libcrc32c"].read_bytes())
    dep_link = link_module(dep.elf, exports, CORE + 0x4000000, CORE + 0x5000000)
    exports.add(module_exports(dep.elf, dep_link.addresses, "libcrc32c"))
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    signature = secvma_sig.sign_module(open_module(raw).elf, key)
    img_elf = open_module(raw).elf
    oracle = oracle_layout(img_elf)

    def run_once(stages: dict[str, list[float]]) -> tuple[int, int]:
        t0 = time.perf_counter()
        img = open_module(raw, path.name)
        t1 = time.perf_counter()
        msg = secvma_sig.build_message(img.elf)
        t2 = time.perf_counter()
        secvma_sig.verify_message(msg, signature, pub)
        t3 = time.perf_counter()
        linked = link_module(img.elf, exports, CORE, INIT, LINUX_6_1)
        t4 = time.perf_counter()
        for name, a, b in (("parse", t0, t1), ("message", t1, t2), ("verify", t2, t3),
                           ("link", t3, t4), ("total", t0, t4)):
            stages[name].append((b - a) * 1e3)
        return linked.relocated.total, len(msg.message)

    names = ("parse", "message", "verify", "link", "total")
    fast: dict[str, list[float]] = {k: [] for k in names}
    slow: dict[str, list[float]] = {k: [] for k in names}
    lds: list[float] = []
    have_native = native.available() and not args.python_only
    relocs = msg_len = 0
    for _ in range(args.runs):  # interleaved, so all three see the same machine state
        if have_native:
            with native.use_native(True):
                relocs, msg_len = run_once(fast)
        with native.use_native(False):
            relocs, msg_len = run_once(slow)
        lds.append(ld_link(img_elf, oracle, ld=args.ld).seconds * 1e3)

    ld_ms = statistics.median(lds)
    med_py = {k: statistics.median(v) for k, v in slow.items()}
    med = {k: statistics.median(v) for k, v in fast.items()} if have_native else dict(med_py)
    ratio = med["total"] / ld_ms
    result = {
        "module": str(path), "runs": args.runs, "relocations": relocs,
        "message_bytes": msg_len, "native": have_native,
        "total_ms": round(med["total"], 2), "ld_ms": round(ld_ms, 2), "ratio": round(ratio, 2),
        "total_ms_python": round(med_py["total"], 2),
        "ratio_python": round(med_py["total"] / ld_ms, 2),
        "median_ms": {k: round(v, 2) for k, v in med.items()} | {"ld": round(ld_ms, 2)},
        "median_ms_python": {k: round(v, 2) for k, v in med_py.items()},
        "target_ms": TARGET_MS, "target_ratio": TARGET_RATIO,
        "meets_ms": med["total"] <= TARGET_MS, "meets_ratio": ratio <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{path.name}: {relocs} relocations, {msg_len}-byte signed message, "
              f"median of {args.runs} runs")
        print(f"  {'':8s} {'native' if have_native else '(none)':>9s} {'python':>9s}")
        for k in names:
            nat = f"{med[k]:9.1f}" if have_native else f"{'-':>9s}"
            print(f"  {k:8s} {nat} {med_py[k]:9.1f} ms")
        print(f"  {'GNU ld':8s} {ld_ms:9.1f} ms")
        print(f"  ratio    {ratio:9.2f} {med_py['total'] / ld_ms:9.2f} ×")
        print(f"  target   total ≤ {TARGET_MS:.0f} ms: {'met' if result['meets_ms'] else 'MISSED'}; "
              f"≤ {TARGET_RATIO:.0f} × ld: {'met' if result['meets_ratio'] else 'MISSED'}"
              f"{'' if have_native else ' (native accelerator not available)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
