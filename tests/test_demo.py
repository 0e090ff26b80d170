"""The main job: `secvma demo --json` runs every step and each one is ok."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.cli import main


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
def test_demo_runs_every_step_ok(debian: object) -> None:
    """Debian boot, workloads under each policy, attacks, modules and round trips all pass.

    `--quick`: one attack per class on each kernel (tests/attacks and tests/linux run the whole
    catalogues); every step still runs."""
    from secvma.attacks.suite import class_sample
    from secvma.linux.attacks import SAMPLE

    res = CliRunner().invoke(main, ["demo", "--quick", "--json"])
    assert res.exit_code == 0, res.output[-3000:]
    report = json.loads(res.output)
    assert len(report) == 10
    testbed = report["attack suite"]["outcomes"]
    assert {o["attack"] for o in testbed} == set(class_sample()) and len(testbed) == 3 * len(class_sample())
    linux = report["stock Debian kernel: workloads and secvma_lkdtm attacks, none and transparent"]
    assert {o["attack"] for o in linux["attacks"]["outcomes"]} == set(SAMPLE)
    bad = {k: v.get("error") or v.get("summary") for k, v in report.items()
           if v.get("ok") is not True}
    assert not bad, bad


@pytest.mark.parametrize("as_json", [False, True])
def test_a_step_that_cannot_import_fails_the_demo(monkeypatch: pytest.MonkeyPatch,
                                                  as_json: bool) -> None:
    """An ImportError is breakage: the step is FAILED with the error and the demo exits 1
    (it used to be reported as "skipped" with exit status 0)."""
    from secvma.commands import demo

    def missing() -> dict[str, object]:
        raise ImportError("No module named 'secvma.gone'", name="secvma.gone")

    def fine() -> dict[str, object]:
        return {"ok": True, "summary": "fine"}

    monkeypatch.setattr(demo, "STEPS", [("fine step", fine), ("broken step", missing)])
    res = CliRunner().invoke(main, ["demo", *(["--json"] if as_json else [])])
    assert res.exit_code == 1, res.output
    assert "skipped" not in res.output and "secvma.gone" in res.output
    if as_json:
        report = json.loads(res.stdout)
        assert report["broken step"]["ok"] is False and report["fine step"]["ok"] is True


def test_the_quick_catalogue_has_one_scenario_per_class_and_a_gap() -> None:
    """`demo --quick`'s testbed attacks: every class of the catalogue, single-CPU, and one of
    secvma2024's reproduced gaps (so the quick report still shows a gap left open)."""
    from secvma.attacks.scenarios import ATTACKS
    from secvma.attacks.suite import class_sample

    sample = class_sample()
    by_name = {a.name: a for a in ATTACKS}
    assert len(set(sample)) == len(sample)
    assert {n.split("-")[0] for n in sample} == {a.name.split("-")[0] for a in ATTACKS if a.ncpus == 1}
    assert all(by_name[n].ncpus == 1 for n in sample)
    assert any(by_name[n].gap for n in sample)
