"""`secvma inspect` on a saved snapshot: tables, JSON and the PNG memory map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import booted

from secvma.commands.inspect import inspect_cmd, snapshot_problem


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


def _mangled(snap: dict, path: str, value: object) -> dict:
    """`snap` with the value at a dotted path (list indexes as numbers) replaced."""
    out = json.loads(json.dumps(snap))
    *parents, last = path.split(".")
    node = out
    for k in parents:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("path", "value", "blamed"), [
    ("classes", [], "classes"), ("ram", [0], "ram"), ("installed", "yes", "installed"),
    ("classes.NONE", 7, "classes.NONE"), ("classes.NONE.ranges.0", [1, 2, 3], "classes.NONE.ranges[0]"),
    ("classes.NONE.pages", "many", "classes.NONE"), ("stage2.leaves", [[0, "3G", "RW"]], "stage2.leaves[0]"),
    ("stage2.histogram", None, "stage2.histogram"), ("stage2.pool_free", 1.5, "stage2.pool_free"),
    ("refusals", {}, "refusals"),
])
def test_inspect_refuses_valid_json_of_the_wrong_shape(tmp_path: Path, path: str, value: object,
                                                        blamed: str) -> None:
    """Well-formed JSON that is not a snapshot: exit 2 naming the bad key, no traceback."""
    _m, hv = booted("hardened")
    state = tmp_path / "s.json"
    state.write_text(json.dumps(_mangled(hv.snapshot(), path, value)))
    r = CliRunner().invoke(inspect_cmd, ["--state", str(state)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "not a secvma inspect snapshot" in r.output and blamed in r.output


@pytest.mark.parametrize("text", ["[]", "42", '"snapshot"', "{}", '{"policy": "hardened"}'])
def test_inspect_refuses_json_that_is_no_snapshot_at_all(tmp_path: Path, text: str) -> None:
    state = tmp_path / "s.json"
    state.write_text(text)
    r = CliRunner().invoke(inspect_cmd, ["--state", str(state)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "not a secvma inspect snapshot" in r.output


def test_a_real_snapshot_has_the_shape_inspect_needs() -> None:
    _m, hv = booted("secvma2024")
    assert snapshot_problem(json.loads(json.dumps(hv.snapshot()))) is None
