"""The device tree handed to the guest: QEMU's own, with the hypervisor's memory reserved.

QEMU generates the virt board's DTB; we dump it once per (CPU count, RAM size), add a
`reserved-memory` node (`no-map`) covering the hypervisor region so the kernel never touches
it, and write fresh `kaslr-seed` / `rng-seed` values for every boot (a dumped DTB carries fixed
seeds, which would give every boot the same KASLR offset). QEMU still fills /chosen's bootargs
and initrd properties when it loads a user DTB.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from pathlib import Path

from secvma.machine import layout
from secvma.machine.errors import ToolchainError


def _need(exe: str, package: str) -> str:
    path = shutil.which(exe)
    if path is None:
        raise ToolchainError(f"{exe} not found", hint=f"run `bash scripts/setup.sh` (installs {package})")
    return path


def dump_base_dts(out_dir: Path, ncpus: int, ram_bytes: int, cpu: str) -> str:
    """QEMU's DTB for this configuration, as DTS text (cached in `out_dir`)."""
    mib = ram_bytes >> 20
    dts_path = out_dir / f"virt-{layout.GIC_BOARD.replace(',', '-')}-{cpu}-{ncpus}cpu-{mib}M.dts"
    if dts_path.exists():
        return dts_path.read_text()
    out_dir.mkdir(parents=True, exist_ok=True)
    dtb_path = dts_path.with_suffix(".dtb")
    qemu = _need("qemu-system-aarch64", "qemu-system-arm")
    subprocess.run(
        [qemu, "-machine",
         f"virt,virtualization=on,highmem=off,{layout.GIC_BOARD},dumpdtb={dtb_path}",
         "-cpu", cpu, "-smp", str(ncpus), "-m", f"{mib}M", "-nographic", "-nodefaults"],
        capture_output=True, timeout=60, check=False,
    )
    if not dtb_path.exists():
        raise ToolchainError("qemu-system-aarch64 did not dump a device tree",
                             hint="check that qemu-system-arm 7.2 or newer is installed")
    dtc = _need("dtc", "device-tree-compiler")
    proc = subprocess.run([dtc, "-q", "-I", "dtb", "-O", "dts", str(dtb_path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"dtc could not read QEMU's DTB: {proc.stderr.strip()}")
    dts_path.write_text(proc.stdout)
    return proc.stdout


def _cells(words: list[int]) -> str:
    return "<" + " ".join(f"{w:#010x}" for w in words) + ">"


def edit_dts(base: str, hyp_base: int, hyp_size: int, seed: bytes | None = None) -> str:
    """Add the reserved-memory node and replace the seeds in /chosen.

    `seed` (40 bytes: 8 for kaslr-seed, 32 for rng-seed) makes the result reproducible in tests;
    by default it is fresh randomness.
    """
    seed = seed if seed is not None else secrets.token_bytes(40)
    if len(seed) != 40:
        raise ValueError("seed must be 40 bytes")
    words = [int.from_bytes(seed[i:i + 4], "big") for i in range(0, 40, 4)]
    node = (
        "\treserved-memory {\n"
        "\t\t#address-cells = <0x02>;\n\t\t#size-cells = <0x02>;\n\t\tranges;\n"
        f"\t\thypervisor@{hyp_base:x} {{\n"
        f"\t\t\treg = <0x00 {hyp_base:#x} 0x00 {hyp_size:#x}>;\n"
        "\t\t\tno-map;\n\t\t};\n\t};\n\n"
    )
    s = re.sub(r"\tkaslr-seed = <[^>]*>;\n", "", base)
    s = re.sub(r"\trng-seed = <[^>]*>;\n", "", s)
    chosen = s.find("\tchosen {\n")
    if chosen < 0:
        raise ToolchainError("QEMU's DTB has no /chosen node")
    head = chosen + len("\tchosen {\n")
    seeds = (f"\t\tkaslr-seed = {_cells(words[:2])};\n"
             f"\t\trng-seed = {_cells(words[2:])};\n")
    s = s[:head] + seeds + s[head:]
    root = s.find("/ {\n")
    if root < 0:
        raise ToolchainError("QEMU's DTB has no root node")
    body = s.find("\n", s.find("compatible", root)) + 1
    return s[:body] + "\n" + node + s[body:]


def make_dtb(out_dir: Path, ncpus: int, ram_bytes: int, cpu: str, dest: Path,
             seed: bytes | None = None) -> Path:
    """Write this boot's DTB to `dest` and return it."""
    dts = edit_dts(dump_base_dts(out_dir, ncpus, ram_bytes, cpu), layout.HYP_BASE,
                   layout.HYP_SIZE, seed)
    dtc = _need("dtc", "device-tree-compiler")
    proc = subprocess.run([dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(dest), "-"],
                          input=dts, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"dtc failed on the edited device tree: {proc.stderr.strip()}")
    return dest
