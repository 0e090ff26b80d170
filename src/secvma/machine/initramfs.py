"""The initramfs for booting the Debian kernel: our static /init, packed as a newc cpio.

The archive is written in Python (no `cpio`, no `mknod`, no root): newc headers can describe
device nodes directly, so /dev/console exists before the kernel opens it.
"""

from __future__ import annotations

import hashlib
import stat
import subprocess
from pathlib import Path

from secvma.machine.build import build_dir, guest_dir, tool
from secvma.machine.errors import ToolchainError

INIT_BANNER = b"SECVMA-INIT: hello from userspace"


def _newc(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    nb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
    hdr = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = hdr + nb
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def pack_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc archive of (name, mode, data, (rdev major, minor)) entries."""
    body = b"".join(_newc(n, m, d, r, i + 1) for i, (n, m, d, r) in enumerate(entries))
    body += _newc("TRAILER!!!", 0)
    return body + b"\0" * (-len(body) % 512)


def build_initramfs() -> Path:
    """Compile guest/linux-init/init.c and pack it with /dev/console; cached by content."""
    src = guest_dir() / "linux-init" / "init.c"
    key = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = build_dir() / "initramfs"
    cpio = out / f"initramfs-{key}.cpio"
    if cpio.exists():
        return cpio
    out.mkdir(parents=True, exist_ok=True)
    init = out / f"init-{key}"
    proc = subprocess.run([tool("gcc"), "-O2", "-static", "-nostdlib", "-ffreestanding",
                           "-fno-stack-protector", "-o", str(init), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"building /init failed: {proc.stderr.strip()}")
    entries = [
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("init", stat.S_IFREG | 0o755, init.read_bytes(), (0, 0)),
    ]
    cpio.write_bytes(pack_cpio(entries))
    return cpio
