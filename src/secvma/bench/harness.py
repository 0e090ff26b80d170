"""run-all.sh in Python: a client drives a server's benchmarks with the real tools (docs/eval-spec.md §1).

The *server* runs what the artifact runs remotely (hackbench, the kernbench build, the daemons);
the *client* (this host) runs the load generators. A `Server` is anything that can run a shell
script on the server: `LocalServer` (`--local`), `SshServer` (the artifact's passwordless root
ssh) or the emulated guest of `secvma bench apps`. Tool output is parsed directly from each
process's stdout (the artifact's `tee >(grep ...)` captures could lose late values, §1.5).

Substitutions, printed with every result (`Harness.notes`):
* memtier_benchmark is not in Debian: memcached load is libmemcached-tools' `memcaslap`
  (binary protocol, 1:10 set:get, 32-byte values, as memtier's defaults), Ops/sec = its TPS.
* netperf is in Debian's non-free component: when the client has no `netperf`, TCP_STREAM and
  TCP_MAERTS come from `iperf3` (`-R` for MAERTS, received Mbit/s) and TCP_RR from `sockperf
  ping-pong` over TCP (14-byte messages, one outstanding: Req/Res per sec = replies / valid run time).
* kernbench (kvmperf's script is not in the artifact): elapsed wall time of `make -j` on the
  server, of a tree given by `kernbench_tree` or of a generated C tree sent with the job.
* hackbench: rt-tests' `hackbench -g GROUPS -l LOOPS` (process mode), `Time:` per run.
"""

from __future__ import annotations

import functools
import io
import json
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from secvma.bench.resultfile import BY_KEY, Kind, section_text

BENCHES = ("kernbench", "hackbench", "netperf", "apache", "memcached")  # run-all.sh's order
NETPERF_TESTS = ("TCP_STREAM", "TCP_MAERTS", "TCP_RR")


class HarnessError(RuntimeError):
    """The harness cannot run at all (bad arguments, output directory unwritable)."""


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


class Server(Protocol):
    """Runs a shell script on the machine under test."""

    name: str

    def run(self, script: str, timeout: float, stdin: bytes | None = None) -> Done: ...


