"""`secvma inspect` on a saved snapshot: tables, JSON and the PNG memory map."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fakes import booted

from secvma.commands.inspect import inspect_cmd


def test_snapshot_classes_cover_ram() -> None:
    """The snapshot's class ranges partition RAM exactly."""
    _m, hv = booted("hardened")
    snap = hv.snapshot()
    total = sum(c["pages"] for c in snap["classes"].values())  # type: ignore[attr-defined]
    lo, hi = snap["ram"]  # type: ignore[misc]
    assert total == (hi - lo) >> 12
    assert snap["classes"]["EL1_PGD"]["pages"] == 1  # type: ignore[index]


def test_inspect_reads_saved_state_and_draws(tmp_path: Path) -> None:
    """--state prints the tables; --png writes an image; --json round-trips."""
    m, hv = booted("hardened")
    m.load(0xFFFF_0000_0500_0000)
    state = tmp_path / "s.json"
    state.write_text(json.dumps(hv.snapshot()))
    png = tmp_path / "map.png"
    r = CliRunner().invoke(inspect_cmd, ["--state", str(state), "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert "EL1_KCODE" in r.output and png.stat().st_size > 1000
    r = CliRunner().invoke(inspect_cmd, ["--state", str(state), "--json"])
    assert json.loads(r.output)["policy"] == "hardened"
