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
    """--json: per module load_ms, unload_ms, load_ms_unprotected, ratio (numbers or, with the
    reason under errors, null for the hypervisor columns)."""
    from secvma.cli import main

    out = CliRunner().invoke(main, ["bench", "modules", "--reps", "1", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert set(res["modules"]) == {"xfs", "virtio_crypto"} and res["reps"] == 1
    for row in res["modules"].values():
        assert all(k in row for k in REQUIRED)
        assert row["load_ms_unprotected"] > 0 and row["reps"] == 1
        if "protected" in res["errors"]:
            assert row["load_ms"] is None and row["error"]
        else:
            assert row["load_ms"] > 0 and row["ratio"] == pytest.approx(
                row["load_ms"] / row["load_ms_unprotected"], rel=0.01)
