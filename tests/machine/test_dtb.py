"""The board's device tree: hypervisor memory reserved, fresh seeds every boot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from secvma.machine import layout
from secvma.machine.dtb import dump_base_dts, make_dtb

pytestmark = pytest.mark.qemu


def _dts(path: Path) -> str:
    return subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(path)], capture_output=True,
                          text=True, check=True).stdout


def test_hypervisor_region_is_reserved_no_map(tmp_path: Path) -> None:
    """The DTB has a no-map reserved-memory node covering exactly the hypervisor region."""
    dts = _dts(make_dtb(tmp_path, 1, 1 << 30, "cortex-a57", tmp_path / "a.dtb"))
    node = re.search(r"hypervisor@([0-9a-f]+) \{([^}]*)\}", dts)
    assert node is not None and int(node.group(1), 16) == layout.HYP_BASE
    assert "no-map;" in node.group(2)
    assert f"reg = <0x00 {layout.HYP_BASE:#x} 0x00 {layout.HYP_SIZE:#x}>" in node.group(2)


def test_seeds_are_fresh_for_every_boot(tmp_path: Path) -> None:
    """Two DTBs for the same board carry different kaslr-seed and rng-seed values."""
    a = _dts(make_dtb(tmp_path, 2, 1 << 30, "cortex-a57", tmp_path / "a.dtb"))
    b = _dts(make_dtb(tmp_path, 2, 1 << 30, "cortex-a57", tmp_path / "b.dtb"))
    for prop in ("kaslr-seed", "rng-seed"):
        va = re.search(prop + r" = <([^>]*)>", a)
        vb = re.search(prop + r" = <([^>]*)>", b)
        assert va and vb and va.group(1) != vb.group(1)
    base = dump_base_dts(tmp_path, 2, 1 << 30, "cortex-a57")
    assert base.count("kaslr-seed") == 1  # QEMU's own fixed seed, replaced above
    assert a.count("kaslr-seed") == 1


def test_seed_can_be_pinned_for_reproducible_boots(tmp_path: Path) -> None:
    """A given 40-byte seed gives the same DTB twice."""
    seed = bytes(range(40))
    a = make_dtb(tmp_path, 1, 1 << 30, "cortex-a57", tmp_path / "a.dtb", seed).read_bytes()
    b = make_dtb(tmp_path, 1, 1 << 30, "cortex-a57", tmp_path / "b.dtb", seed).read_bytes()
    assert a == b
