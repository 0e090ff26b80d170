"""Shared fixtures for the arch tests: the real binutils assembler as an oracle."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

AS = "aarch64-linux-gnu-as"
OBJCOPY = "aarch64-linux-gnu-objcopy"


def assemble_lines(lines: Sequence[str], march: str = "armv8.5-a+memtag") -> list[int]:
    """Assemble one instruction per line with binutils; return the 32-bit words in order."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "t.s")
        obj = Path(tmp, "t.o")
        binf = Path(tmp, "t.bin")
        src.write_text("".join(f"{line}\n" for line in lines))
        subprocess.run([AS, f"-march={march}", "-o", str(obj), str(src)], check=True,
                       capture_output=True)
        subprocess.run([OBJCOPY, "-O", "binary", "-j", ".text", str(obj), str(binf)],
                       check=True, capture_output=True)
        data = binf.read_bytes()
    assert len(data) == 4 * len(lines), "each line must assemble to exactly one instruction"
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


@pytest.fixture(scope="session")
def asm() -> Callable[[Sequence[str]], list[int]]:
    """The assembler oracle (skips the test when binutils for AArch64 is not installed)."""
    if shutil.which(AS) is None or shutil.which(OBJCOPY) is None:
        pytest.skip("aarch64-linux-gnu binutils not installed")
    return assemble_lines
