"""`RunReport.ok` (what `secvma run` and the demo judge a run by) cannot hide a refusal."""

from __future__ import annotations

import pytest

from secvma.testbed.run import RunReport, WorkloadReport


def _report(**kw: list[str]) -> RunReport:
    workloads = {"faults": WorkloadReport("faults", True, 0.1, 0.1, "faults: ok")}
    base: dict[str, list[str]] = {"refusals": [], "invariant_violations": [],
                                  "internal_errors": []}
    base.update(kw)
    return RunReport("hardened", "huge", workloads, {}, {}, base["refusals"],
                     base["invariant_violations"], 0.1, 0.2, "poweroff", "",
                     internal_errors=base["internal_errors"])


def test_a_clean_run_is_ok() -> None:
    assert _report().ok


@pytest.mark.parametrize("what", ["refusals", "invariant_violations", "internal_errors"])
def test_a_run_the_hypervisor_objected_to_is_not_ok(what: str) -> None:
    """Every workload passed its self-check, but a legal workload needed a refusal (or hit a
    model bug, or broke an invariant): the run failed, and the JSON says why."""
    r = _report(**{what: ["ttbr0: TTBR0 is loaded only through HVC 35"]})
    assert all(w.ok for w in r.workloads.values())
    assert not r.ok and r.to_json()["ok"] is False
    assert r.to_json()["internal_errors"] == r.internal_errors
