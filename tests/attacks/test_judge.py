"""Judging an attack's outcome: a hypervisor bug can never be reported as "blocked"."""

from __future__ import annotations

import pytest

from secvma.attacks.scenarios import ATTACKS, REFUSED, Attack, Evidence, Verdict
from secvma.attacks.suite import judge
from secvma.kpcore.refusal import Errno, Outcome, Refusal


class _Hv:
    """Just what `judge` reads of a KPCore: its refusals and internal errors."""

    def __init__(self, refusals: list[Refusal] | None = None, errors: list[str] | None = None):
        self.refusals = refusals or []
        self.internal_errors = errors or []

    def handle(self, *_a: object) -> None:  # the Hypervisor protocol
        raise AssertionError("not called")


def _attack(**expect: frozenset[Verdict]) -> Attack:
    return Attack("t", "test", lambda s: Evidence(Verdict.BLOCKED, ""), dict(expect))


def _refusal(outcome: Outcome) -> Refusal:
    return Refusal("rule", Errno.EPERM, "why", outcome, 0, 0)


def test_an_internal_error_is_a_mismatch_even_when_the_attack_saw_no_effect() -> None:
    """The machine halted on a KPCore model bug: the outcome is `internal error`, not blocked."""
    a = _attack(hardened=REFUSED, secvma2024=frozenset({Verdict.BLOCKED, Verdict.HALTED}))
    for policy in ("hardened", "secvma2024"):
        for seen in (Verdict.HALTED, Verdict.BLOCKED):
            ev, ok = judge(a, policy, Evidence(seen, "machine halted"),
                           _Hv(errors=["InternalError(event='Hvc', error='KeyError(3)')"]))
            assert not ok
            assert ev.verdict is Verdict.INTERNAL_ERROR and "KeyError" in ev.detail


def test_a_halt_counts_as_blocking_only_when_a_logged_panic_explains_it() -> None:
    a = _attack(secvma2024=frozenset({Verdict.BLOCKED, Verdict.HALTED}))
    halted = Evidence(Verdict.HALTED, "hypervisor halt")
    assert judge(a, "secvma2024", halted, _Hv([_refusal(Outcome.PANIC)]))[1]
    assert judge(a, "secvma2024", halted, _Hv([_refusal(Outcome.STALL)]))[1]
    ev, ok = judge(a, "secvma2024", halted, _Hv([_refusal(Outcome.REFUSED)]))
    assert not ok and "no refusal explains the halt" in ev.detail
    assert not judge(a, "secvma2024", halted, _Hv())[1]


def test_hardened_never_expects_a_halt_without_a_reason() -> None:
    """`hardened` blocks by refusing: no scenario accepts a halt from it unless it says why."""
    for a in ATTACKS:
        if Verdict.HALTED in a.expect["hardened"]:
            assert a.halt_why, a.name
    with pytest.raises(ValueError, match="halt_why"):
        _attack(hardened=frozenset({Verdict.BLOCKED, Verdict.HALTED}))
    with pytest.raises(ValueError, match="never an expected verdict"):
        _attack(none=frozenset({Verdict.INTERNAL_ERROR}))


def test_a_halt_under_hardened_is_a_mismatch() -> None:
    """Even with a panic logged, a halted machine is not what `hardened` promises."""
    a = next(a for a in ATTACKS if a.name == "forge-ttbr1")
    _ev, ok = judge(a, "hardened", Evidence(Verdict.HALTED, "halt"), _Hv([_refusal(Outcome.PANIC)]))
    assert not ok


def test_the_report_marks_unexpected_verdicts_and_internal_errors() -> None:
    """The Markdown report flags a mismatch and never shows an internal error as blocked."""
    from secvma.attacks.report import markdown

    res = {"ok": False,
           "summary": {"hardened": {"blocked": 0, "succeeded": 0, "internal_errors": 1,
                                    "unexpected": 1}},
           "outcomes": [{"attack": "forge-ttbr1", "policy": "hardened", "verdict": "internal error",
                         "detail": "hypervisor internal error: KeyError(3)", "expected": ["blocked"],
                         "matches": False, "refusals": [], "seconds": 0.1}]}
    text = markdown(res, "huge")
    assert "UNEXPECTED VERDICTS" in text
    assert "| forge-ttbr1 |" in text and "internal error **(unexpected)**" in text
    assert "| hardened | 0 | 0 | 1 | 1 |" in text


def test_a_broken_invariant_after_a_blocked_attack_is_a_mismatch_under_hardened() -> None:
    """No effect seen, but the hypervisor's state is wrong afterwards: not counted as blocked."""
    a = next(a for a in ATTACKS if a.name == "forge-ttbr1")
    seen = Evidence(Verdict.BLOCKED, "TTBR1 unchanged")
    ev, ok = judge(a, "hardened", seen, _Hv(), ["INV-KPT-RO: EL1_PTE page 0x42400 writable"])
    assert not ok and "INV-KPT-RO" in ev.detail
    assert judge(a, "hardened", seen, _Hv(), [])[1]


def test_an_effect_that_stops_the_kernel_stays_succeeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariant check after an attack must not turn a panic the attack caused (the machine
    gone) into a halt: vbar-forge was reported 'halted, no refusal explains it'."""
    from secvma.attacks import suite
    from secvma.testbed.commands import MachineStopped

    class Session:
        platform = None

        def __init__(self, *a: object, **k: object) -> None:
            pass

        def __enter__(self) -> Session:
            return self

        def __exit__(self, *a: object) -> None:
            return None

    class Hv:
        def __init__(self) -> None:
            self.st = object()
            self.refusals: list[object] = []
            self.internal_errors: list[object] = []

        def check_invariants(self, platform: object, full: bool) -> list[str]:
            raise MachineStopped("the machine is not running")

    monkeypatch.setattr(suite, "TestbedSession", Session)
    monkeypatch.setattr(suite, "make_hypervisor", lambda p, s2: Hv())
    won = Attack("x", "effect then panic", lambda s: Evidence(Verdict.SUCCEEDED, "panicked"),
                 {"hardened": frozenset({Verdict.SUCCEEDED})})
    out = suite.run_attack(won, "hardened")
    assert out.verdict is Verdict.SUCCEEDED and out.matches
    lost = Attack("y", "no effect", lambda s: Evidence(Verdict.BLOCKED, "refused"),
                  {"hardened": frozenset({Verdict.BLOCKED})})
    out = suite.run_attack(lost, "hardened")
    assert out.verdict is Verdict.HALTED and not out.matches
