"""The hypervisor ABI: the C header and the Python layout agree; boot info round-trips."""

from __future__ import annotations

import subprocess
from dataclasses import fields, replace
from pathlib import Path

import pytest

from secvma import hvabi
from secvma.machine.build import tool
from secvma.machine.errors import ToolchainError
from secvma.testbed.build import source_dir


def test_c_header_matches_python_layout(tmp_path: Path) -> None:
    """Every HVC number, struct offset/size and command constant in hvabi.h equals hvabi.py."""
    try:
        gcc = tool("gcc")
    except ToolchainError as exc:
        pytest.skip(str(exc))
    src = tmp_path / "agree.c"
    src.write_text(hvabi.c_static_asserts())
    proc = subprocess.run([gcc, "-fsyntax-only", "-I", str(source_dir() / "include"), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_static_asserts_catch_a_wrong_offset(tmp_path: Path) -> None:
    """The agreement check is not vacuous: a shifted offset fails to compile."""
    try:
        gcc = tool("gcc")
    except ToolchainError as exc:
        pytest.skip(str(exc))
    bad = hvabi.c_static_asserts().replace(
        "offsetof(struct secvma_boot_info, swapper_pg_dir)) == ",
        "offsetof(struct secvma_boot_info, swapper_pg_dir)) == 8 + ")
    src = tmp_path / "bad.c"
    src.write_text(bad)
    proc = subprocess.run([gcc, "-fsyntax-only", "-I", str(source_dir() / "include"), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "swapper_pg_dir" in proc.stderr


def _info() -> hvabi.BootInfo:
    names = [f.name for f in fields(hvabi.BootInfo)]
    vals = {n: 0x1000 * (i + 1) for i, n in enumerate(names)}
    vals.update(magic=hvabi.BOOT_INFO_MAGIC, version=hvabi.BOOT_INFO_VERSION,
                size=hvabi.BootInfo.SIZE)
    return hvabi.BootInfo(**vals)


def test_boot_info_round_trips_through_bytes() -> None:
    """to_bytes/from_bytes are inverse; SIZE is the packed size."""
    info = _info()
    raw = info.to_bytes()
    assert len(raw) == hvabi.BootInfo.SIZE
    assert hvabi.BootInfo.from_bytes(raw) == info


def test_boot_info_with_bad_magic_is_rejected() -> None:
    """A block without the magic is not taken for boot information."""
    with pytest.raises(ValueError, match="magic"):
        hvabi.BootInfo.from_bytes(replace(_info(), magic=0).to_bytes())
