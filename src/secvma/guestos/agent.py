"""The host side of the guest agent: run shell scripts in the Debian guest over its serial console.

The guest's PID 1 (`secvma-agent`, guestos/rootfs.py) reads one request per line from the
console and answers in the console output, framed and base64-encoded so kernel messages or
stray output cannot be mistaken for a result. `GuestServer` implements the harness's `Server`,
so `secvma bench apps` drives the guest exactly as `secvma harness run` drives a real server.
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from secvma.bench.harness import Done

READY = re.compile(rb"SECVMA-AGENT-READY ([^\r\n]*)\r?\n")


class AgentError(RuntimeError):
    """The guest agent did not come up or stopped answering."""


@dataclass
class GuestServer:
    """Runs scripts in the guest through its console socket (QEMU keeps the log at `log_path`)."""

    sock_path: Path
    log_path: Path
    name: str = "guest"
    banner: str = ""
    _sock: socket.socket | None = None
    _next: int = 1
    _buf: bytes = field(default=b"", repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _eof: bool = False

    def _drain(self) -> None:
        """Reader thread: everything the guest prints arrives here (QEMU also logs it). Reading
        is required, not optional: an unread socket stalls QEMU's UART and so the guest."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            with self._lock:
                self._buf += chunk
        self._eof = True

    def connect(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> str:
        """Connect to the console and wait for the agent's READY line; returns its banner."""
        end = time.monotonic() + timeout
        while self._sock is None:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(self.sock_path))
                self._sock = s
                threading.Thread(target=self._drain, name="guest-console", daemon=True).start()
            except OSError:
                s.close()
                if time.monotonic() > end or not alive():
                    raise AgentError(f"no console socket at {self.sock_path}") from None
                time.sleep(0.05)
        while True:
            with self._lock:
                m = READY.search(self._buf)
                if m:
                    self.banner = m.group(1).decode(errors="replace")
                    self._buf = self._buf[m.end():]
                    return self.banner
                tail = self._buf[-600:].decode(errors="replace")
            if time.monotonic() > end or not alive() or self._eof:
                raise AgentError(f"the guest agent did not start; console tail:\n{tail}")
            time.sleep(0.05)

    def run(self, script: str, timeout: float, stdin: bytes | None = None) -> Done:
        if self._sock is None:
            raise AgentError("the guest agent is not connected")
        rid = self._next
        self._next += 1
        b64 = base64.b64encode(script.encode()).decode()
        data = base64.b64encode(stdin).decode() if stdin else "-"
        self._sock.sendall(f"RUN {rid} {b64} {data}\n".encode())
        pat = re.compile(rb"SECVMA-BEGIN %d\r?\n([A-Za-z0-9+/=]*)\r?\n([A-Za-z0-9+/=]*)\r?\n"
                         rb"SECVMA-END %d (\d+)" % (rid, rid))
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                m = pat.search(self._buf)
                if m:
                    self._buf = self._buf[m.end():]
            if m:
                try:
                    out, err = (base64.b64decode(m.group(i)).decode(errors="replace") for i in (1, 2))
                except binascii.Error as exc:
                    return Done(125, "", f"garbled agent answer: {exc}")
                return Done(int(m.group(3)), out, err)
            if self._eof:
                return Done(125, "", "the guest console closed (the guest stopped)")
            if time.monotonic() > end:
                return Done(124, "", f"the guest did not answer within {timeout:.0f} s")
            time.sleep(0.02)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
