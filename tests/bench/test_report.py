"""Results done right: statistics, normalization against plain and null, table, Figure-6 PNG, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from secvma.bench.harness import Measured
from secvma.bench.report import BenchResult, cost, from_measured, from_resultfile, plot, table, to_json
from secvma.bench.resultfile import BY_KEY, load

DATA = Path(__file__).parent / "data"


def _results() -> dict[str, dict[str, BenchResult]]:
    plain = from_resultfile(load(DATA / "bm_linux.txt"))
    prot = from_resultfile(load(DATA / "bm_secvma.txt"))
    # `null`: the plain samples, 2 % slower (times up, throughputs down).
    null = {k: BenchResult(tuple(v * (1.02 if not r.higher_is_better else 1 / 1.02) for v in r.samples),
                           r.unit, r.higher_is_better) for k, r in plain.items()}
    return {"plain": plain, "null": null, "transparent": prot}


def test_json_has_results_and_both_normalizations() -> None:
    doc = json.loads(json.dumps(to_json(_results())))
    hack = doc["results"]["plain"]["hackbench"]
    assert hack["samples"] == [11.121, 11.391, 11.249, 11.166]
    assert hack["mean"] == pytest.approx(11.23175) and hack["median"] == pytest.approx(11.2075)
    assert hack["unit"] == "sec" and hack["higher_is_better"] is False and hack["params"] == {}
    assert set(doc["results"]["transparent"]) == {k.key for k in BY_KEY.values()}
    n = doc["normalized"]["transparent"]
    assert n["hackbench"]["plain"] == pytest.approx(12.909 / 11.23175, rel=1e-6)
    assert n["hackbench"]["null"] == pytest.approx(12.909 / (11.23175 * 1.02), rel=1e-6)
    # throughput: baseline / result, so slower is still > 1
    assert n["apache"]["plain"] == pytest.approx(3710.3375 / 3554.445, rel=1e-6)
    assert doc["normalized"]["plain"]["apache"]["plain"] == pytest.approx(1.0)
    assert doc["normalized"]["null"]["memcached"]["plain"] == pytest.approx(1.02)


def test_error_bar_grows_with_spread() -> None:
    tight = BenchResult((10.0, 10.0, 10.0), "sec", False)
    loose = BenchResult((8.0, 10.0, 12.0), "sec", False)
    assert cost(tight, tight) == (1.0, 0.0)
    n, e = cost(loose, tight)
    assert n == pytest.approx(1.0) and e == pytest.approx(0.2)
    assert cost(loose, loose)[1] == pytest.approx(0.2)  # a baseline's own bar: its spread once


def test_table_and_png(tmp_path: Path) -> None:
    res = _results()
    con = Console(record=True, width=160)
    con.print(table(res))
    text = con.export_text()
    assert "hackbench" in text and "transparent" in text and "1.149" in text
    png = tmp_path / "fig6.png"
    assert plot(res, png) == "plain"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_from_measured_keeps_params_and_skips_empty() -> None:
    m = Measured(BY_KEY["apache"], values=["100.5", "99.5"], params={"requests": 300}, tool="ab")
    empty = Measured(BY_KEY["memcached"], skipped="absent")
    got = from_measured([m, empty])
    assert list(got) == ["apache"]
    assert got["apache"].params == {"requests": 300, "tool": "ab"} and got["apache"].mean == 100.0


def test_trapaccounting_counts_classes_not_overlapping_counters() -> None:
    # Regression: TransparentKPCore's stats hold trap classes and finer counters of the same traps.
    from secvma.bench.apps import QUICK, accounting

    stats = {"trap.SysregTrap": 1000, "msr.TTBR0_EL1": 300, "msr.TTBR1_EL1": 700, "ttbr1_checked": 700}
    acc = accounting("apache", QUICK, 10.0, {"trap.SysregTrap": 200}, stats)
    assert acc["trap_total"] == 800 and acc["traps_per_s"] == 80.0
    ops = (QUICK.apache_reps + QUICK.warmup) * QUICK.apache_requests
    assert acc["per_op"] == {"op": "request", "ops": ops, "traps_per_op": 800 / ops}
    null = accounting("hackbench", QUICK, 2.0, {"Hvc": 1}, {"Hvc": 5, "Stage2Abort": 4})
    assert null["trap_total"] == 8
