#!/usr/bin/env python3
"""The stock Debian kernel's cost of protection (issue 10): boot and workloads, measured in one run.

Usage: python3 benchmarks/bench_linux.py [--workloads forkexec,mmap,pipe,threads,fileio]
                                         [--s2 huge,4k] [--smp 1] [--reps 1] [--json]

For `none` and `transparent` (each stage-2 mode asked for), boots Debian with secvma's helper
as /init and prints: seconds to the helper's first line (boot), each workload's seconds as the
guest measures it, its ratio to `none`, and the traps that explain the difference: by class as
the mailbox saw them, answered at EL2 by the root fast path, and KPCore's own counters for
transparent (stores emulated into kernel tables and user roots, roots released, retried
stores, stage-2 fills). Medians over `--reps`. The host is shared and TCG timing is noisy:
read ratios and trap counts within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from secvma.linux.session import WORKLOADS, LinuxRunReport, run_linux_workloads

KPCORE_COUNTERS = ("table_stores", "root_stores", "root_store_released", "retried",
                   "tables_claimed", "tables_released", "s2_filled", "text_patches")


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 4) if vals else None


def one_config(policy: str, s2: str, smp: int, workloads: tuple[str, ...], reps: int) -> dict[str, Any]:
    runs: list[LinuxRunReport] = []
    stats: list[dict[str, int]] = []
    for _ in range(reps):
        r = run_linux_workloads(policy, s2, smp, workloads, timeout_s=900)
        runs.append(r)
        stats.append(r.kpcore_stats)
        print(f"  {policy}/{s2}: ok={r.ok} wall {r.wall_s:.1f} s", file=sys.stderr)
    last = runs[-1]
    return {
        "ok": all(r.ok for r in runs),
        "boot_s": _median([r.boot_s for r in runs]),
        "workloads_s": {n: _median([r.workloads[n].seconds for r in runs]) for n in workloads},
        "traps": last.traps, "fast_traps": last.fast_traps, "sysreg_traps": last.sysreg_traps,
        "refusals": len(last.refusals), "kpcore": {k: v for k, v in stats[-1].items()
                                                   if k in KPCORE_COUNTERS},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(w for w in WORKLOADS if w != "modules"))
    ap.add_argument("--s2", default="huge", help="stage-2 modes for transparent, comma-separated")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    wls = tuple(a.workloads.split(","))
    out: dict[str, Any] = {"workloads": list(wls), "smp": a.smp, "reps": a.reps, "configs": {}}
    configs = [("none", "huge")] + [("transparent", s) for s in a.s2.split(",")]
    for policy, s2 in configs:
        label = policy if policy == "none" else f"transparent-{s2}"
        out["configs"][label] = one_config(policy, s2, a.smp, wls, a.reps)
    base = out["configs"]["none"]
    for label, row in out["configs"].items():
        if label == "none":
            continue
        row["boot_ratio"] = (round(row["boot_s"] / base["boot_s"], 2)
                             if row["boot_s"] and base["boot_s"] else None)
        row["ratio_to_none"] = {n: (round(s / base["workloads_s"][n], 2)
                                    if s and base["workloads_s"].get(n) else None)
                                for n, s in row["workloads_s"].items()}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{'config':<18}{'boot s':>8}  " + "".join(f"{n:>18}" for n in wls))
        for label, row in out["configs"].items():
            cells = []
            for n in wls:
                s = row["workloads_s"][n]
                r = row.get("ratio_to_none", {}).get(n)
                cells.append(f"{'-' if s is None else f'{s:.3f}'}{'' if r is None else f' ({r}x)':>9}")
            print(f"{label:<18}{row['boot_s'] or '-':>8}  " + "".join(f"{c:>18}" for c in cells))
        for label, row in out["configs"].items():
            print(f"{label}: traps {row['traps']} fast {row['fast_traps']} "
                  f"msr {row['sysreg_traps']} kpcore {row['kpcore']} refusals {row['refusals']}")
    return 0 if all(row["ok"] for row in out["configs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
