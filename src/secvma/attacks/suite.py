"""Run the attack scenarios under each policy and compare with the expected verdicts.

A verdict can only match when the hypervisor itself was sound: a KPCore internal error (a model
bug, which halts the machine) turns the outcome into `internal error`, never "blocked"; and a
halt counts as blocking only when the hypervisor logged the panic or stall that caused it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from secvma.attacks.scenarios import ATTACKS, Attack, Evidence, Verdict
from secvma.platform import Hypervisor
from secvma.testbed.build import TestbedImage, build_testbed
from secvma.testbed.commands import MachineStopped, TestbedSession
from secvma.testbed.policies import make_hypervisor
from secvma.testbed.run import feat_xnx_of

POLICIES = ("none", "secvma2024", "hardened")


@dataclass
class Outcome:
    attack: str
    policy: str
    verdict: Verdict
    detail: str
    expected: list[str]
    matches: bool
    refusals: list[str]
    seconds: float
    cpu: str = "cortex-a57"
    feat_xnx: bool = False  # the CPU had FEAT_XNX and the policy's stage 2 relied on it

    def as_json(self) -> dict[str, Any]:
        return {"attack": self.attack, "policy": self.policy, "verdict": self.verdict.value,
                "detail": self.detail, "expected": self.expected, "matches": self.matches,
                "refusals": self.refusals, "seconds": round(self.seconds, 3),
                "cpu": self.cpu, "feat_xnx": self.feat_xnx}


def _listed(hv: Hypervisor, attr: str) -> list[object]:
    v = getattr(hv, attr, None)
    return list(v) if isinstance(v, list) else []


def judge(attack: Attack, policy: str, ev: Evidence, hv: Hypervisor,
          violations: list[str] | None = None) -> tuple[Evidence, bool]:
    """The verdict the outcome reports and whether it is the expected one.

    An internal error of the hypervisor overrides the evidence (whatever the attack saw, the
    run proves a bug); a halt under a hypervisor that logs refusals must be explained by a
    refusal it logged as a panic or a stall, else it is a halt nobody decided: also a bug.
    Under `hardened` an invariant broken after the attack is a mismatch too: the attack saw no
    effect, yet the hypervisor's own state is wrong (secvma2024's gaps may break them).
    """
    errors = _listed(hv, "internal_errors")
    if errors:
        return Evidence(Verdict.INTERNAL_ERROR, f"hypervisor internal error: {errors[0]} "
                                                f"(the attack saw: {ev.detail})"), False
    if ev.verdict is Verdict.HALTED and hasattr(hv, "refusals"):
        outcomes = {getattr(getattr(r, "outcome", None), "value", None)
                    for r in _listed(hv, "refusals")}
        if not outcomes & {"panic", "stall"}:
            return Evidence(Verdict.HALTED, f"{ev.detail} (no refusal explains the halt)"), False
    if violations and policy == "hardened":
        return Evidence(ev.verdict, f"{ev.detail}; invariant violated: {violations[0]}"), False
    return ev, ev.verdict in attack.expect.get(policy, frozenset())


def _invariants(hv: Hypervisor, s: TestbedSession) -> list[str]:
    """Every invariant of docs/kpcore-spec.md §9 after the attack, the kernel idle (KPCore only)."""
    check = getattr(hv, "check_invariants", None)
    if check is None or getattr(hv, "st", None) is None:
        return []
    return [str(v) for v in check(s.platform, full=True)]


def run_attack(attack: Attack, policy: str, s2: str = "huge",
               image: TestbedImage | None = None, cpu: str = "cortex-a57") -> Outcome:
    """Boot a fresh testbed under `policy`, run one scenario, and judge it."""
    hv = make_hypervisor(policy, s2)
    t0 = time.perf_counter()
    violations: list[str] = []
    try:
        with TestbedSession(hv, image=image, command_timeout_s=30, ncpus=attack.ncpus,
                            cpu=cpu) as s:
            ev = attack.run(s)
            if policy == "hardened":  # secvma2024's gaps break invariants by design
                try:
                    violations = _invariants(hv, s)
                except MachineStopped:
                    # an attack whose effect stops the kernel (a panic through a forged vector)
                    # leaves no machine to check; any other stop is the hypervisor's halt
                    if ev.verdict is not Verdict.SUCCEEDED:
                        raise
    except MachineStopped as e:
        ev = Evidence(Verdict.HALTED, str(e))
    except TimeoutError as e:
        ev = Evidence(Verdict.HALTED, f"the kernel stopped answering: {e}")
    ev, matches = judge(attack, policy, ev, hv, violations)
    refusals = [f"{getattr(r, 'rule', '?')}: {getattr(r, 'reason', r)}"
                for r in _listed(hv, "refusals")]
    expected = attack.expect.get(policy, frozenset())
    return Outcome(attack.name, policy, ev.verdict, ev.detail, sorted(v.value for v in expected),
                   matches, refusals[:5], time.perf_counter() - t0, cpu, feat_xnx_of(hv))


def run_suite(policies: tuple[str, ...] = POLICIES, only: tuple[str, ...] = (),
              s2: str = "huge", cpu: str = "cortex-a57") -> dict[str, Any]:
    """Every scenario under every policy; `ok` when each verdict is the expected one."""
    image = build_testbed()
    outcomes = [run_attack(a, p, s2, image, cpu) for a in ATTACKS if not only or a.name in only
                for p in policies]
    return {"ok": all(o.matches for o in outcomes), "cpu": cpu,
            "feat_xnx": any(o.feat_xnx for o in outcomes), "summary": summarize(outcomes, policies),
            "outcomes": [o.as_json() for o in outcomes]}


def class_sample() -> tuple[str, ...]:
    """One single-CPU scenario per class (the name up to its first `-`) and the first of the
    secvma2024 gap scenarios: the quick demo's catalogue (the whole one: `secvma attack`)."""
    first: dict[str, str] = {}
    for a in ATTACKS:
        if a.ncpus == 1:
            first.setdefault(a.name.split("-")[0], a.name)
    gap = next((a.name for a in ATTACKS if a.gap and a.ncpus == 1), None)
    names = list(first.values())
    if gap is not None and gap not in names:
        names.append(gap)
    return tuple(names)


def summarize(outcomes: list[Outcome], policies: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per policy: blocked (refused or halted), succeeded, internal errors, unexpected verdicts
    (the `summary` JSON key of both attack suites)."""
    return {p: {"blocked": sum(o.verdict in (Verdict.BLOCKED, Verdict.HALTED)
                               for o in outcomes if o.policy == p),
                "succeeded": sum(o.verdict is Verdict.SUCCEEDED for o in outcomes if o.policy == p),
                "internal_errors": sum(o.verdict is Verdict.INTERNAL_ERROR
                                       for o in outcomes if o.policy == p),
                "unexpected": sum(not o.matches for o in outcomes if o.policy == p)}
            for p in policies}
