"""`secvma bench modules`: the run-mod measurement's JSON shape, one repetition."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.fixtures import FixtureSet
from secvma.testbed.build import TestbedImage

REQUIRED = ("load_ms", "unload_ms", "load_ms_unprotected", "ratio")


def test_bench_modules_json_has_the_run_mod_keys(testbed: TestbedImage,
                                                 debian: FixtureSet) -> None:
    """--json: per module load_ms, unload_ms, load_ms_unprotected, ratio, all measured."""
    from secvma.cli import main

    out = CliRunner().invoke(main, ["bench", "modules", "--reps", "1", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert set(res["modules"]) == {"xfs", "virtio_crypto"} and res["reps"] == 1
    assert res["errors"] == {}
    for row in res["modules"].values():
        assert all(k in row for k in REQUIRED)
        assert row["load_ms_unprotected"] > 0 and row["reps"] == 1
        assert row["load_ms"] > 0 and row["ratio"] == pytest.approx(
            row["load_ms"] / row["load_ms_unprotected"], rel=0.01)


def test_bench_modules_fails_loudly_when_the_el2_loader_fails(
        testbed: TestbedImage, debian: FixtureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hypervisor that refuses every module (no signature table): the protected columns are
    null with the reason, and the command exits 1 (it used to exit 0)."""
    from secvma.bench import modules as bench_modules
    from secvma.cli import main
    from secvma.kpcore import make_policy

    monkeypatch.setattr(bench_modules, "hardened_hypervisor",
                        lambda _mods: make_policy("hardened", module_keys=None))
    out = CliRunner().invoke(main, ["bench", "modules", "--reps", "1", "--json"])
    assert out.exit_code == 1, out.output
    res = json.loads(out.stdout)
    assert "refused" in res["errors"]["protected"]
    assert all(row["load_ms"] is None and row["error"] for row in res["modules"].values())
    assert "protected run failed" in out.output
