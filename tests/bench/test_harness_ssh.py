"""`secvma harness run SERVER` over ssh (issue 11 item 5): a real sshd of the test's own on
loopback, hackbench through it with small parameters, then norm of the two results files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma.bench.harness import SshServer
from secvma.bench.resultfile import load
from secvma.cli import main

from . import loopback

NEEDED = ("ssh", "ssh-keygen", "hackbench")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in NEEDED) or not Path(loopback.SSHD).exists()
    or (shutil.which("unshare") is None and loopback.os.geteuid() == 0),
    reason="needs openssh-server, openssh-client, rt-tests (scripts/setup.sh installs them)")


def test_hackbench_over_ssh_to_loopback_then_norm(tmp_path: Path) -> None:
    with loopback.sshd() as srv:
        # the harness's own transport first: a command really runs over that ssh
        done = SshServer("127.0.0.1", srv.user, options=srv.options).run("echo $((6 * 7))", 60)
        assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr
        docs = []
        for name in ("base", "again"):
            args = ["harness", "run", "127.0.0.1", "--user", srv.user, "--quick", "--no-prep",
                    "-t", "hackbench", "-o", name, "--dir", str(tmp_path), "--json",
                    "-P", "hackbench_groups=1", "-P", "hackbench_loops=10"]
            for opt in srv.options:
                args += ["-S", opt]
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 0, r.output
            docs.append(json.loads(r.stdout))
    for doc in docs:
        (sec,) = doc["sections"]
        assert sec["heading"] == "Hackbench Result (sec):" and not sec["failures"]
        assert sec["params"] == {"groups": 1, "loops": 10, "reps": 2}
        assert len(sec["values"]) == 2 and all(float(v) > 0 for v in sec["values"])
    assert "Time:" in (tmp_path / "log" / "hackbench_log.base").read_text()
    r = CliRunner().invoke(main, ["harness", "norm", str(tmp_path / "results" / "base"),
                                  str(tmp_path / "results" / "again")])
    assert r.exit_code == 0, r.output
    norm = load(tmp_path / "results" / "again").normalized
    assert norm[0][0] == "base" and set(norm[0][1]) == {"Hackbench"} and norm[0][1]["Hackbench"] > 0


def test_a_refused_ssh_login_fails_the_run(tmp_path: Path) -> None:
    """A server that refuses the key: every sample fails, the command exits non-zero."""
    with loopback.sshd() as srv:
        opts = [o for o in srv.options if not o.startswith("IdentityFile=")]
        args = ["harness", "run", "127.0.0.1", "--user", srv.user, "--quick", "--no-prep",
                "-t", "hackbench", "-o", "x", "--dir", str(tmp_path), "-S", "IdentityFile=/dev/null",
                "-P", "hackbench_groups=1", "-P", "hackbench_loops=10"]
        for opt in opts:
            args += ["-S", opt]
        r = CliRunner().invoke(main, args)
    assert r.exit_code != 0, r.output


def test_ssh_options_are_passed_as_dash_o() -> None:
    argv = SshServer("h", "u", options=("Port=2222", "IdentityFile=/k")).argv("true")
    assert argv[-3:] == ["--", "u@h", "true"]
    assert "Port=2222" in argv and argv[argv.index("Port=2222") - 1] == "-o"
    r = CliRunner().invoke(main, ["harness", "run", "h", "-S", "-oProxyCommand=x"])
    assert r.exit_code != 0 and "bad ssh option" in r.output
