"""Symbol resolution: kernel exports, exports of loaded modules, licences and modversions.

Mirrors `simplify_symbols` / `resolve_symbol` / `check_version` of kernel/module/main.c:
* undefined symbols are looked up by name in the kernel's exports and then in the exports of
  already-loaded modules; unresolved weak symbols become 0, unresolved strong ones fail;
* a GPL-only export used by a module whose licence is not GPL-compatible fails;
* with a `__versions` section, an exporter CRC that differs from the module's recorded CRC
  fails ("disagrees about version of symbol"); a missing entry is tolerated like the kernel;
* defined symbols get their section's address added (per-CPU symbols the per-CPU base);
  SHN_ABS values stay as they are; SHN_COMMON is refused ("compile with -fno-common").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from secvma.module.elf import (
    SHN_ABS,
    SHN_COMMON,
    SHN_LIVEPATCH,
    SHN_LORESERVE,
    SHN_UNDEF,
    STB_WEAK,
    ElfModule,
)
from secvma.module.errors import (
    ElfFormatError,
    LicenceError,
    SymbolError,
    UnresolvedSymbol,
    VersionMismatch,
)

GPL_COMPATIBLE = frozenset({"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL",
                            "Dual MIT/GPL", "Dual MPL/GPL"})
VERSION_ENTRY = struct.Struct("<Q56s")  # struct modversion_info { unsigned long crc; char name[56]; }


class ExportKind(Enum):
    PLAIN = "EXPORT_SYMBOL"
    GPL = "EXPORT_SYMBOL_GPL"


@dataclass(frozen=True)
class Export:
    """One exported symbol: where it lives and what it requires of its user."""

    name: str
    address: int
    kind: ExportKind
    owner: str  # "vmlinux" or a module name
    crc: int | None = None


@dataclass(frozen=True)
class SymversEntry:
    """A line of Module.symvers: `0xCRC<TAB>symbol<TAB>module<TAB>EXPORT_...<TAB>namespace`."""

    crc: int
    name: str
    module: str
    kind: ExportKind
    namespace: str


def parse_symvers(text: str) -> dict[str, SymversEntry]:
    """Module.symvers as a name -> entry map; malformed lines raise ElfFormatError."""
    out: dict[str, SymversEntry] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 4:
            raise ElfFormatError(f"Module.symvers line {n}: expected 4-5 tab-separated columns")
        try:
            crc = int(cols[0], 16)
            kind = ExportKind(cols[3])
        except ValueError as exc:
            raise ElfFormatError(f"Module.symvers line {n}: {exc}") from exc
        out[cols[1]] = SymversEntry(crc, cols[1], cols[2], kind, cols[4] if len(cols) > 4 else "")
    return out


class ExportTable:
    """Everything a module may link against: kernel exports plus loaded modules' exports."""

    def __init__(self, exports: Iterable[Export] = ()) -> None:
        self._by_name: dict[str, Export] = {}
        self.add(exports)

    def add(self, exports: Iterable[Export]) -> None:
        for e in exports:
            if e.name in self._by_name and self._by_name[e.name].owner != e.owner:
                raise SymbolError(f"{e.owner}: exports duplicate symbol {e.name} "
                                  f"(already exported by {self._by_name[e.name].owner})")
            self._by_name[e.name] = e

    def get(self, name: str) -> Export | None:
        return self._by_name.get(name)

    def copy(self) -> ExportTable:
        """An independent table with the same exports."""
        out = ExportTable()
        out._by_name = dict(self._by_name)
        return out

    def names(self) -> list[str]:
        return list(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @classmethod
    def kernel_from_symvers(cls, symvers: Mapping[str, SymversEntry], base: int,
                            stride: int = 0x40) -> ExportTable:
        """Synthetic kernel: every vmlinux export of Module.symvers at base + stride*k."""
        names = sorted(n for n, e in symvers.items() if e.module == "vmlinux")
        return cls(Export(n, base + stride * k, symvers[n].kind, "vmlinux", symvers[n].crc)
                   for k, n in enumerate(names))


def modinfo(elf: ElfModule) -> list[tuple[str, str]]:
    """`.modinfo` key=value strings in order (e.g. license, depends, vermagic, name)."""
    sec = elf.section_by_name(".modinfo")
    if sec is None:
        return []
    out = []
    for raw in elf.section_bytes(sec.index).split(b"\0"):
        if b"=" in raw:
            k, v = raw.split(b"=", 1)
            out.append((k.decode("utf-8", "replace"), v.decode("utf-8", "replace")))
    return out


def module_name(elf: ElfModule) -> str:
    """The `name=` tag of `.modinfo` (what SECvma looks its signature up by); '' if none."""
    return next((v for k, v in modinfo(elf) if k == "name"), "")


def is_gpl_compatible(elf: ElfModule) -> bool:
    return any(k == "license" and v in GPL_COMPATIBLE for k, v in modinfo(elf))


def versions(elf: ElfModule) -> dict[str, int]:
    """`__versions`: symbol name -> CRC the module was built against."""
    sec = elf.section_by_name("__versions")
    if sec is None:
        return {}
    data = elf.section_bytes(sec.index)
    if len(data) % VERSION_ENTRY.size:
        raise ElfFormatError(f"__versions size {len(data)} is not a multiple of 64")
    out = {}
    for crc, raw in VERSION_ENTRY.iter_unpack(data):
        out[raw.split(b"\0", 1)[0].decode("utf-8", "replace")] = crc
    return out


def check_versions(elf: ElfModule, symvers: Mapping[str, SymversEntry]) -> list[str]:
    """Names whose `__versions` CRC disagrees with Module.symvers (missing names skipped)."""
    return sorted(n for n, crc in versions(elf).items()
                  if n in symvers and symvers[n].crc != crc)


def module_exports(elf: ElfModule, section_addrs: Mapping[int, int], owner: str) -> list[Export]:
    """Exports of a loaded module, from its `__ksymtab_<name>` / `__ksymtab_gpl` symbols.

    Address = the exported symbol's own section address + value; CRC from `__crc_<name>`
    (SHN_ABS value, or the u32 at its place in `__kcrctab*`), when present.
    """
    ks: dict[int, ExportKind] = {}
    for secname, kind in (("__ksymtab", ExportKind.PLAIN), ("__ksymtab_gpl", ExportKind.GPL)):
        found = elf.section_by_name(secname)
        if found is not None:
            ks[found.index] = kind
    if not ks:
        return []
    syms = list(elf.symbols())
    defined = {s.name: s for s in syms if s.shndx != SHN_UNDEF and s.shndx < SHN_LORESERVE}
    crcs = {s.name[6:]: s for s in syms if s.name.startswith("__crc_")}
    out = []
    for s in syms:
        if s.shndx not in ks or not s.name.startswith("__ksymtab_"):
            continue
        name = s.name[len("__ksymtab_"):]
        target = defined.get(name)
        if target is None:
            continue
        addr = section_addrs.get(target.shndx, 0) + target.value
        crc = None
        c = crcs.get(name)
        if c is not None:
            if c.shndx == SHN_ABS:
                crc = c.value & 0xFFFFFFFF
            elif 0 < c.shndx < SHN_LORESERVE:
                blob = elf.section_bytes(c.shndx)
                if c.value + 4 <= len(blob):
                    crc = struct.unpack_from("<I", blob, c.value)[0]
        out.append(Export(name, addr, ks[s.shndx], owner, crc))
    return out


@dataclass(frozen=True)
class Resolution:
    """Final value of every symbol (index -> address) and which export satisfied each import."""

    values: list[int]
    imports: dict[str, Export | None]  # None: unresolved weak


def resolve_symbols(elf: ElfModule, section_addrs: Mapping[int, int], exports: ExportTable,
                    *, percpu_index: int = 0, percpu_base: int = 0,
                    check_licence: bool = True, check_crcs: bool = True) -> Resolution:
    """`simplify_symbols`: the value of every symbol after linking (see module docstring)."""
    raw = elf.raw_symbols()
    vers = versions(elf) if check_crcs else {}
    gpl = is_gpl_compatible(elf) if check_licence else True
    values = [0] * len(raw)
    imports: dict[str, Export | None] = {}
    for i in range(1, len(raw)):
        _name, info, _other, shndx, value, _size = raw[i]
        if shndx == SHN_UNDEF:
            name = elf.symbol_name(i)
            exp = exports.get(name)
            if exp is None:
                if info >> 4 == STB_WEAK:
                    imports[name] = None
                    continue
                raise UnresolvedSymbol(f"unknown symbol {name} (not exported by the kernel "
                                       "or a loaded module)")
            if exp.kind is ExportKind.GPL and not gpl:
                raise LicenceError(f"{name} is EXPORT_SYMBOL_GPL ({exp.owner}); the module's "
                                   "licence is not GPL-compatible")
            if exp.crc is not None and name in vers and vers[name] != exp.crc:
                raise VersionMismatch(f"disagrees about version of symbol {name}: module "
                                      f"{vers[name]:#010x}, {exp.owner} {exp.crc:#010x}")
            imports[name] = exp
            values[i] = exp.address
        elif shndx == SHN_COMMON:
            raise SymbolError(f"common symbol {elf.symbol_name(i)}: compile with -fno-common")
        elif shndx in (SHN_ABS, SHN_LIVEPATCH) or shndx >= SHN_LORESERVE:
            values[i] = value
        elif percpu_index and shndx == percpu_index:
            values[i] = (percpu_base + value) & ((1 << 64) - 1)
        else:
            values[i] = (section_addrs.get(shndx, 0) + value) & ((1 << 64) - 1)
    return Resolution(values, imports)
