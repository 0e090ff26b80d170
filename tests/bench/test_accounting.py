"""Item 4 of issue 11: traps by class, per second and per operation, and what they cost."""

from __future__ import annotations

import pytest

from secvma.bench import apps
from secvma.bench.apps import QUICK, accounting, parse_guest_counters, protection_error

PROC = """cpu  10 0 10 100 0 0 0 0 0 0
ctxt 5000
btime 1
processes 120
pgfault 9000
pgmajfault 3
Inter-|   Receive                                                |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop ...
 lo: 100 4 0 0 0 0 0 0 100 4 0 0 0 0 0 0
 eth0: 9000 70 0 0 0 0 0 0 8000 30 0 0 0 0 0 0
"""


def test_guest_counters_parsed_from_proc() -> None:
    assert parse_guest_counters(PROC) == {"context switch": 5000, "fork": 120, "page fault": 9000,
                                          "packet": 100}  # lo's 8 packets are not the network's


def test_accounting_divides_traps_by_operations_and_counts_el2_time() -> None:
    before = {"trap.SysregTrap": 10, "trap.Stage2Abort": 5, "msr.TTBR0_EL1": 3}
    after = {"trap.SysregTrap": 110, "trap.Stage2Abort": 25, "msr.TTBR0_EL1": 50}
    e0 = {"ntr": 1000, "fast": 400, "fast_roots": 300, "ticks": 0, "cntfrq": 1_000_000}
    e1 = {"ntr": 2120, "fast": 1400, "fast_roots": 1200, "ticks": 500_000, "cntfrq": 1_000_000}
    g0 = parse_guest_counters(PROC)
    g1 = {**g0, "context switch": g0["context switch"] + 560, "fork": g0["fork"] + 10}
    acc = accounting("hackbench", QUICK, 2.0, before, after, (e0, e1), (g0, g1))
    assert acc["traps"] == {"trap.SysregTrap": 100, "trap.Stage2Abort": 20, "msr.TTBR0_EL1": 47}
    assert acc["trap_total"] == 120  # classes only, not the finer counters
    el2 = acc["el2"]
    assert (el2["traps"], el2["fast_root"], el2["fast_msr"], el2["python"]) == (1120, 900, 100, 120)
    assert el2["python_s"] == pytest.approx(0.5) and el2["python_share"] == pytest.approx(0.25)
    assert el2["us_per_python_trap"] == pytest.approx(0.5e6 / 120)
    ops = (QUICK.hackbench_reps + QUICK.warmup) * QUICK.hackbench_groups * 400 * QUICK.hackbench_loops
    assert acc["per_op"] == {"op": "message", "ops": ops, "traps_per_op": 1120 / ops}
    assert acc["guest"] == {"context switch": 560, "fork": 10, "page fault": 0, "packet": 0}
    assert acc["traps_per_event"] == {"context switch": 2.0, "fork": 112.0}
    line = apps.accounting_line(acc)
    assert "900 root fast path" in line and "25% of the bench" in line and "2 per context switch" in line


def test_a_protected_run_must_be_armed_with_the_root_fast_path_and_no_refusal() -> None:
    ok = {"armed": True, "root_fast_path": ["TTBR0_EL1", "TTBR1_EL1"], "refusals": 0,
          "internal_errors": []}
    assert protection_error("transparent", ok) == ""
    assert "never armed" in protection_error("transparent", {**ok, "armed": False})
    assert "root fast path" in protection_error("transparent", {**ok, "root_fast_path": ["TTBR1_EL1"]})
    assert "2 refusals" in protection_error("transparent", {**ok, "refusals": 2,
                                                            "refusal_rules": ["user-root"]})
    assert "internal errors" in protection_error("transparent", {**ok, "internal_errors": ["x: y"]})


def _run(cfg: str, values: list[str], **kw: object) -> apps.ConfigRun:
    from secvma.bench.harness import Measured
    from secvma.bench.resultfile import BY_KEY

    return apps.ConfigRun(cfg, measured=[Measured(BY_KEY["hackbench"], values=values)], **kw)  # type: ignore[arg-type]


def test_demo_step_normalizes_transparent_to_null_and_fails_on_an_unprotected_run() -> None:
    from secvma.bench import report

    prot = {"armed": True, "root_fast_path": ["TTBR0_EL1", "TTBR1_EL1"], "refusals": 0,
            "internal_errors": [], "table_pages": {"EL1_PGD": 3}}
    runs = {"null": _run("null", ["2.0", "2.0"]),
            "transparent": _run("transparent", ["2.4", "2.6"], protection=prot)}

    def summary(r: dict[str, apps.ConfigRun]) -> dict[str, object]:
        return apps.demo_summary(r, report.normalized({c: report.from_measured(x.measured)
                                                       for c, x in r.items()}))

    out = summary(runs)
    assert out["ok"] is True and "transparent/null = 1.25" in str(out["summary"])
    assert out["normalized"]["transparent"]["null"] == pytest.approx(1.25)  # type: ignore[index]
    runs["transparent"].error = protection_error("transparent", {**prot, "armed": False})
    out = summary(runs)
    assert out["ok"] is False and "never armed" in str(out["summary"])
    out = summary({"null": runs["null"], "transparent": _run("transparent", [])})
    assert out["ok"] is False  # no figure is no result


def test_demo_step_is_transparent_against_null() -> None:
    from secvma.bench import report

    assert apps.DEMO_CONFIGS == ("null", "transparent")
    runs = {"plain": _run("plain", ["1.0", "1.0"]), "null": _run("null", ["1.5", "1.5"])}
    norm = report.normalized({c: report.from_measured(x.measured) for c, x in runs.items()})
    out = apps.demo_summary(runs, norm)
    assert out["ok"] is True and "null/plain = 1.50" in str(out["summary"])
