#!/usr/bin/env python3
"""Testbed boot time and `all`-workload wall time under each policy (figures, not tests).

Usage: python3 benchmarks/bench_testbed.py [--runs N] [--json]

Per policy (none, secvma2024, hardened; stage 2 huge and 4k for the KPCore policies): median
and spread over N boots of the time until the kernel's command loop is ready (`boot_s`) and of
the whole run (boot, hackbench, kernbench, modules, faults, power-off; `wall_s`), host-measured.
These were wall-time asserts in tests/testbed/test_workloads.py (boot < 5 s, run < 10 s under
policy none); on a shared host they are measurements to compare, not pass/fail conditions.
"""

from __future__ import annotations

import argparse
import json
import statistics

from secvma.testbed.build import build_testbed
from secvma.testbed.policies import make_hypervisor
from secvma.testbed.run import run_workloads

CONFIGS = (("none", "huge"), ("secvma2024", "huge"), ("secvma2024", "4k"), ("hardened", "huge"),
           ("hardened", "4k"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    image = build_testbed()
    out: dict[str, dict[str, float | bool]] = {}
    for policy, s2 in CONFIGS:
        boots: list[float] = []
        walls: list[float] = []
        ok = True
        for _ in range(args.runs):
            rep = run_workloads(make_hypervisor(policy, s2), ("all",), policy=policy, s2=s2,
                                image=image)
            ok = ok and rep.ok
            if rep.boot_s is not None:
                boots.append(rep.boot_s)
            walls.append(rep.wall_s)
        out[f"{policy}/{s2}"] = {
            "ok": ok, "runs": args.runs,
            "boot_s_median": round(statistics.median(boots), 3) if boots else float("nan"),
            "boot_s_max": round(max(boots), 3) if boots else float("nan"),
            "wall_s_median": round(statistics.median(walls), 3),
            "wall_s_max": round(max(walls), 3)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'policy/s2':<18}{'ok':<6}{'boot median':>12}{'boot max':>10}{'run median':>12}"
          f"{'run max':>10}")
    for name, r in out.items():
        print(f"{name:<18}{r['ok']!s:<6}{r['boot_s_median']:>11}s{r['boot_s_max']:>9}s"
              f"{r['wall_s_median']:>11}s{r['wall_s_max']:>9}s")


if __name__ == "__main__":
    main()
