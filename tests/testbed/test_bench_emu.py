"""`secvma bench emu`: the testbed's hackbench and kernbench per policy, normalized against none."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.testbed.build import TestbedImage

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_bench_emu_json_normalizes_against_none(testbed: TestbedImage) -> None:
    from secvma.cli import main

    out = CliRunner().invoke(main, ["bench", "emu", "--config", "none", "--config", "hardened-4k",
                                    "--reps", "1", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    for cfg in ("none", "hardened-4k"):
        for bench in ("hackbench", "kernbench"):
            r = doc["results"][cfg][bench]
            assert len(r["samples"]) == 1 and r["samples"][0] > 0 and r["unit"] == "sec"
            assert r["params"]["policy"] == cfg.split("-")[0]
    n = doc["normalized"]["hardened-4k"]["kernbench"]["none"]
    assert n == pytest.approx(doc["results"]["hardened-4k"]["kernbench"]["mean"]
                              / doc["results"]["none"]["kernbench"]["mean"])
    assert doc["traps"]["hardened-4k"]["Stage2Abort"] > 0 and doc["errors"] == {}
