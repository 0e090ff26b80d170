"""A strict, struct-based parser for ELF64 little-endian AArch64 relocatable objects (`.ko`).

Why not pyelftools here: module images come from an untrusted guest and the loader has a
time budget (~40,000 relocations for xfs.ko). This parser validates every offset, size and
index *once* up front and then hands out flat tuples, so later stages never index out of
range and never pay per-field object overhead. pyelftools stays in the tests as an
independent oracle.

Checks made on parse (each failure is an `ElfFormatError` subclass with the reason):
ident (magic, class 64, little endian, version), `e_type == ET_REL`, `e_machine ==
EM_AARCH64`, header table inside the file, section name table valid, every non-NOBITS
section inside the file and not overlapping another one or the headers, power-of-two
alignments, exactly one SYMTAB with a STRTAB link, RELA sections whose entry size, link and
target index make sense, and symbol names/section indices in range.
"""

from __future__ import annotations

import itertools
import lzma
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from pathlib import Path

from secvma.module.errors import DecompressError, ElfFormatError, TruncatedError

# Cap on decompressed size: the largest Debian module is ~20 MB; 256 MiB stops xz bombs.
MAX_MODULE_BYTES = 256 << 20

EM_AARCH64 = 183
ET_REL = 1
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")
assert EHDR.size == 64 and SHDR.size == 64 and SYM.size == 24 and RELA.size == 24, "ELF64 ABI"


class ShType(IntEnum):
    NULL = 0
    PROGBITS = 1
    SYMTAB = 2
    STRTAB = 3
    RELA = 4
    HASH = 5
    DYNAMIC = 6
    NOTE = 7
    NOBITS = 8
    REL = 9
    SHLIB = 10
    DYNSYM = 11


class ShFlags(IntFlag):
    WRITE = 0x1
    ALLOC = 0x2
    EXECINSTR = 0x4
    MERGE = 0x10
    STRINGS = 0x20
    INFO_LINK = 0x40
    LINK_ORDER = 0x80
    GROUP = 0x200
    RO_AFTER_INIT = 0x00200000  # Linux-private flag set by the loader (module.h)


