#!/usr/bin/env python3
"""Disk and network throughput of the Debian guest with and without the SMMU, in one run.

Usage: python3 benchmarks/bench_dma_io.py [--configs null,null+smmu,transparent-regs,...]
                                          [--mb 32] [--seconds 5] [--reps 3] [--json]

What is measured and the configurations: src/secvma/bench/dmaio.py. Figures are medians over
`--reps` repetitions inside one boot, MiB/s for the disk and Mbit/s for the network; the run
fails (exit 1) if any configuration did not complete or the hypervisor refused anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from secvma.bench.dmaio import CONFIGS, measure

DEFAULT = "null,null+smmu,transparent-regs,transparent-regs+smmu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT)
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; one of {CONFIGS}")
    rows = [measure(c, a.mb, a.seconds, a.reps) for c in configs]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'config':18} {'disk write':>11} {'disk read':>10} {'net rx':>9} {'net tx':>9}   "
              f"(MiB/s, Mbit/s; median of {a.reps}, {a.mb} MiB dd, {a.seconds} s iperf3)")
        for r in rows:
            def f(k: str, r: dict[str, Any] = r) -> str:
                return "-" if r[k] is None else f"{r[k]:.1f}"
            print(f"{r['config']:18} {f('disk_write_mib_s'):>11} {f('disk_read_mib_s'):>10} "
                  f"{f('net_rx_mbit_s'):>9} {f('net_tx_mbit_s'):>9}   {r['error'] or ''}")
            for n in r["notes"]:
                print(f"{'':18} note: {n}")
            if r["dma"]:
                print(f"{'':18} smmu: {r['dma']}")
    failed = [r for r in rows if r["error"] or r["refusals"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
