"""`secvma bench emu`: the testbed kernel's own hackbench and kernbench under each policy.

The testbed kernel (guest/testbed) runs its `hackbench` and `kernbench` workloads (workloads.c)
and times them with its own counter (`guest_s`); one boot per repetition. Configurations:
`none` (TestbedNullHypervisor: the SECvma hypercalls answered, no protection), and
`secvma2024` / `hardened` with huge or 4 KB stage-2 mappings, so the faithful policy's cost
stands beside the hardened one's. Normalized as the application benchmarks (norm.sh's cost,
report.py) against `none`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.bench.report import BenchResult, Results
from secvma.testbed.build import build_testbed
from secvma.testbed.policies import make_hypervisor
from secvma.testbed.run import run_workloads

CONFIGS = ("none", "secvma2024-huge", "secvma2024-4k", "hardened-huge", "hardened-4k")
BENCHES = ("hackbench", "kernbench")
BASELINE = ("none",)


@dataclass
class EmuRun:
    results: Results = field(default_factory=dict)
    traps: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def run_emu(configs: list[str], reps: int,
            progress: Callable[[str, int, int], None] = lambda _w, _d, _t: None) -> EmuRun:
    """Boot the testbed `reps` times per configuration and collect the workloads' guest times."""
    image = build_testbed()
    out = EmuRun()
    for cfg in configs:
        if cfg not in CONFIGS:
            raise ValueError(f"unknown configuration {cfg!r}: one of {', '.join(CONFIGS)}")
        policy, _, s2 = cfg.partition("-")
        samples: dict[str, list[float]] = {b: [] for b in BENCHES}
        traps: dict[str, int] = {}
        for i in range(reps):
            progress(cfg, i, reps)
            hv = make_hypervisor(policy, s2 or "huge")
            rep = run_workloads(hv, list(BENCHES), policy=policy, s2=s2 or "huge", image=image,
                                timeout_s=600)
            bad = [f"{n}: {w.message or 'failed'}" for n, w in rep.workloads.items() if not w.ok]
            if bad or rep.invariant_violations:
                out.errors[cfg] = "; ".join(bad + rep.invariant_violations[:1])
                break
            for n, w in rep.workloads.items():
                samples[n].append(w.guest_s)
            for k, v in rep.traps.items():
                traps[k] = traps.get(k, 0) + v
        progress(cfg, reps, reps)
        if all(samples.values()):
            out.results[cfg] = {b: BenchResult(tuple(v), "sec", False,
                                               {"guest": "testbed kernel", "policy": policy,
                                                "s2": s2 or "-", "reps": len(v)})
                                for b, v in samples.items()}
            out.traps[cfg] = traps
    return out