# Plain-int copies for hot loops: IntFlag arithmetic goes through Python-level __and__.
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHF_MERGE, SHF_STRINGS, SHF_RO_AFTER_INIT = 0x10, 0x20, 0x00200000
SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 2, 3, 4, 8, 9

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_LIVEPATCH = 0xFF20
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Section:
    """One section header, with its name resolved. Values are as in the file."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def has_bytes(self) -> bool:
        """Does the section occupy file bytes (everything but NOBITS)?"""
        return self.type != ShType.NOBITS

    @property
    def alloc(self) -> bool:
        return bool(self.flags & ShFlags.ALLOC)


@dataclass(frozen=True, slots=True)
class Symbol:
    """One symbol-table entry (`st_value` as in the file, not yet relocated)."""

    index: int
    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int

    @property
    def undefined(self) -> bool:
        return self.shndx == SHN_UNDEF


def _cstr(blob: bytes, start: int, what: str) -> str:
    """NUL-terminated string at `start` of a string table, validated."""
    if start >= len(blob) and not (start == 0 and not blob):
        raise ElfFormatError(f"{what}: name offset {start} outside its string table "
                             f"({len(blob)} bytes)")
    end = blob.find(b"\0", start)
    if end < 0:
        raise ElfFormatError(f"{what}: name at {start} is not NUL-terminated")
    return blob[start:end].decode("utf-8", "surrogateescape")


class ElfModule:
    """A validated AArch64 relocatable object. Immutable view over `data`.

    `sections` are the headers as in the file; loaders that rewrite headers (the kernel's
    load-time view) work on copies (`secvma.module.load`).
    """

    __slots__ = ("_strtab", "_syms", "data", "e_shoff", "e_shstrndx", "sections", "strtab_index",
                 "symtab_index")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self._parse_header()
        self._syms: list[tuple[int, int, int, int, int, int]] | None = None

    # ---------------------------------------------------------------- header + sections

    def _parse_header(self) -> None:
        d = self.data
        if len(d) < EHDR.size:
            raise TruncatedError(f"file is {len(d)} bytes, shorter than an ELF64 header (64)")
        (ident, e_type, e_machine, e_version, _entry, _phoff, e_shoff, _flags, e_ehsize,
         _phentsize, _phnum, e_shentsize, e_shnum, e_shstrndx) = EHDR.unpack_from(d, 0)
        if ident[:4] != b"\x7fELF":
            raise ElfFormatError("not an ELF file (bad magic)")
        if ident[4] != 2:
            raise ElfFormatError(f"ELF class {ident[4]}, need ELFCLASS64 (2)")
        if ident[5] != 1:
            raise ElfFormatError(f"ELF data encoding {ident[5]}, need little endian (1)")
        if ident[6] != 1 or e_version != 1:
            raise ElfFormatError("ELF version is not EV_CURRENT (1)")
        if e_type != ET_REL:
            raise ElfFormatError(f"e_type {e_type}, a module must be ET_REL (1)")
        if e_machine != EM_AARCH64:
            raise ElfFormatError(f"e_machine {e_machine}, need EM_AARCH64 (183)")
        if e_ehsize != EHDR.size or e_shentsize != SHDR.size:
            raise ElfFormatError(f"e_ehsize {e_ehsize} / e_shentsize {e_shentsize}, need 64 / 64")
        if e_shnum == 0 or e_shnum >= SHN_LORESERVE:
            raise ElfFormatError(f"e_shnum {e_shnum}: no sections or extended numbering")
        if e_shoff < EHDR.size or e_shoff + e_shnum * SHDR.size > len(d):
            raise TruncatedError(f"section header table at {e_shoff:#x} ({e_shnum} entries) "
                                 f"does not fit in the {len(d)}-byte file")
        if e_shstrndx == SHN_UNDEF or e_shstrndx >= e_shnum:
            raise ElfFormatError(f"e_shstrndx {e_shstrndx} out of range (e_shnum {e_shnum})")
        self.e_shoff, self.e_shstrndx = e_shoff, e_shstrndx
        raw = [SHDR.unpack_from(d, e_shoff + i * SHDR.size) for i in range(e_shnum)]
        for i, (_n, typ, _f, _a, off, size, *_rest) in enumerate(raw):
            if typ != ShType.NOBITS and off + size > len(d):
                raise TruncatedError(f"section {i} [{off:#x}, +{size:#x}) extends past the end "
                                     f"of the {len(d)}-byte file")
        _n, styp, _f, _a, soff, ssize, *_ = raw[e_shstrndx]
        if styp != ShType.STRTAB:
            raise ElfFormatError(f"section name table {e_shstrndx} is not SHT_STRTAB")
        names = d[soff : soff + ssize]
        secs = []
        for i, (n, typ, flags, addr, off, size, link, info, align, entsize) in enumerate(raw):
            name = _cstr(names, n, f"section {i}")
            if align & (align - 1):
                raise ElfFormatError(f"section {i} ({name}): sh_addralign {align} "
                                     "is not a power of two")
            secs.append(Section(i, name, typ, flags, addr, off, size, link, info, align, entsize))
        self.sections: tuple[Section, ...] = tuple(secs)
        self._check_overlaps(e_shoff, e_shnum)
        self._check_tables()

    def _check_overlaps(self, e_shoff: int, e_shnum: int) -> None:
        spans = [(0, EHDR.size, "ELF header"), (e_shoff, e_shoff + e_shnum * SHDR.size,
                                                  "section header table")]
        spans += [(s.offset, s.offset + s.size, f"section {s.index} ({s.name})")
                  for s in self.sections if s.has_bytes and s.size > 0 and s.type != ShType.NULL]
        spans.sort()
        for (_a0, a1, an), (b0, _b1, bn) in itertools.pairwise(spans):
            if b0 < a1:
                raise ElfFormatError(f"{bn} overlaps {an}")

    def _check_tables(self) -> None:
        n = len(self.sections)
        symtabs = [s for s in self.sections if s.type == ShType.SYMTAB]
        if len(symtabs) != 1:
            raise ElfFormatError(f"module has {len(symtabs)} symbol tables, need exactly one")
        st = symtabs[0]
        if st.size % SYM.size or st.entsize not in (0, SYM.size):
            raise ElfFormatError(f"symtab size {st.size}/entsize {st.entsize} not a multiple of 24")
        if not 0 < st.link < n or self.sections[st.link].type != ShType.STRTAB:
            raise ElfFormatError(f"symtab sh_link {st.link} is not a string table")
        self.symtab_index, self.strtab_index = st.index, st.link
        self._strtab = self.section_bytes(st.link)
        for s in self.sections:
            if s.type == ShType.RELA:
                if s.size % RELA.size or s.entsize not in (0, RELA.size):
                    raise ElfFormatError(f"RELA section {s.index} ({s.name}): size {s.size} / "
                                         f"entsize {s.entsize} not multiples of 24")
                if s.info >= n or s.info == 0:
                    raise ElfFormatError(f"RELA section {s.index} ({s.name}): target section "
                                         f"{s.info} out of range")
                if s.link != st.index:
                    raise ElfFormatError(f"RELA section {s.index} ({s.name}): sh_link {s.link} "
                                         "is not the symbol table")
            elif s.type == ShType.REL:
                raise ElfFormatError(f"SHT_REL section {s.index} ({s.name}): arm64 uses RELA only")

    # ---------------------------------------------------------------- accessors

    def section_bytes(self, index: int) -> bytes:
        """Raw contents of a section (NOBITS: empty)."""
        s = self.sections[index]
        return b"" if not s.has_bytes else self.data[s.offset : s.offset + s.size]

    def section_by_name(self, name: str) -> Section | None:
        """Last section of that name (the kernel's `find_sec` keeps the last match too)."""
        found = None
        for s in self.sections:
            if s.name == name:
                found = s
        return found

    @property
    def symbol_count(self) -> int:
        return self.sections[self.symtab_index].size // SYM.size

    def raw_symbols(self) -> list[tuple[int, int, int, int, int, int]]:
        """(st_name, st_info, st_other, st_shndx, st_value, st_size) per symbol, validated."""
        if self._syms is None:
            st = self.sections[self.symtab_index]
            syms = list(SYM.iter_unpack(self.data[st.offset : st.offset + st.size]))
            n = len(self.sections)
            slen = len(self._strtab)
            for i, (name, _info, _other, shndx, _v, _sz) in enumerate(syms):
                if name >= slen and name != 0:
                    raise ElfFormatError(f"symbol {i}: name offset {name} outside strtab")
                if shndx >= n and shndx < SHN_LORESERVE:
                    raise ElfFormatError(f"symbol {i}: section index {shndx} out of range")
                if shndx == SHN_XINDEX:
                    raise ElfFormatError(f"symbol {i}: SHN_XINDEX is not supported in modules")
            self._syms = syms
        return self._syms

    def symbol_name(self, index: int) -> str:
        return _cstr(self._strtab, self.raw_symbols()[index][0], f"symbol {index}")

    def symbol(self, index: int) -> Symbol:
        _name, info, _other, shndx, value, size = self.raw_symbols()[index]
        return Symbol(index, self.symbol_name(index), value, size, info >> 4, info & 0xF, shndx)

    def symbols(self) -> Iterator[Symbol]:
        for i in range(len(self.raw_symbols())):
            yield self.symbol(i)

    def rela_sections(self) -> list[Section]:
        return [s for s in self.sections if s.type == ShType.RELA]

    def relocations(self, rela_index: int) -> list[tuple[int, int, int]]:
        """(r_offset, r_info, r_addend) of one RELA section, in file order (not validated
        against the target; `relocations.check_relocations` does that)."""
        s = self.sections[rela_index]
        if s.type != ShType.RELA:
            raise ElfFormatError(f"section {rela_index} ({s.name}) is not SHT_RELA")
        return list(RELA.iter_unpack(self.data[s.offset : s.offset + s.size]))


def decompress(data: bytes, name: str = "") -> bytes:
    """Undo `.ko.xz` / `.ko.zst` compression (detected by magic), bounded in size."""
    if data[:6] == b"\xfd7zXZ\x00":
        try:
            dec = lzma.LZMADecompressor()
            out = dec.decompress(data, max_length=MAX_MODULE_BYTES + 1)
        except lzma.LZMAError as exc:
            raise DecompressError(f"{name or 'module'}: bad xz stream: {exc}") from exc
        if len(out) > MAX_MODULE_BYTES:
            raise DecompressError(f"{name or 'module'}: decompresses beyond {MAX_MODULE_BYTES} B")
        if not dec.eof:
            raise DecompressError(f"{name or 'module'}: truncated xz stream")
        return out
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        try:
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(data) as reader:
                out = reader.read(MAX_MODULE_BYTES + 1)
            if len(out) > MAX_MODULE_BYTES:
                raise DecompressError(f"{name or 'module'}: decompresses beyond "
                                      f"{MAX_MODULE_BYTES} B")
            # The bounded read cannot tell a truncated frame from a short one; this can.
            obj = dctx.decompressobj()
            obj.decompress(data)
            if not obj.eof:
                raise DecompressError(f"{name or 'module'}: truncated zstd stream")
        except zstandard.ZstdError as exc:
            raise DecompressError(f"{name or 'module'}: bad zstd stream: {exc}") from exc
        return bytes(out)
    return data


def read_module_file(path: Path | str) -> bytes:
    """File bytes, decompressed if `.ko.xz` / `.ko.zst` (signature trailer kept)."""
    p = Path(path)
    data = p.read_bytes()
    return decompress(data, p.name)
