"""The strict ELF parser: agrees with pyelftools on real modules, refuses malformed input."""

from __future__ import annotations

import io
import lzma
import struct
from collections.abc import Callable
from typing import Any, cast

import pytest
import zstandard
from elftools.elf.elffile import ELFFile

from secvma.fixtures import MODULE_PATHS, FixtureSet
from secvma.module.api import open_module
from secvma.module.elf import SHDR, ElfModule, decompress
from secvma.module.errors import (
    DecompressError,
    ElfFormatError,
    ModuleError,
    TruncatedError,
)

Asm = Callable[[str], bytes]


@pytest.mark.debian
@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_sections_symbols_relocations_agree_with_pyelftools(debian: FixtureSet,
                                                            name: str) -> None:
    """Headers, symbol values and every RELA entry equal pyelftools' reading of the file."""
    img = open_module(debian.modules[name].read_bytes())
    elf = img.elf
    ref = ELFFile(io.BytesIO(elf.data))
    assert len(elf.sections) == ref.num_sections()
    for ours, theirs in zip(elf.sections, ref.iter_sections(), strict=True):
        h = theirs.header
        assert (ours.name, ours.offset, ours.size, ours.flags, ours.link, ours.info,
                ours.addralign) == (theirs.name, h["sh_offset"], h["sh_size"], h["sh_flags"],
                                    h["sh_link"], h["sh_info"], h["sh_addralign"])
    symtab: Any = ref.get_section(elf.symtab_index)
    for ours_sym, theirs_sym in zip(elf.symbols(), symtab.iter_symbols(), strict=True):
        assert (ours_sym.name, ours_sym.value, ours_sym.size) == (
            theirs_sym.name, theirs_sym["st_value"], theirs_sym["st_size"])
    for rs in elf.rela_sections():
        theirs_r = [(r["r_offset"], r["r_info"], r["r_addend"])
                    for r in cast(Any, ref.get_section(rs.index)).iter_relocations()]
        assert elf.relocations(rs.index) == theirs_r
    assert img.name == name


@pytest.mark.debian
def test_xz_and_zstd_modules_decompress_to_the_same_module(debian: FixtureSet) -> None:
    """`.ko.xz` and `.ko.zst` inputs open to the same ELF and signature as the plain `.ko`."""
    raw = debian.modules["libcrc32c"].read_bytes()
    plain = open_module(raw)
    for packed in (lzma.compress(raw, format=lzma.FORMAT_XZ),
                   zstandard.ZstdCompressor().compress(raw)):
        img = open_module(packed)
        assert img.elf.data == plain.elf.data
        assert img.linux_signature == plain.linux_signature


@pytest.mark.parametrize("blob", [b"\xfd7zXZ\x00garbage", b"\x28\xb5\x2f\xfd" + b"\x00" * 9,
                                  lzma.compress(b"abc")[:-6]])
def test_corrupt_compressed_streams_raise_decompress_error(blob: bytes) -> None:
    """Garbage or truncated xz/zstd streams give DecompressError, not an lzma/zstd exception."""
    with pytest.raises(DecompressError):
        decompress(blob)


@pytest.fixture(scope="module")
def small(assemble: Asm, skeleton: str) -> bytes:
    return assemble("    .text\n    bl ext\n    .data\n    .xword ext\n" + skeleton)


def _shdr_field(data: bytes, index: int, field: int, value: int, fmt: str = "<Q") -> bytes:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    d = bytearray(data)
    struct.pack_into(fmt, d, shoff + index * SHDR.size + field, value)
    return bytes(d)


def _sec(data: bytes, name: str) -> int:
    s = ElfModule(data).section_by_name(name)
    assert s is not None
    return s.index


