"""The guest's serial console: a log file QEMU appends to, read incrementally by the host."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import BinaryIO


class Console:
    """Follows the console log; remembers when each watched pattern first appeared."""

    def __init__(self, path: Path, echo: bool = False, t0: float | None = None):
        self.path = path
        self.echo = echo
        self.t0 = t0 if t0 is not None else time.perf_counter()
        self._buf = bytearray()
        self._pos = 0
        self.first_seen: dict[bytes, float] = {}
        self._watch: list[bytes] = []
        self._f: BinaryIO | None = None  # kept open: polled every millisecond by the mailbox loop

    def watch(self, *patterns: bytes) -> None:
        """Record the time (seconds since t0) when each pattern first appears."""
        self._watch.extend(p for p in patterns if p not in self._watch)

    def poll(self) -> bytes:
        """Read what QEMU appended since the last call; returns the new bytes."""
        if self._f is None:
            try:
                self._f = self.path.open("rb")
            except FileNotFoundError:
                return b""
            self._f.seek(self._pos)
        new = self._f.read()
        if not new:
            return b""
        now = time.perf_counter() - self.t0
        start = max(0, len(self._buf) - 256)
        self._pos += len(new)
        self._buf += new
        for p in self._watch:
            if p not in self.first_seen and self._buf.find(p, start) >= 0:
                self.first_seen[p] = now
        if self.echo:
            sys.stdout.write(new.decode(errors="replace"))
            sys.stdout.flush()
        return new

    def close(self) -> None:
        """Stop following the log (a later poll opens it again where it left off)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    @property
    def text(self) -> str:
        return self._buf.decode(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text.rstrip().splitlines()[-lines:])
