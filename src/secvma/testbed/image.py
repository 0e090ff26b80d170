"""Symbols of the built testbed kernel, read from its ELF with pyelftools."""

from __future__ import annotations

import functools
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from secvma.machine.layout import KERNEL_BASE

KIMAGE_VADDR = 0xFFFF_8000_0800_0000
"""Link address of the kernel image (include/layout.h); its PA is KERNEL_BASE."""
KIMAGE_VOFFSET = KIMAGE_VADDR - KERNEL_BASE
PAGE_OFFSET = 0xFFFF_0000_0000_0000
PHYS_OFFSET = 0x4000_0000
LINEAR_OFFSET = PAGE_OFFSET - PHYS_OFFSET


class KernelImage:
    """Name -> VA of every symbol of kernel.elf, and their PAs."""

    def __init__(self, elf: Path):
        self.elf = elf
        self.symbols = _read_symbols(elf, elf.stat().st_mtime_ns)

    def va(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise KeyError(f"symbol {name!r} not in {self.elf}") from None

    def pa(self, name: str) -> int:
        return self.va(name) - KIMAGE_VOFFSET

    def name_at(self, va: int) -> str | None:
        """The symbol at exactly `va`, if any (for messages)."""
        for n, v in self.symbols.items():
            if v == va:
                return n
        return None


def linear_va(pa: int) -> int:
    """Linear-map VA of a PA (any RAM after the hypervisor's region)."""
    return pa + LINEAR_OFFSET


@functools.lru_cache(maxsize=8)
def _read_symbols(elf: Path, _mtime: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with elf.open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.iter_symbols():
                    if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                        out.setdefault(sym.name, int(sym["st_value"]))
    return out
