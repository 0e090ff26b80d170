"""MMIO for the hypervisor: a client of QEMU's qtest socket (`-qtest unix:...`).

The EL2 trampoline never touches device registers; Python does, through this socket, which
QEMU serves from its main loop with the device's lock held, exactly as a CPU access would be.
Only the SMMU is reached this way (the board is started with `-accel tcg`, so the guest still
runs under TCG; qtest only adds the socket). Each access is one request/response line.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from secvma.machine.errors import MachineError

_OPS = {4: ("readl", "writel"), 8: ("readq", "writeq")}


class QtestError(MachineError):
    """The qtest socket failed or answered an error (the machine is gone or misconfigured)."""


class QtestClient:
    """Synchronous 32/64-bit physical reads and writes through one qtest connection."""

    def __init__(self, path: Path, connect_timeout_s: float = 10.0) -> None:
        self.path = path
        self.connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""
        self.accesses = 0

    def _conn(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(self.path))
                self._sock = s
                return s
            except OSError as exc:
                s.close()
                if time.monotonic() > deadline:
                    raise QtestError(f"cannot reach QEMU's qtest socket {self.path}: {exc}") from exc
                time.sleep(0.01)

    def _call(self, line: str) -> str:
        s = self._conn()
        try:
            s.sendall(line.encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise QtestError("QEMU closed the qtest socket")
                self._buf += chunk
        except OSError as exc:
            raise QtestError(f"qtest socket failed: {exc}") from exc
        reply, _, self._buf = self._buf.partition(b"\n")
        text = reply.decode(errors="replace")
        if not text.startswith("OK"):
            raise QtestError(f"qtest answered {text!r} to {line!r}")
        self.accesses += 1
        return text

    def read(self, pa: int, size: int) -> int:
        if size not in _OPS:
            raise ValueError(f"MMIO access size must be 4 or 8, got {size}")
        text = self._call(f"{_OPS[size][0]} {pa:#x}")
        return int(text.split()[1], 16)

    def write(self, pa: int, size: int, value: int) -> None:
        if size not in _OPS:
            raise ValueError(f"MMIO access size must be 4 or 8, got {size}")
        self._call(f"{_OPS[size][1]} {pa:#x} {value & ((1 << (8 * size)) - 1):#x}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
