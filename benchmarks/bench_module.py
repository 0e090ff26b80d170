"""Benchmark: load xfs.ko the way SECvma's hypervisor would, next to GNU ld on the same object.

Timed per run (median over --runs): parse (decompress, split the Linux signature, strict
ELF parse) + SECvma signed message (eval-spec §3.3, with the exact heapsort) + Ed25519
verify + link (load-time view, kernel layout, symbol resolution against Module.symvers and
libcrc32c's exports, all ~40,000 relocations). In the same runs, `aarch64-linux-gnu-ld`
links the same object at pinned addresses (process wall time). Targets: ≤ 150 ms and
≤ 2 × ld.

    python benchmarks/bench_module.py [--runs 9] [--module PATH] [--json]
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
from secvma.module import secvma_sig
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
    oracle = oracle_layout(open_module(raw).elf)

    stages: dict[str, list[float]] = {"parse": [], "message": [], "verify": [], "link": [],
                                      "total": [], "ld": []}
    relocs = 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        img = open_module(raw, path.name)
        t1 = time.perf_counter()
        msg = secvma_sig.build_message(img.elf)
        t2 = time.perf_counter()
        secvma_sig.verify_message(msg, signature, pub)
        t3 = time.perf_counter()
        linked = link_module(img.elf, exports, CORE, INIT, LINUX_6_1)
        t4 = time.perf_counter()
        relocs = linked.relocated.total
        for name, a, b in (("parse", t0, t1), ("message", t1, t2), ("verify", t2, t3),
                           ("link", t3, t4), ("total", t0, t4)):
            stages[name].append((b - a) * 1e3)
        stages["ld"].append(ld_link(img.elf, oracle, ld=args.ld).seconds * 1e3)

    med = {k: statistics.median(v) for k, v in stages.items()}
    ratio = med["total"] / med["ld"]
    result = {
        "module": str(path), "runs": args.runs, "relocations": relocs,
        "message_bytes": len(msg.message),
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "ratio_vs_ld": round(ratio, 2),
        "target_ms": TARGET_MS, "target_ratio": TARGET_RATIO,
        "meets_ms": med["total"] <= TARGET_MS, "meets_ratio": ratio <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{path.name}: {relocs} relocations, {len(msg.message)}-byte signed message, "
              f"median of {args.runs} runs")
        for k in ("parse", "message", "verify", "link"):
            print(f"  {k:8s} {med[k]:8.1f} ms")
        print(f"  {'total':8s} {med['total']:8.1f} ms   (target ≤ {TARGET_MS:.0f} ms: "
              f"{'met' if result['meets_ms'] else 'MISSED'})")
        print(f"  {'GNU ld':8s} {med['ld']:8.1f} ms")
        print(f"  ratio    {ratio:8.2f} ×    (target ≤ {TARGET_RATIO:.0f} ×: "
              f"{'met' if result['meets_ratio'] else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