def _run(argv: list[str], timeout: float, stdin: bytes | None = None) -> Done:
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return Done(124, out, f"timed out after {timeout:.0f} s")
    except OSError as exc:
        return Done(127, "", f"{argv[0]}: {exc.strerror}")
    return Done(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


@dataclass
class LocalServer:
    """The server is this machine (`--local`)."""

    name: str = "local"

    def run(self, script: str, timeout: float, stdin: bytes | None = None) -> Done:
        return _run(["sh", "-c", script], timeout, stdin)


@dataclass
class SshServer:
    """The artifact's topology: root ssh to the server, host-key checks off, no password prompt."""

    host: str
    user: str = "root"
    name: str = "ssh"
    options: tuple[str, ...] = ()  # more `ssh -o` options (Port=2222, IdentityFile=...)

    def argv(self, script: str) -> list[str]:
        argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
        for opt in self.options:
            argv += ["-o", opt]
        return [*argv, "--", f"{self.user}@{self.host}", script]

    def run(self, script: str, timeout: float, stdin: bytes | None = None) -> Done:
        return _run(self.argv(script), timeout, stdin)


@dataclass(frozen=True)
class Params:
    """Every knob, printed with every result. Defaults are the artifact's (docs/eval-spec.md §1.3)."""

    hackbench_groups: int = 100
    hackbench_loops: int = 500
    hackbench_reps: int = 4
    kernbench_reps: int = 1
    kernbench_tree: str = ""  # a server directory with a Makefile; "" = the generated C tree
    kernbench_files: int = 48  # size of the generated tree
    kernbench_jobs: int = 0  # make -j; 0 = the server's CPU count
    netperf_reps: int = 5
    netperf_seconds: int = 10
    apache_reps: int = 4
    apache_requests: int = 100_000
    apache_concurrency: int = 100
    apache_path: str = "/gcc/index.html"
    memcached_reps: int = 4
    memcached_ops: int = 2_000_000  # memtier -t 4 (VM): 4 threads x 50 clients x 10 000 requests
    memcached_threads: int = 4
    memcached_concurrency: int = 200
    apache_port: int = 80
    memcached_port: int = 11211
    netperf_port: int = 12865
    iperf3_port: int = 5201
    sockperf_port: int = 11111
    timeout_s: float = 1800.0  # per tool run
    warmup: int = 0  # untimed runs before each bench's repetitions (the artifact has none)

    def with_reps(self, n: int) -> Params:
        """run-all.sh's -n: netperf, apache and memcached only; 0 keeps each default."""
        if n == 0:
            return self
        return replace(self, netperf_reps=n, apache_reps=n, memcached_reps=n)

    def override(self, pairs: Iterable[str]) -> Params:
        """KEY=VALUE overrides (`-P apache_requests=500`), typed after the field's default."""
        out = self
        fields = asdict(self)
        for pair in pairs:
            key, sep, val = pair.partition("=")
            if not sep or key not in fields:
                raise HarnessError(f"bad parameter {pair!r}: expected KEY=VALUE with KEY one of "
                                   f"{', '.join(fields)}")
            typ = type(fields[key])
            try:
                out = replace(out, **{key: typ(val)})
            except ValueError as exc:
                raise HarnessError(f"bad value for {key}: {val!r} is not a {typ.__name__}") from exc
        return out


QUICK = Params(hackbench_groups=4, hackbench_loops=50, hackbench_reps=2, kernbench_files=8,
               netperf_reps=2, netperf_seconds=2, apache_reps=2, apache_requests=500,
               apache_concurrency=8, memcached_reps=2, memcached_ops=5000, memcached_threads=1,
               memcached_concurrency=8)


@dataclass
class Measured:
    """One results-file section's worth: raw values as written, failures, the tool's raw log."""

    kind: Kind
    values: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""
    params: dict[str, object] = field(default_factory=dict)
    tool: str = ""


Progress = Callable[[str, int, int], None]  # (what, done, total)


def _quiet(_what: str, _done: int, _total: int) -> None:
    return None


# --------------------------------------------------------------------------- parsers


_HACK_RE = re.compile(r"^Time:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.M)
_AB_RPS_RE = re.compile(r"^Requests per second:\s+([0-9]+(?:\.[0-9]+)?)", re.M)
_AB_FAILED_RE = re.compile(r"^Failed requests:\s+([0-9]+)", re.M)
_AB_NON2XX_RE = re.compile(r"^Non-2xx responses:\s+([0-9]+)", re.M)
_AB_COMPLETE_RE = re.compile(r"^Complete requests:\s+([0-9]+)", re.M)
_TPS_RE = re.compile(r"\bTPS:\s*([0-9]+(?:\.[0-9]+)?)")
_SOCKPERF_RE = re.compile(r"\[Valid Duration\] RunTime=([0-9.]+) sec;.*?ReceivedMessages=([0-9]+)")
_ELAPSED_RE = re.compile(r"^secvma-kernbench start ([0-9.]+) end ([0-9.]+)\s*$", re.M)


def parse_hackbench(out: str) -> str:
    m = _HACK_RE.findall(out)
    if len(m) != 1:
        raise ValueError(f"expected one 'Time:' line from hackbench, found {len(m)}")
    return str(m[0])


def parse_ab(out: str, requests: int) -> str:
    """Requests per second (field 4), refusing a run whose requests failed or were not 2xx."""
    rps, failed, complete = _AB_RPS_RE.search(out), _AB_FAILED_RE.search(out), _AB_COMPLETE_RE.search(out)
    if rps is None or failed is None or complete is None:
        raise ValueError("ab printed no 'Requests per second' / 'Failed requests' / 'Complete requests'")
    non2xx = _AB_NON2XX_RE.search(out)
    if int(failed.group(1)) or non2xx:
        bad = int(failed.group(1)) + (int(non2xx.group(1)) if non2xx else 0)
        raise ValueError(f"ab: {bad} of {complete.group(1)} requests failed or were not 2xx")
    if int(complete.group(1)) != requests:
        raise ValueError(f"ab completed {complete.group(1)} of {requests} requests")
    return rps.group(1)


def parse_memcaslap(out: str) -> str:
    m = _TPS_RE.findall(out)
    if not m:
        raise ValueError("memcaslap printed no 'TPS:' figure")
    return str(m[-1])


def parse_netperf(out: str, test: str) -> str:
    """The artifact's fields: last line field 5 (STREAM/MAERTS), second-to-last field 6 (RR)."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        fields = lines[-2].split() if test == "TCP_RR" else lines[-1].split()
        val = fields[5] if test == "TCP_RR" else fields[4]
        float(val)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"unexpected netperf {test} output") from exc
    return val


def parse_iperf3(out: str) -> str:
    """Mbit/s received over the test (10^6 bit/s, netperf's unit)."""
    try:
        doc = json.loads(out)
    except ValueError as exc:
        raise ValueError("iperf3 printed no JSON") from exc
    if isinstance(doc, dict) and "error" in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    try:
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError) as exc:
        raise ValueError("iperf3 printed no end.sum_received.bits_per_second") from exc
    return f"{bps / 1e6:.2f}"


def parse_sockperf_rr(out: str) -> str:
    """Transactions per second of a sockperf ping-pong: replies over the valid (post-warm-up) run."""
    m = _SOCKPERF_RE.search(out)
    if m is None:
        raise ValueError("sockperf printed no '[Valid Duration] RunTime=...; ReceivedMessages=' line")
    secs, replies = float(m.group(1)), int(m.group(2))
    if secs <= 0 or replies <= 0:
        raise ValueError(f"sockperf: {replies} replies in {secs} s")
    return f"{replies / secs:.2f}"


def parse_elapsed(out: str) -> str:
    m = _ELAPSED_RE.search(out)
    if m is None:
        raise ValueError("the kernbench build printed no start/end times")
    return f"{Decimal(m.group(2)) - Decimal(m.group(1)):.3f}"


# --------------------------------------------------------------------------- kernbench tree


def kernbench_tree(files: int) -> bytes:
    """A tar of a C tree with a Makefile: `files` translation units that keep gcc -O2 busy.

    Stands in for kvmperf's kernel build (a parallel `make`, elapsed time) at a size an emulated
    machine finishes; each unit is distinct so nothing is shared between compilations.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))

        objs = " ".join(f"u{i}.o" for i in range(files))
        add("Makefile", f"CFLAGS ?= -O2\nOBJS = {objs} main.o\nkb: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n"
                        "clean:\n\trm -f kb *.o\n.PHONY: clean\n")
        calls = []
        for i in range(files):
            body = [f"/* unit {i} */", "#include <stdint.h>", "#include <string.h>"]
            for j in range(12):
                body.append(
                    f"static uint64_t f{j}(const uint8_t *p, size_t n, uint64_t s) {{\n"
                    f"  for (size_t k = 0; k < n; k++) {{\n"
                    f"    s ^= (uint64_t)p[k] * {0x9E3779B97F4A7C15 ^ (i * 131 + j)}ULL;\n"
                    f"    s = (s << {(i + j) % 31 + 1}) | (s >> {63 - (i + j) % 31});\n"
                    f"    switch (s & 7) {{ case 0: s += {i}; break; case 1: s -= {j}; break;\n"
                    f"      case 2: s *= 3; break; case 3: s ^= s >> 7; break; default: s += k; }}\n"
                    f"  }}\n  return s;\n}}")
            chain = " ".join(f"s = f{j}(p, n, s);" for j in range(12))
            body.append(f"uint64_t unit{i}(const uint8_t *p, size_t n) {{ uint64_t s = {i}; {chain} "
                        f"return s; }}")
            add(f"u{i}.c", "\n".join(body) + "\n")
            calls.append(f"s ^= unit{i}(buf, sizeof buf);")
        decls = "\n".join(f"uint64_t unit{i}(const uint8_t *, size_t);" for i in range(files))
        add("main.c", "#include <stdint.h>\n#include <stdio.h>\n#include <stddef.h>\n" + decls +
            "\nint main(void) { static uint8_t buf[256]; uint64_t s = 0; " + " ".join(calls) +
            ' printf("%llu\\n", (unsigned long long)s); return 0; }\n')
    return buf.getvalue()


# --------------------------------------------------------------------------- the harness


@dataclass
class Harness:
    """One run of run-all.sh against `server`, clients connecting to `address`."""

    server: Server
    address: str
    params: Params = field(default_factory=Params)
    prep: bool = True  # start the daemons as the artifact's prep-*.sh do
    progress: Progress = _quiet
    log: Callable[[str, str], None] = lambda _stem, _text: None  # (log stem, raw tool output)
    notes: list[str] = field(default_factory=list)
    server_ports: dict[str, int] = field(default_factory=dict)  # where the server listens, when the
    # client reaches it through a forwarded port (the guest): {"iperf3_port": 5201, ...}
    restart_iperf3: bool = False  # a fresh iperf3 server per run (only for a server we own: the guest)

    def _sport(self, name: str) -> int:
        """A port as the server sees it (the params hold the client's view)."""
        return self.server_ports.get(name, int(getattr(self.params, name)))

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _server_has(self, *tools: str) -> str | None:
        """None when every tool is on the server's PATH, else the first missing one."""
        script = "; ".join(f"command -v {shlex.quote(t)} >/dev/null || {{ echo {shlex.quote(t)}; exit 1; }}"
                           for t in tools)
        done = self.server.run(script, 120)
        if done.returncode == 0:
            return None
        if done.returncode == 1 and done.stdout.strip() in tools:
            return done.stdout.strip()
        raise HarnessError(f"cannot ask the server for {', '.join(tools)}: exit {done.returncode} "
                           f"{done.stderr.strip()[-200:]}")

    def run(self, benches: Iterable[str]) -> list[Measured]:
        out: list[Measured] = []
        for b in benches:
            if b not in BENCHES:
                raise HarnessError(f"unknown benchmark {b!r}: one of all, {', '.join(BENCHES)}")
            got = getattr(self, f"run_{b}")()
            if self.params.warmup and b != "kernbench":
                for m in got:
                    m.params["warmup"] = self.params.warmup
            out.extend(got)
        return out

    # -- server-side benchmarks (the artifact's kern.sh/hack.sh + grab-*.sh)

    def run_hackbench(self) -> list[Measured]:
        p = self.params
        m = Measured(BY_KEY["hackbench"], tool="hackbench (rt-tests), process mode",
                     params={"groups": p.hackbench_groups, "loops": p.hackbench_loops,
                             "reps": p.hackbench_reps})
        missing = self._server_has("hackbench")
        if missing:
            m.skipped = f"{missing} is not installed on the server (Debian: rt-tests)"
            return [m]
        cmd = f"hackbench -g {p.hackbench_groups} -l {p.hackbench_loops}"
        for i in range(-p.warmup, p.hackbench_reps):
            self.progress("hackbench", max(i, 0), p.hackbench_reps)
            done = self.server.run(cmd, p.timeout_s)
            self.log("hackbench", done.stdout + done.stderr)
            self._take(m, done, parse_hackbench, cmd, warm=i < 0)
        self.progress("hackbench", p.hackbench_reps, p.hackbench_reps)
        return [m]

    def run_kernbench(self) -> list[Measured]:
        p = self.params
        tree = p.kernbench_tree or "/tmp/secvma-kernbench"
        m = Measured(BY_KEY["kernbench"], tool="make -j (elapsed)",
                     params={"tree": p.kernbench_tree or f"generated C tree, {p.kernbench_files} units",
                             "jobs": p.kernbench_jobs or "nproc", "reps": p.kernbench_reps})
        missing = self._server_has("make", "cc")
        if missing:
            m.skipped = f"{missing} is not installed on the server (Debian: make, gcc)"
            return [m]
        if not p.kernbench_tree:
            done = self.server.run(f"rm -rf {tree} && mkdir -p {tree} && tar -x -C {tree}", 600,
                                   stdin=kernbench_tree(p.kernbench_files))
            if done.returncode != 0:
                m.failures.append(f"cannot unpack the kernbench tree: {done.stderr.strip()[-200:]}")
                return [m]
        jobs = str(p.kernbench_jobs) if p.kernbench_jobs else "$(nproc)"
        cmd = (f"cd {shlex.quote(tree)} && make -s clean >/dev/null && sync && "
               f"s=$(date +%s.%N) && make -s -j{jobs} >/dev/null && e=$(date +%s.%N) && "
               f'echo "secvma-kernbench start $s end $e"')
        for i in range(p.kernbench_reps):  # no warm-up: the first build is a build like any
            self.progress("kernbench", max(i, 0), p.kernbench_reps)
            done = self.server.run(cmd, p.timeout_s)
            self.log("kernbench", done.stdout + done.stderr)
            self._take(m, done, parse_elapsed, "make")
        self.progress("kernbench", p.kernbench_reps, p.kernbench_reps)
        return [m]

    # -- client-side load generators

    def run_netperf(self) -> list[Measured]:
        p = self.params
        out: list[Measured] = []
        use_netperf = shutil.which("netperf") is not None
        if self.prep:
            script = ("(service netperf start || netserver -p {np}) >/dev/null 2>&1" if use_netperf else
                      "(iperf3 -s -D -p {ip} && "
                      "(setsid sockperf sr --tcp -p {sp} </dev/null >/dev/null 2>&1 &)) >/dev/null 2>&1")
            self.server.run(script.format(np=self._sport("netperf_port"), ip=self._sport("iperf3_port"),
                                          sp=self._sport("sockperf_port")), 60)
            time.sleep(1)
        if not use_netperf:
            self._note("netperf is not installed (Debian non-free): TCP_STREAM/TCP_MAERTS by iperf3, "
                       "TCP_RR by sockperf ping-pong over TCP (Req/Res per sec = replies / run time)")
        for test in NETPERF_TESTS:
            m = Measured(BY_KEY[f"netperf-{test}"],
                         params={"seconds": p.netperf_seconds, "reps": p.netperf_reps})
            out.append(m)
            parse: Callable[[str], str]
            if use_netperf:
                argv = ["netperf", "-H", self.address, "-p", str(p.netperf_port), "-t", test,
                        "-l", str(p.netperf_seconds)]
                m.tool = "netperf"

                parse = functools.partial(parse_netperf, test=test)
            elif test == "TCP_RR":
                argv = ["sockperf", "pp", "--tcp", "-i", self.address, "-p", str(p.sockperf_port),
                        "-t", str(p.netperf_seconds), "--mps=max", "-m", "14"]
                m.tool = "sockperf ping-pong (TCP)"
                parse = parse_sockperf_rr
            else:
                argv = ["iperf3", "-c", self.address, "-p", str(p.iperf3_port), "-t",
                        str(p.netperf_seconds), "-J", *(["-R"] if test == "TCP_MAERTS" else [])]
                m.tool = "iperf3" + (" -R" if test == "TCP_MAERTS" else "")
                parse = parse_iperf3
            if shutil.which(argv[0]) is None:
                m.skipped = f"{argv[0]} is not installed on the client"
                continue
            for i in range(-p.warmup, p.netperf_reps):
                self.progress(f"netperf {test}", max(i, 0), p.netperf_reps)
                if argv[0] == "iperf3" and self.restart_iperf3:
                    # Not -D: a daemonized iperf3 in the guest refused every later client.
                    port = self._sport("iperf3_port")
                    self.server.run(f"pkill -x iperf3; sleep 0.5; (setsid iperf3 -s -p {port} "
                                    "</dev/null >/dev/null 2>&1 &); for i in $(seq 100); do "
                                    f"ss -ltn | grep -q ':{port} ' && break; sleep 0.2; done; "
                                    "sleep 0.5", 90)
                done = _run(argv, p.netperf_seconds * 3 + 60)
                self.log("netperf", done.stdout + done.stderr)
                self._take(m, done, parse, argv[0], warm=i < 0)
            self.progress(f"netperf {test}", p.netperf_reps, p.netperf_reps)
            time.sleep(1)
        return out

    def run_apache(self) -> list[Measured]:
        p = self.params
        m = Measured(BY_KEY["apache"], tool="ab (apache2-utils)",
                     params={"requests": p.apache_requests, "concurrency": p.apache_concurrency,
                             "path": p.apache_path, "reps": p.apache_reps})
        if shutil.which("ab") is None:
            m.skipped = "ab is not installed on the client (Debian: apache2-utils)"
            return [m]
        if self.prep:
            self.server.run("service apache2 start >/dev/null 2>&1", 120)
            time.sleep(1)
        url = f"http://{self.address}:{p.apache_port}{p.apache_path}"
        argv = ["ab", "-n", str(p.apache_requests), "-c", str(p.apache_concurrency), url]
        for i in range(-p.warmup, p.apache_reps):
            self.progress("apache", max(i, 0), p.apache_reps)
            done = _run(argv, p.timeout_s)
            self.log("apache", done.stdout + done.stderr)
            self._take(m, done, lambda o: parse_ab(o, p.apache_requests), "ab", warm=i < 0)
        self.progress("apache", p.apache_reps, p.apache_reps)
        return [m]

    def run_memcached(self) -> list[Measured]:
        p = self.params
        tool = next((t for t in ("memcaslap", "memaslap") if shutil.which(t)), None)
        m = Measured(BY_KEY["memcached"],
                     tool=f"{tool or 'memcaslap'} (libmemcached-tools) for memtier_benchmark",
                     params={"ops": p.memcached_ops, "threads": p.memcached_threads,
                             "concurrency": p.memcached_concurrency, "set:get": "1:10", "value": 32,
                             "protocol": "binary", "reps": p.memcached_reps})
        if tool is None:
            m.skipped = "memcaslap is not installed on the client (Debian: libmemcached-tools)"
            return [m]
        self._note("memtier_benchmark is not in Debian: memcached load by memcaslap "
                   "(binary protocol, set:get 1:10, 32-byte values; Ops/sec = its TPS)")
        if self.prep:
            self.server.run("sed -i 's/^-l 127.0.0.1/-l 0.0.0.0/' /etc/memcached.conf && "
                            "service memcached restart >/dev/null 2>&1", 120)
            time.sleep(1)
        cfg = Path(f"/tmp/secvma-memcaslap-{p.memcached_port}.cfg")
        cfg.write_text("key\n16 16 1\nvalue\n32 32 1\ncmd\n0 0.0909\n1 0.9091\n")
        # memcaslap needs threads <= concurrency; one server, so the thread count is as given.
        argv = [tool, "-s", f"{self.address}:{p.memcached_port}", "-T", str(p.memcached_threads),
                "-c", str(p.memcached_concurrency), "-x", str(p.memcached_ops), "-B", "-F", str(cfg)]
        for i in range(-p.warmup, p.memcached_reps):
            self.progress("memcached", max(i, 0), p.memcached_reps)
            done = _run(argv, p.timeout_s)
            self.log("memcached", done.stdout + done.stderr)
            self._take(m, done, parse_memcaslap, tool, warm=i < 0)
        self.progress("memcached", p.memcached_reps, p.memcached_reps)
        return [m]

    @staticmethod
    def _take(m: Measured, done: Done, parse: Callable[[str], str], what: str, warm: bool = False) -> None:
        """Record a value only from a run that exited 0 and printed a parsable figure.

        A warm-up run (`warm`) must succeed like any other, but its value is not recorded.
        """
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
            m.failures.append(f"{what} exited {done.returncode}: {tail[0][:200]}")
            return
        try:
            val = parse(done.stdout)
        except ValueError as exc:
            m.failures.append(str(exc))
            return
        if Decimal(val) <= 0:
            m.failures.append(f"{what} reported a non-positive figure {val}")
            return
        if not warm:
            m.values.append(val)


# --------------------------------------------------------------------------- run-all.sh's files


@dataclass(frozen=True)
class OutputFiles:
    results: Path
    log_dir: Path
    suffix: str

    def log(self, stem: str) -> Path:
        return self.log_dir / f"{stem}_log.{self.suffix}"


def output_files(base: Path, name: str | None) -> OutputFiles:
    """results/NAME and log/<bench>_log.NAME, or run-all.sh's next benchmark_results.<k>."""
    res, log = base / "results", base / "log"
    try:
        res.mkdir(parents=True, exist_ok=True)
        log.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create {res} / {log}: {exc.strerror}") from exc
    if name:
        if "/" in name or name in (".", ".."):
            raise HarnessError(f"-o takes a file name, not a path: {name!r}")
        return OutputFiles(res / name, log, name)
    nums = [int(m.group(1)) for p in res.iterdir()
            if (m := re.fullmatch(r"benchmark_results\.([0-9]+)", p.name))]
    k = max(nums) + 1 if nums else 0
    return OutputFiles(res / f"benchmark_results.{k}", log, str(k))


def append_results(files: OutputFiles, measured: list[Measured]) -> None:
    """Append each measured section in run-all.sh's format (skipped benches write nothing)."""
    with files.results.open("a") as fh:
        for m in measured:
            if not m.skipped:
                fh.write(section_text(m.kind, m.values))


def params_line(m: Measured) -> str:
    return ", ".join(f"{k}={v}" for k, v in m.params.items())
