#!/usr/bin/env python3
"""DMA throughput of the testbed's virtio-blk disk with and without the SMMU, in one run.

Usage: python3 benchmarks/bench_dma.py [--runs N] [--json]

`none`: the SMMU is off (policy none answers the SMMU hypercalls ENOSYS), the device reaches
physical memory directly. `hardened` + `dma-static`: every transfer is translated by an SMMU
stream context, buffers mapped once. `hardened` + `dma`: the kernel also maps (HVC 25) and
unmaps (HVC 27: TLBI + SYNC, rung by the vCPU at EL2) each 64 KiB buffer around its request.
Each workload writes 1 MiB and reads it back, checking every byte; the guest
measures each direction with CNTVCT. Figures are medians over the runs, in MiB/s.
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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [measure("none", "dma", args.runs), measure("hardened", "dma-static", args.runs),
            measure("hardened", "dma", args.runs)]
    base = rows[0]
    ratios = [{k: round(float(r[k]) / float(base[k]), 3)  # type: ignore[arg-type]
               for k in ("write_mib_s", "read_mib_s")} for r in rows]
    if args.json:
        print(json.dumps({"rows": rows, "over_direct": ratios}, indent=2))
        return 0
    labels = ("direct (SMMU off)", "SMMU, mapped once", "SMMU, map/unmap per request")
    for label, r, q in zip(labels, rows, ratios, strict=True):
        print(f"{label:>28}: write {r['write_mib_s']:8.3f} MiB/s (x{q['write_mib_s']:<6}) "
              f"read {r['read_mib_s']:8.3f} MiB/s (x{q['read_mib_s']:<6}) "
              f"[{r['runs']} x 1 MiB each way, {r['wall_s']} s wall]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
