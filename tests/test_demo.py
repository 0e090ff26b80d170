"""The main job: `secvma demo --json` runs every step and each one is ok."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.cli import main

pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow]


def test_demo_runs_every_step_ok(debian: object) -> None:
    """Debian boot, workloads under each policy, attacks, modules and round trips all pass."""
    res = CliRunner().invoke(main, ["demo", "--json"])
    assert res.exit_code == 0, res.output[-3000:]
    report = json.loads(res.output)
    assert len(report) == 9
    bad = {k: v.get("error") or v.get("skipped") or v.get("summary") for k, v in report.items()
           if v.get("ok") is not True}
    assert not bad, bad
