"""Run the attack scenarios under each policy and compare with the expected verdicts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from secvma.attacks.scenarios import ATTACKS, Attack, Evidence, Verdict
from secvma.testbed.build import TestbedImage, build_testbed
from secvma.testbed.commands import MachineStopped, TestbedSession
from secvma.testbed.policies import make_hypervisor

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

    def as_json(self) -> dict[str, Any]:
        return {"attack": self.attack, "policy": self.policy, "verdict": self.verdict.value,
                "detail": self.detail, "expected": self.expected, "matches": self.matches,
                "refusals": self.refusals, "seconds": round(self.seconds, 3)}


def run_attack(attack: Attack, policy: str, s2: str = "huge",
               image: TestbedImage | None = None) -> Outcome:
    """Boot a fresh testbed under `policy`, run one scenario, and judge it."""
    hv = make_hypervisor(policy, s2)
    t0 = time.perf_counter()
    try:
        with TestbedSession(hv, image=image, command_timeout_s=30) as s:
            ev = attack.run(s)
    except MachineStopped as e:
        ev = Evidence(Verdict.HALTED, str(e))
    except TimeoutError as e:
        ev = Evidence(Verdict.HALTED, f"the kernel stopped answering: {e}")
    refusals = [f"{getattr(r, 'rule', '?')}: {getattr(r, 'reason', r)}"
                for r in getattr(hv, "refusals", [])]
    expected = attack.expect.get(policy, frozenset())
    return Outcome(attack.name, policy, ev.verdict, ev.detail, sorted(v.value for v in expected),
                   ev.verdict in expected, refusals[:5], time.perf_counter() - t0)


def run_suite(policies: tuple[str, ...] = POLICIES, only: tuple[str, ...] = (),
              s2: str = "huge") -> dict[str, Any]:
    """Every scenario under every policy; `ok` when each verdict is the expected one."""
    image = build_testbed()
    outcomes = [run_attack(a, p, s2, image) for a in ATTACKS if not only or a.name in only
                for p in policies]
    return {"ok": all(o.matches for o in outcomes),
            "summary": {p: {"blocked": sum(o.verdict in (Verdict.BLOCKED, Verdict.HALTED)
                                           for o in outcomes if o.policy == p),
                            "succeeded": sum(o.verdict is Verdict.SUCCEEDED
                                             for o in outcomes if o.policy == p)}
                        for p in policies},
            "outcomes": [o.as_json() for o in outcomes]}
