"""An independent oracle: link the same object with GNU `aarch64-linux-gnu-ld` at fixed addresses.

Why: a relocator checked only against itself can be consistently wrong. GNU ld implements
the AArch64 psABI independently; if every allocated section is pinned to the same address
and every undefined symbol is defined at the same value, ld's output sections must equal
ours byte for byte (docs/debian-modules.md §7), under two conditions:
1. string merging is off (SHF_MERGE|SHF_STRINGS are cleared in ld's copy; the kernel never
   merges), and
2. every branch is in range, so neither ld veneers nor module PLTs appear.
The erratum-843419 rewrite stays off on both sides (ld only does it with
`--fix-cortex-a53-843419`).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from secvma.module.elf import SHDR, SHF_ALLOC, SHF_MERGE, SHF_STRINGS, SHN_UNDEF, SHT_NOBITS, ElfModule
from secvma.module.errors import LayoutError, ModuleError

LD = "aarch64-linux-gnu-ld"
LD_FLAGS = ("--no-relax", "-nostdlib", "-static", "-e", "0", "--no-warn-rwx-segments",
            "--build-id=none", "-z", "norelro", "-z", "noexecstack",
            "--unresolved-symbols=report-all", "--no-gc-sections")
# Sections the arm64 loader rewrites (module.lds placeholders): not comparable with ld.
LOADER_OWNED = frozenset({".plt", ".init.plt", ".text.ftrace_trampoline"})


class LinkerFailed(ModuleError):
    """GNU ld is missing or refused the object/script."""


@dataclass(frozen=True)
class OracleLayout:
    """Pinned addresses: one per allocated section (by index) and per undefined symbol."""

    sections: dict[int, int]
    symbols: dict[str, int]


def oracle_layout(elf: ElfModule, base: int = 0xFFFF800008000000,
                  symbase: int = 0xFFFF800009000000, stride: int = 0x40) -> OracleLayout:
    """Allocated sections in index order from `base` (aligned), undefined symbols from
    `symbase` every `stride` bytes: the layout of docs/debian-modules.md §7."""
    addrs: dict[int, int] = {}
    cur = base
    for s in elf.sections:
        if s.flags & SHF_ALLOC and s.size > 0:
            al = max(1, s.addralign)
            cur = (cur + al - 1) // al * al
            addrs[s.index] = cur
            cur += s.size
    names = Counter(elf.sections[i].name for i in addrs)
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise LayoutError(f"duplicate allocated section names {dup}: ld script would merge them")
    undef = sorted({sym.name for sym in elf.symbols() if sym.shndx == SHN_UNDEF and sym.name})
    return OracleLayout(addrs, {n: symbase + stride * k for k, n in enumerate(undef)})


def unmerged_copy(elf: ElfModule) -> bytes:
    """The object with SHF_MERGE|SHF_STRINGS cleared, so ld keeps strings where they are."""
    d = bytearray(elf.data)
    for s in elf.sections:
        if s.flags & SHF_MERGE:
            off = elf.e_shoff + s.index * SHDR.size + 8
            struct.pack_into("<Q", d, off, s.flags & ~(SHF_MERGE | SHF_STRINGS))
    return bytes(d)


def linker_script(elf: ElfModule, lay: OracleLayout) -> str:
    lines = [f"{n} = {v:#x};" for n, v in lay.symbols.items()] + ["SECTIONS {"]
    lines += [f"  {elf.sections[i].name} {a:#x} : {{ KEEP(obj.o({elf.sections[i].name})) }}"
              for i, a in lay.sections.items()]
    return "\n".join([*lines, "}", ""])


@dataclass(frozen=True)
class LdResult:
    sections: dict[str, tuple[int, bytes]]  # output name -> (address, bytes)
    seconds: float  # wall time of the ld process


def ld_link(elf: ElfModule, lay: OracleLayout, ld: str = LD,
            workdir: Path | None = None) -> LdResult:
    """Run GNU ld on the unmerged object with the pinned script; read back output sections."""
    exe = shutil.which(ld)
    if exe is None:
        raise LinkerFailed(f"{ld} not found (apt-get install binutils-aarch64-linux-gnu)")
    with tempfile.TemporaryDirectory(prefix="secvma-ld-") as tmp:
        wd = workdir or Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "obj.o").write_bytes(unmerged_copy(elf))
        (wd / "link.ld").write_text(linker_script(elf, lay))
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "-T", "link.ld", "-o", "out.elf", "obj.o", *LD_FLAGS],
                              cwd=wd, capture_output=True, text=True, check=False)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            raise LinkerFailed(f"{ld} failed: {proc.stderr.strip()[:2000]}")
        return LdResult(read_output_sections((wd / "out.elf").read_bytes()), secs)


def read_output_sections(data: bytes) -> dict[str, tuple[int, bytes]]:
    """(address, bytes) of every allocated PROGBITS section of ld's ET_EXEC output."""
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shnum, e_shstrndx = struct.unpack_from("<HH", data, 0x3C)
    hdrs = [SHDR.unpack_from(data, e_shoff + i * SHDR.size) for i in range(e_shnum)]
    stroff = hdrs[e_shstrndx][4]
    out = {}
    for name_off, typ, flags, addr, off, size, *_ in hdrs:
        if typ == SHT_NOBITS or not flags & SHF_ALLOC:
            continue
        end = data.index(b"\0", stroff + name_off)
        name = data[stroff + name_off : end].decode()
        out[name] = (addr, data[off : off + size])
    return out
