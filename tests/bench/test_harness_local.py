"""`secvma harness run --local`: the real tools against real servers on loopback, then norm."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma.bench.harness import parse_ab, parse_hackbench, parse_iperf3, parse_memcaslap, parse_sockperf_rr
from secvma.bench.resultfile import load
from secvma.cli import main

from . import loopback

NEEDED = ("hackbench", "ab", "apache2", "memcached", "memcaslap")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in NEEDED),
                                reason=f"needs {', '.join(NEEDED)} (scripts/setup.sh installs them)")


def _run(tmp: Path, name: str, test: str, *params: str) -> None:
    args = ["harness", "run", "127.0.0.1", "--local", "--quick", "-o", name, "--dir", str(tmp), "-t", test]
    for p in params:
        args += ["-P", p]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output


def test_hackbench_apache_memcached_on_loopback_then_norm(tmp_path: Path) -> None:
    with loopback.apache2() as http, loopback.memcached() as mc:
        for name in ("base", "again"):
            _run(tmp_path, name, "hackbench")
            _run(tmp_path, name, "apache", f"apache_port={http}")
            _run(tmp_path, name, "memcached", f"memcached_port={mc}")
    for name in ("base", "again"):
        text = (tmp_path / "results" / name).read_text()
        rf = load(tmp_path / "results" / name)
        assert [s.heading for s in rf.sections] == [
            "Hackbench Result (sec):", "Apache Result (Requests per second):",
            "Memcached Result (Ops per sec):"]
        for s in rf.sections:
            assert len(s.samples) == 2 and all(v > 0 for v in s.samples)
            assert s.average is not None and s.average > 0
        assert text.count("Average: ") == 3
        for stem in ("hackbench", "apache", "memcached"):
            assert (tmp_path / "log" / f"{stem}_log.{name}").stat().st_size > 0
    assert "Requests per second:" in (tmp_path / "log" / "apache_log.base").read_text()
    r = CliRunner().invoke(main, ["harness", "norm", str(tmp_path / "results" / "base"),
                                  str(tmp_path / "results" / "again")])
    assert r.exit_code == 0, r.output
    norm = load(tmp_path / "results" / "again").normalized
    assert norm[0][0] == "base" and set(norm[0][1]) == {"Hackbench", "Apache", "Memcached"}
    assert all(v > 0 for v in norm[0][1].values())


@pytest.mark.skipif(shutil.which("iperf3") is None or shutil.which("sockperf") is None
                    or shutil.which("cc") is None or shutil.which("make") is None,
                    reason="needs iperf3, sockperf, cc and make")
def test_netperf_substitutes_and_kernbench_on_loopback(tmp_path: Path) -> None:
    with loopback.iperf3_and_sockperf() as (ip, sp):
        _run(tmp_path, "n", "netperf", f"iperf3_port={ip}", f"sockperf_port={sp}",
             "netperf_seconds=1")
    _run(tmp_path, "n", "kernbench", "kernbench_files=4")
    rf = load(tmp_path / "results" / "n")
    assert [s.label for s in rf.sections] == ["TCP_STREAM", "TCP_MAERTS", "TCP_RR", "Kernbench"]
    assert all(s.average is not None and s.average > 0 for s in rf.sections)


def test_parsers_refuse_what_would_hide_a_failure() -> None:
    ok = ("Complete requests:      10\nFailed requests:        0\n"
          "Requests per second:    123.45 [#/sec] (mean)\n")
    assert parse_ab(ok, 10) == "123.45"
    with pytest.raises(ValueError, match="not 2xx"):
        parse_ab(ok + "Non-2xx responses:      10\n", 10)
    with pytest.raises(ValueError, match="failed"):
        parse_ab(ok.replace("Failed requests:        0", "Failed requests:        3"), 10)
    assert parse_hackbench("Running in process mode\nTime: 0.123\n") == "0.123"
    with pytest.raises(ValueError):
        parse_hackbench("Running in process mode\n")
    assert parse_memcaslap("Run time: 0.2s Ops: 20000 TPS: 100288 Net_rate: 109.1M/s\n") == "100288"
    sp = ("sockperf: [Valid Duration] RunTime=1.547 sec; SentMessages=25177; ReceivedMessages=25177\n"
          "sockperf: Summary: Latency is 30.692 usec\n")
    assert Decimal(parse_sockperf_rr(sp)) == Decimal("16274.73")
    with pytest.raises(ValueError):
        parse_iperf3('{"start": {}, "error": "unable to connect"}')


def test_server_side_commands_use_the_server_s_port() -> None:
    # Regression: behind a forwarded port the guest's iperf3 was restarted on the *host* port.
    from secvma.bench.harness import Done, Harness, Params

    seen: list[str] = []

    class Rec:
        name = "rec"

        def run(self, script: str, timeout: float, stdin: bytes | None = None) -> Done:
            seen.append(script)
            return Done(0, "", "")

    h = Harness(Rec(), "127.0.0.1", Params(iperf3_port=40001, netperf_reps=1, netperf_seconds=1, warmup=0),
                prep=False, restart_iperf3=True, server_ports={"iperf3_port": 5201})
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed")
    h.run_netperf()
    restarts = [s for s in seen if "iperf3 -s" in s]
    assert restarts and all("-p 5201" in s and "40001" not in s for s in restarts)
