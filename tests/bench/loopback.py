"""Real servers on 127.0.0.1 for the harness tests: apache2, memcached, iperf3, sockperf (bounded)."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MODULES = Path("/usr/lib/apache2/modules")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def _proc(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def apache2() -> Iterator[int]:
    """apache2 in the foreground on 127.0.0.1:<port>, serving /gcc/index.html from a temp tree."""
    root = Path(tempfile.mkdtemp(prefix="secvma-www-"))
    try:
        os.chmod(root, 0o755)
        (root / "www" / "gcc").mkdir(parents=True)
        page = "".join(f"<li><a href=\"s{i}.html\">Section {i}</a></li>\n" for i in range(400))
        (root / "www" / "gcc" / "index.html").write_text(f"<html><body><ul>\n{page}</ul></body></html>\n")
        for p in (root / "www", root / "www" / "gcc"):
            os.chmod(p, 0o755)
        port = free_port()
        conf = root / "apache2.conf"
        mods = ["mpm_event", "authz_core", "mime", "dir"]
        lines = [f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in mods] + [
            f"ServerRoot {root}", "ServerName 127.0.0.1", f"Listen 127.0.0.1:{port}",
            f"PidFile {root}/apache2.pid", f"ErrorLog {root}/error.log", "User www-data", "Group www-data",
            "TypesConfig /etc/mime.types", f"DocumentRoot {root}/www", f"Mutex file:{root} default",
            "MaxRequestWorkers 64", "ServerLimit 4", "ThreadsPerChild 16", "KeepAlive Off"]
        conf.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "APACHE_RUN_DIR": str(root), "APACHE_LOCK_DIR": str(root)}
        argv = ["apache2", "-f", str(conf), "-DFOREGROUND"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            wait_port(port, proc)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def memcached() -> Iterator[int]:
    port = free_port()
    with _proc(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"], port):
        yield port


@contextmanager
def iperf3_and_sockperf() -> Iterator[tuple[int, int]]:
    ip, sp = free_port(), free_port()
    with _proc(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(ip)], ip), \
            _proc(["sockperf", "sr", "--tcp", "-i", "127.0.0.1", "-p", str(sp)], sp):
        yield ip, sp


SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Sshd:
    """An sshd of our own on 127.0.0.1: how to reach it (`ssh -o` options) and as whom."""

    port: int
    user: str
    options: tuple[str, ...]


@contextmanager
def sshd() -> Iterator[Sshd]:
    """sshd on 127.0.0.1:<port> with a generated host key and client key in a temp dir.

    Nothing system-wide is read or changed: `-f /dev/null` (no sshd_config), every setting
    given with `-o`, authorized_keys in the temp dir (StrictModes off: /tmp is world-writable).
    As root, sshd insists on its privilege-separation directory /run/sshd: it runs in a private
    mount namespace with a tmpfs over /run holding that directory (so its sessions see an empty
    /run). As another user it runs as that user, and logins are that user's.
    """
    d = Path(tempfile.mkdtemp(prefix="secvma-sshd-"))
    try:
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                           check=True, capture_output=True)
        shutil.copy(d / "client_key.pub", d / "authorized_keys")
        port = free_port()
        argv = [SSHD, "-D", "-e", "-f", "/dev/null", "-p", str(port), "-h", str(d / "host_key")]
        for opt in ("ListenAddress=127.0.0.1", f"AuthorizedKeysFile={d}/authorized_keys",
                    "StrictModes=no", "UsePAM=no", "PidFile=none", "PasswordAuthentication=no",
                    "KbdInteractiveAuthentication=no", "PermitRootLogin=prohibit-password"):
            argv += ["-o", opt]
        if os.geteuid() == 0:
            inner = " ".join(shlex.quote(a) for a in argv)
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f"mount -t tmpfs secvma-sshd /run && mkdir -m 755 /run/sshd && exec {inner}"]
        with (d / "sshd.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_port(port, proc)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}: {(d / 'sshd.log').read_text()[-500:]}") from exc
            yield Sshd(port, pwd.getpwuid(os.geteuid()).pw_name,
                       (f"Port={port}", f"IdentityFile={d}/client_key", "IdentitiesOnly=yes"))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)
