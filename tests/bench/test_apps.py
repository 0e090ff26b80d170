"""`secvma bench apps --quick`: every bench in the Debian guest under plain, null and transparent
(the stock kernel protected, its boot modules authenticated), real tools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma import fixtures as fx
from secvma.bench.resultfile import KINDS, load
from secvma.cli import main

CLIENTS = ("ab", "memcaslap", "iperf3", "sockperf")
pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow,
              pytest.mark.skipif(any(shutil.which(t) is None for t in CLIENTS),
                                 reason=f"needs {', '.join(CLIENTS)} (scripts/setup.sh installs them)")]


def test_every_bench_quick_under_plain_null_and_transparent(
        debian: fx.FixtureSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["bench", "apps", "--quick", "--reps", "1",  # one sample each
                                  "--config", "plain", "--config", "null",
                                  "--config", "transparent", "-o", "t", "--json",
                                  "--plot", str(tmp_path / "fig.png")])
    assert r.exit_code == 0, r.output[-3000:]
    doc = json.loads(r.stdout)
    for cfg in ("plain", "null", "transparent"):
        res = doc["results"][cfg]
        assert set(res) == {k.key for k in KINDS}, doc["runs"][cfg]
        for bench, b in res.items():
            assert b["samples"] and all(v > 0 for v in b["samples"]), bench
            assert b["mean"] > 0 and b["median"] > 0 and b["params"], bench
        rf = load(tmp_path / "results" / f"t.{cfg}")  # strict: every section has its Average
        assert [s.heading for s in rf.sections] == [k.heading for k in KINDS]
    n = doc["normalized"]["null"]
    assert all(v["plain"] is not None and v["plain"] > 0 for v in n.values())
    assert all(v["null"] == pytest.approx(1.0) for v in n.values())
    assert load(tmp_path / "results" / "t.null").normalized[0][0] == "t.plain"
    assert doc["runs"]["null"]["traps"]  # the hypervisor saw the run
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "log" / "apache_log.t.plain").stat().st_size > 0
    prot = doc["runs"]["transparent"]["protection"]
    assert prot["armed"] is True and prot["refusals"] == 0 and not prot["internal_errors"]
    # the initramfs's boot modules (virtio, ext4 and their dependencies), each authenticated
    assert prot["modules_authenticated"] >= 12 and prot["modules_refused"] == 0
    assert sum(prot["table_pages"].values()) > 0 and prot["kernel_code_pages"] > 0
    t = doc["normalized"]["transparent"]
    assert all(v["null"] is not None and v["null"] > 0 for v in t.values())
    acc = doc["runs"]["transparent"]["per_bench"]["hackbench"]
    assert acc["el2"]["fast_root"] > 0 and acc["traps"]  # the overhead is accounted for
