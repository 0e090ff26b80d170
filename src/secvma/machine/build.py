"""Building guest code with Debian's cross toolchain: the EL2 trampoline and test payloads.

Outputs go to the build directory (`$SECVMA_BUILD`, default `<repo>/build`). Builds are
content-addressed by their inputs, so repeated calls are free and a changed source rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from secvma.machine import layout
from secvma.machine.errors import ToolchainError

CROSS = "aarch64-linux-gnu-"


def repo_root() -> Path:
    """The source checkout (src layout: this file is src/secvma/machine/build.py)."""
    return Path(__file__).resolve().parents[3]


def guest_dir() -> Path:
    return repo_root() / "guest"


def build_dir() -> Path:
    d = Path(os.environ.get("SECVMA_BUILD", repo_root() / "build"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def tool(name: str) -> str:
    """Path of a cross tool, or a ToolchainError that says how to install it."""
    exe = shutil.which(CROSS + name)
    if exe is None:
        raise ToolchainError(
            f"{CROSS}{name} not found",
            hint="run `bash scripts/setup.sh` (installs gcc-aarch64-linux-gnu and "
            "binutils-aarch64-linux-gnu)",
        )
    return exe


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{Path(cmd[0]).name} failed:\n{proc.stderr.strip()}")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Binary:
    """A flat binary to load at `load_addr`, with its ELF for symbol look-ups."""

    path: Path
    elf: Path
    load_addr: int


TRAMPOLINE_VARIANTS = ("TRAP_FLOOR",)
"""Measurement builds of the trampoline (preprocessor symbols): TRAP_FLOOR answers a
CONTEXTIDR_EL1 write at the vector with nothing but ELR += 4 and ERET, the least any trap to
EL2 costs QEMU (bench micro's `trap_floor_us`); never the machine's default."""


def build_trampoline(variant: str | None = None) -> Binary:
    """Assemble guest/hyp/trampoline.S against the generated layout.inc (with `-D<variant>`)."""
    if variant is not None and variant not in TRAMPOLINE_VARIANTS:
        raise ValueError(f"no trampoline variant {variant!r} (known: {', '.join(TRAMPOLINE_VARIANTS)})")
    src = guest_dir() / "hyp" / "trampoline.S"
    inc = layout.asm_include()
    key = _digest(src.read_bytes(), inc.encode(), (variant or "").encode())
    out = build_dir() / "hyp"
    binp = out / f"trampoline-{key}.bin"
    elf = out / f"trampoline-{key}.elf"
    if binp.exists() and elf.exists():
        return Binary(binp, elf, layout.TRAMPOLINE_BASE)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layout.inc").write_text(inc)
    obj = out / f"trampoline-{key}.o"
    _run([tool("gcc"), "-c", "-I", str(out), *([f"-D{variant}"] if variant else []), "-o", str(obj),
          str(src)])
    _run([tool("ld"), "-nostdlib", f"-Ttext={layout.TRAMPOLINE_BASE:#x}", "-o", str(elf), str(obj)])
    _run([tool("objcopy"), "-O", "binary", str(elf), str(binp)])
    return Binary(binp, elf, layout.TRAMPOLINE_BASE)


def assemble_payload(source: str, load_addr: int = layout.KERNEL_BASE, name: str = "") -> Binary:
    """Assemble a bare-metal AArch64 payload (GNU as syntax, entry at `_start`) into a flat binary.

    The payload runs at EL1 with the MMU off, entered at `load_addr` with x0 = DTB. Used by tests
    and benchmarks that need a few instructions of real guest code.
    """
    key = _digest(source.encode(), load_addr.to_bytes(8, "little"))
    out = build_dir() / "payloads"
    stem = f"{name or 'payload'}-{key}"
    binp, elf = out / f"{stem}.bin", out / f"{stem}.elf"
    if binp.exists() and elf.exists():
        return Binary(binp, elf, load_addr)
    out.mkdir(parents=True, exist_ok=True)
    srcp, obj = out / f"{stem}.S", out / f"{stem}.o"
    srcp.write_text(source)
    _run([tool("gcc"), "-c", "-o", str(obj), str(srcp)])
    _run([tool("ld"), "-nostdlib", f"-Ttext={load_addr:#x}", "-e", "_start", "-o", str(elf), str(obj)])
    _run([tool("objcopy"), "-O", "binary", str(elf), str(binp)])
    return Binary(binp, elf, load_addr)
