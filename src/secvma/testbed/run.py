"""Run named workloads on the testbed under a hypervisor and summarise the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from secvma.hvabi import Op, Status
from secvma.platform import Hypervisor
from secvma.testbed.build import TestbedImage
from secvma.testbed.commands import Command, CommandResult, run_commands

WORKLOADS = ("hackbench", "kernbench", "modules", "faults", "dma")
"""The named workloads `all` runs, in this order (workloads.c)."""
EXTRA_WORKLOADS = ("dma-static",)
"""Workloads run only by name (measurement variants: benchmarks/bench_dma.py)."""


@dataclass(frozen=True)
class WorkloadReport:
    name: str
    ok: bool
    wall_s: float
    """Host-measured: from posting the command to seeing it done."""
    guest_s: float
    message: str


@dataclass
class RunReport:
    """One boot of the testbed running some workloads."""

    policy: str
    s2: str
    workloads: dict[str, WorkloadReport]
    traps: dict[str, int]
    hvc: dict[int, int]
    refusals: list[str]
    invariant_violations: list[str]
    boot_s: float | None
    wall_s: float
    exit: str
    reason: str
    console: str = field(repr=False, default="")
    internal_errors: list[str] = field(default_factory=list)
    """Model bugs the hypervisor hit (KPCore `internal_errors`); each one halts the machine."""
    cpu: str = "cortex-a57"
    feat_xnx: bool = False
    """The CPU reported FEAT_XNX (ID_AA64MMFR1_EL1) and the policy's stage 2 relied on it."""

    @property
    def ok(self) -> bool:
        """Every workload passed its self-check and the hypervisor had nothing to say: a legal
        workload that needed a refusal (or hit an internal error, or broke an invariant) is a
        failed run, even when the kernel coped with the refusal."""
        return bool(self.workloads) and all(w.ok for w in self.workloads.values()) \
            and not self.refusals and not self.invariant_violations and not self.internal_errors

    def to_json(self) -> dict[str, Any]:
        """JSON form; keys `workloads`, `traps`, `refusals`, `invariant_violations` are stable."""
        return {
            "workloads": {n: {"ok": w.ok, "wall_s": round(w.wall_s, 6),
                              "guest_s": round(w.guest_s, 6), "message": w.message}
                          for n, w in self.workloads.items()},
            "traps": dict(self.traps),
            "refusals": len(self.refusals),
            "invariant_violations": len(self.invariant_violations),
            "refusal_details": list(self.refusals),
            "invariant_violation_details": list(self.invariant_violations),
            "internal_errors": list(self.internal_errors),
            "hvc": {str(k): v for k, v in sorted(self.hvc.items())},
            "policy": self.policy,
            "s2": self.s2,
            "boot_s": None if self.boot_s is None else round(self.boot_s, 4),
            "wall_s": round(self.wall_s, 4),
            "exit": self.exit,
            "reason": self.reason,
            "ok": self.ok,
            "cpu": self.cpu,
            "feat_xnx": self.feat_xnx,
        }


def expand(names: list[str] | tuple[str, ...]) -> list[str]:
    """Workload names with `all` expanded; raises ValueError on an unknown name."""
    out: list[str] = []
    for n in names:
        if n == "all":
            out += [w for w in WORKLOADS if w not in out]
        elif n in WORKLOADS or n in EXTRA_WORKLOADS:
            if n not in out:
                out.append(n)
        else:
            raise ValueError(f"unknown workload {n!r}; one of "
                             f"{', '.join((*WORKLOADS, *EXTRA_WORKLOADS, 'all'))}")
    return out


def _hvc_counts(hv: Hypervisor) -> dict[int, int]:
    counts = getattr(hv, "hvc_counts", None)
    if isinstance(counts, dict):
        return {int(k): int(v) for k, v in counts.items()}
    out: dict[int, int] = {}
    for _imm, x in getattr(hv, "hvc_log", []):
        out[x[0]] = out.get(x[0], 0) + 1
    return out


def _strings(hv: Hypervisor, attr: str) -> list[str]:
    v = getattr(hv, attr, None)
    return [str(x) for x in v] if isinstance(v, list) else []


def run_workloads(hypervisor: Hypervisor, workloads: list[str] | tuple[str, ...] = ("all",), *,
                  policy: str = "", s2: str = "", image: TestbedImage | None = None,
                  timeout_s: float = 120.0, echo_console: bool = False,
                  ncpus: int = 1, cpu: str = "cortex-a57") -> RunReport:
    """Boot the testbed under `hypervisor` on QEMU CPU `cpu`, run each workload by command,
    power off.

    `ncpus` > 1: the secondaries come up (PSCI CPU_ON, their own HVC 6 and trapped MSRs) and
    idle in their command loops while CPU 0 runs the workloads."""
    names = expand(workloads)
    run = run_commands(hypervisor, [Command(Op.WORKLOAD, name=n) for n in names], image=image,
                       timeout_s=timeout_s, echo_console=echo_console, ncpus=ncpus, cpu=cpu)
    reports: dict[str, WorkloadReport] = {}
    for n, r in zip(names, run.results, strict=True):
        reports[n] = _report(n, r)
    return RunReport(policy, s2, reports, dict(run.run.traps), _hvc_counts(hypervisor),
                     _strings(hypervisor, "refusals"), _strings(hypervisor, "invariant_violations"),
                     run.boot_s, run.run.wall_s, run.run.exit, run.run.reason, run.run.console,
                     _strings(hypervisor, "internal_errors"), cpu, feat_xnx_of(hypervisor))


def feat_xnx_of(hypervisor: object) -> bool:
    """Whether the policy's stage 2 ran on a CPU with FEAT_XNX (False for the NullHypervisor,
    whose identity stage 2 makes no use of it)."""
    st = getattr(hypervisor, "st", None)
    if st is None:
        st = getattr(hypervisor, "_st", None)
    return bool(getattr(st, "feat_xnx", False))


def _report(name: str, r: CommandResult) -> WorkloadReport:
    msg = r.msg
    if r.status not in (Status.OK, Status.FAILED) and not msg:
        msg = r.status.name.lower()
    return WorkloadReport(name, r.ok, r.wall_s, r.guest_s, msg)