BAD_INPUTS: list[tuple[str, Callable[[bytes], bytes], type[ModuleError], str]] = [
    ("empty", lambda d: b"", TruncatedError, "shorter than an ELF64 header"),
    ("truncated header table", lambda d: d[: len(d) - 10], TruncatedError, "header table"),
    ("bad magic", lambda d: b"\x7fELG" + d[4:], ElfFormatError, "magic"),
    ("32-bit class", lambda d: d[:4] + b"\x01" + d[5:], ElfFormatError, "ELFCLASS64"),
    ("big endian", lambda d: d[:5] + b"\x02" + d[6:], ElfFormatError, "little endian"),
    ("x86-64 machine", lambda d: d[:18] + struct.pack("<H", 62) + d[20:], ElfFormatError,
     "EM_AARCH64"),
    ("executable type", lambda d: d[:16] + struct.pack("<H", 2) + d[18:], ElfFormatError,
     "ET_REL"),
    ("shstrndx out of range", lambda d: d[:0x3E] + struct.pack("<H", 999) + d[0x40:],
     ElfFormatError, "e_shstrndx"),
    ("huge section count", lambda d: d[:0x3C] + struct.pack("<H", 0xFF00) + d[0x3E:],
     ElfFormatError, "e_shnum"),
    ("section past end of file", lambda d: _shdr_field(d, 1, 0x20, 1 << 40), TruncatedError,
     "past the end"),
    ("huge section offset", lambda d: _shdr_field(d, 1, 0x18, 1 << 62), TruncatedError,
     "past the end"),
    ("overlapping sections", lambda d: _shdr_field(d, 2, 0x18, ElfModule(d).sections[1].offset),
     ElfFormatError, "overlaps"),
    ("non power-of-two alignment", lambda d: _shdr_field(d, 1, 0x30, 3), ElfFormatError,
     "power of two"),
    ("rela target out of range", lambda d: _shdr_field(d, _sec(d, ".rela.text"), 0x2C, 500,
                                                       "<I"), ElfFormatError, "target section"),
    ("rela link not symtab", lambda d: _shdr_field(d, _sec(d, ".rela.text"), 0x28, 1, "<I"),
     ElfFormatError, "not the symbol table"),
    ("symtab link out of range", lambda d: _shdr_field(d, _sec(d, ".symtab"), 0x28, 77, "<I"),
     ElfFormatError, "not a string table"),
    ("section name outside strtab", lambda d: _shdr_field(d, 1, 0, 1 << 30, "<I"),
     ElfFormatError, "name offset"),
]


@pytest.mark.parametrize(("label", "mutate", "exc", "match"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_malformed_objects_raise_typed_errors(small: bytes, label: str,
                                              mutate: Callable[[bytes], bytes],
                                              exc: type[ModuleError], match: str) -> None:
    """Each kind of corruption is refused with its specific ModuleError and a clear reason."""
    with pytest.raises(exc, match=match):
        ElfModule(mutate(small))


def test_symbol_with_bad_section_index_is_refused(small: bytes) -> None:
    """A symbol pointing at a section index past e_shnum raises ElfFormatError."""
    elf = ElfModule(small)
    st = elf.sections[elf.symtab_index]
    d = bytearray(small)
    struct.pack_into("<H", d, st.offset + 24 + 6, 999)  # symbol 1's st_shndx
    with pytest.raises(ElfFormatError, match="section index"):
        ElfModule(bytes(d)).raw_symbols()


def test_relocation_symbol_index_out_of_range_is_refused(small: bytes) -> None:
    """A RELA entry naming a symbol past the symbol table is refused by the loader."""
    from secvma.module.config import LINUX_6_1
    from secvma.module.load import prepare

    elf = ElfModule(small)
    rs = elf.section_by_name(".rela.text")
    assert rs is not None
    d = bytearray(small)
    off, info, add = struct.unpack_from("<QQq", d, rs.offset)
    struct.pack_into("<QQq", d, rs.offset, off, (10_000 << 32) | (info & 0xFFFFFFFF), add)
    with pytest.raises(ElfFormatError, match="symbol 10000"):
        prepare(ElfModule(bytes(d)), LINUX_6_1)
