#!/usr/bin/env python3
"""DMA throughput of the testbed's virtio-blk disk with and without the SMMU, in one run.

Usage: python3 benchmarks/bench_dma.py [--runs N] [--debian] [--json]

`none`: the SMMU is off (policy none answers the SMMU hypercalls ENOSYS), the device reaches
physical memory directly. `hardened` + `dma-static`: every transfer is translated by an SMMU
stream context, buffers mapped once. `hardened` + `dma`: the kernel also maps (HVC 25) and
unmaps (HVC 27: TLBI + SYNC, rung by the vCPU at EL2) each 64 KiB buffer around its request.
Each workload writes 1 MiB and reads it back, checking every byte; the guest
measures each direction with CNTVCT. Figures are medians over the runs, in MiB/s.

`--debian` adds the unmodified Debian kernel: its own virtio-blk driver writes 64 KiB with
O_DIRECT and reads it back (/init, SECVMA_DMA=1), timed by the guest, under the NullHypervisor
(SMMU off) and under `transparent` (IOVA = PA identity map through the SMMU).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

from secvma.hvabi import Op
from secvma.testbed.build import build_testbed
from secvma.testbed.commands import Command, run_commands
from secvma.testbed.policies import make_hypervisor

PATTERN = re.compile(r"(\d+) KiB .*write (\d+) us, read (\d+) us")


def measure(policy: str, workload: str, runs: int) -> dict[str, object]:
    image = build_testbed()
    hv = make_hypervisor(policy, "huge")
    t0 = time.perf_counter()
    run = run_commands(hv, [Command(Op.WORKLOAD, name=workload) for _ in range(runs)],
                       image=image, timeout_s=900)
    wall = time.perf_counter() - t0
    writes, reads = [], []
    for r in run.results:
        m = PATTERN.search(r.msg)
        if not r.ok or m is None:
            raise SystemExit(f"{policy}: dma workload failed: {r.msg}")
        mib = int(m.group(1)) / 1024
        writes.append(mib / (int(m.group(2)) / 1e6))
        reads.append(mib / (int(m.group(3)) / 1e6))
    out: dict[str, object] = {"policy": policy, "workload": workload, "runs": runs,
                              "write_mib_s": round(statistics.median(writes), 3),
                              "read_mib_s": round(statistics.median(reads), 3),
                              "wall_s": round(wall, 2)}
    counts = getattr(hv, "hvc_counts", {})
    if isinstance(counts, dict):
        out["smmu_map_calls"] = counts.get(25, 0)
    return out


DEBIAN_PATTERN = re.compile(r"SECVMA-INIT: dma ok (\d+) bytes each way, us (\d+)")


def measure_debian(policy: str, runs: int) -> dict[str, object]:
    from secvma import fixtures
    from secvma.kpcore.transparent import TransparentKPCore
    from secvma.machine.initramfs import build_initramfs, debian_virtio_blk_modules
    from secvma.machine.null import NullHypervisor
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot
    from secvma.platform import Hypervisor

    fx = fixtures.available()
    if fx is None:
        raise SystemExit("--debian needs the fixtures: run `secvma fixtures fetch`")
    initrd = build_initramfs(debian_virtio_blk_modules())
    rates = []
    for _ in range(runs):
        hv: Hypervisor = (TransparentKPCore(image=fx.kernel_image.read_bytes())
                          if policy == "transparent" else NullHypervisor())
        res = boot(MachineConfig(kernel=fx.kernel_image, initrd=initrd, timeout_s=300, smmu=True,
                                 dma_disk_mb=4, append="console=ttyAMA0 panic=-1 SECVMA_DMA=1"),
                   hv)
        m = DEBIAN_PATTERN.search(res.console)
        if m is None:
            raise SystemExit(f"debian/{policy}: no DMA result ({res.exit}: {res.reason})")
        rates.append(2 * int(m.group(1)) / (1 << 20) / (int(m.group(2)) / 1e6))
    return {"policy": f"debian/{policy}", "runs": runs,
            "write_read_mib_s": round(statistics.median(rates), 3)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--debian", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [measure("none", "dma", args.runs), measure("hardened", "dma-static", args.runs),
            measure("hardened", "dma", args.runs)]
    base = rows[0]
    ratios = [{k: round(float(r[k]) / float(base[k]), 3)  # type: ignore[arg-type]
               for k in ("write_mib_s", "read_mib_s")} for r in rows]
    deb = [measure_debian(p, args.runs) for p in ("none", "transparent")] if args.debian else []
    if args.json:
        print(json.dumps({"rows": rows, "over_direct": ratios, "debian": deb}, indent=2))
        return 0
    labels = ("direct (SMMU off)", "SMMU, mapped once", "SMMU, map/unmap per request")
    for label, r, q in zip(labels, rows, ratios, strict=True):
        print(f"{label:>28}: write {r['write_mib_s']:8.3f} MiB/s (x{q['write_mib_s']:<6}) "
              f"read {r['read_mib_s']:8.3f} MiB/s (x{q['read_mib_s']:<6}) "
              f"[{r['runs']} x 1 MiB each way, {r['wall_s']} s wall]")
    if deb:
        a, b = (float(d["write_read_mib_s"]) for d in deb)  # type: ignore[arg-type]
        print(f"Debian virtio-blk, 64 KiB O_DIRECT write + read: SMMU off {a:.3f} MiB/s, "
              f"identity map through the SMMU {b:.3f} MiB/s (x{b / a:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
