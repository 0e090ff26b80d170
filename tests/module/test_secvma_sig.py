"""SECvma signatures: the docs/eval-spec.md §3.3 message, byte for byte, and Ed25519 over it."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from elftools.elf.elffile import ELFFile

from secvma.fixtures import MODULE_PATHS, FixtureSet
from secvma.module.elf import ElfModule
from secvma.module.errors import (
    InvalidModuleSignature,
    KeyFormatError,
    MalformedSignature,
    MessageError,
)
from secvma.module.linux_sig import split_appended_signature
from secvma.module.secvma_sig import (
    build_message,
    load_private_key,
    load_public_key,
    parse_signature_hex,
    sign_module,
    verify_module,
)

Asm = Callable[[str], bytes]
# The test key hard-coded in SECvma's sign_mod and HostModule.c (docs/eval-spec.md §3.2).
SECVMA_SEED = "100df9e44a5516fd053dc9ede29914b05d162c3faebbd1fb1897f8169c77a77b"
SECVMA_PUB = "07f8993d1a43239a925ad3d02124b931b7f1d0531122f35d63c85cf79f3f4eca"


# ------------------------------------------------------------------ independent reference
# Written from docs/eval-spec.md §3.3's prose with pyelftools, sharing no code with secvma_sig.


def _ref_heapsort(items: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    def key(r: tuple[int, int, int]) -> tuple[int, int, int]:
        return (r[1] & 0xFFFFFFFF, r[1] >> 32, r[2])

    a = list(items)
    n = len(a)

    def sift_down(root: int, size: int) -> None:
        while 2 * root + 1 < size:
            child = 2 * root + 1
            if child + 1 < size and key(a[child]) < key(a[child + 1]):
                child += 1
            if key(a[root]) >= key(a[child]):
                return
            a[root], a[child] = a[child], a[root]
            root = child

    for i in range(n // 2 - 1, -1, -1):
        sift_down(i, n)
    for i in range(n - 1, 0, -1):
        a[0], a[i] = a[i], a[0]
        sift_down(0, i)
    return a


def reference_message(data: bytes, sort: Callable[[list[tuple[int, int, int]]],
                                                   list[tuple[int, int, int]]] = _ref_heapsort
                      ) -> bytes:
    f = ELFFile(io.BytesIO(data))
    hdr = [dict(s.header) | {"name": s.name} for s in f.iter_sections()]
    body = {i: f.get_section(i).data() if h["sh_type"] != "SHT_NOBITS" else b""
            for i, h in enumerate(hdr)}
    flag = {i: h["sh_flags"] for i, h in enumerate(hdr)}
    for nm in ("__versions", ".modinfo"):
        for i, h in enumerate(hdr):
            if i and h["name"] == nm and flag[i] & 2:
                flag[i] &= ~2
                break
    sym = next(i for i, h in enumerate(hdr) if h["sh_type"] == "SHT_SYMTAB")
    strt = hdr[sym]["sh_link"]
    for i, h in enumerate(hdr):
        if h["sh_type"] == "SHT_RELA" and flag[h["sh_info"]] & 4:
            ents = list(struct.iter_unpack("<QQq", body[i]))
            body[i] = b"".join(struct.pack("<QQq", *e) for e in sort(ents))
    typ = {i: h["sh_type"] for i, h in enumerate(hdr)}
    size = {i: h["sh_size"] for i, h in enumerate(hdr)}
    align = {i: h["sh_addralign"] for i, h in enumerate(hdr)}
    for nm in (".plt", ".init.plt"):
        i = max(i for i, h in enumerate(hdr) if h["name"] == nm)
        typ[i], flag[i], align[i], size[i] = "SHT_NOBITS", 6, 64, 16
    flag[sym] |= 2
    flag[strt] |= 2
    order: list[int] = []
    for init in (False, True):
        for want_exec in (True, False):
            for i, h in enumerate(hdr):
                if i in order or i in (0, sym, strt) or h["name"].startswith(".init") != init:
                    continue
                if not flag[i] & 2:
                    continue
                if (want_exec and flag[i] & 4) or (not want_exec and not flag[i] & 1):
                    order.append(i)
    order += [sym, strt]
    order += [i for i, h in enumerate(hdr) if h["sh_type"] == "SHT_RELA" and h["sh_info"] in order]
    codes = {"SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
             "SHT_NOTE": 7, "SHT_NOBITS": 8}
    out = b""
    for i in order:
        t = codes[typ[i]] if isinstance(typ[i], str) else typ[i]
        out += struct.pack("<6Q", size[i], flag[i], align[i] or 1, hdr[i]["sh_info"], t,
                           hdr[i]["sh_link"])
        if t != 8:
            out += body[i]
    return out


# ------------------------------------------------------------------ synthetic objects

MANY_CALLS = "\n".join(
    ["    .section .text,\"ax\",%progbits", "    .globl entry", "entry:"]
    + [f"    bl helper{k % 7}" for k in range(300)]
    + [f"    b helper{k % 3}" for k in range(21)]
    + ["    .section .init.text,\"ax\",%progbits", "    bl helper1", "    bl helper1",
       "    .section .exit.text,\"ax\",%progbits", "    ret",
       "    .section .rodata,\"a\",%progbits", "    .xword entry",
       "    .section .init.data,\"aw\",%progbits", "    .xword 1",
       "    .bss", "    .space 64", ""]
)


@pytest.fixture
def synthetic(assemble: Asm, skeleton: str) -> ElfModule:
    return ElfModule(assemble(MANY_CALLS + skeleton))


def test_checklist_is_code_then_rodata_core_then_init_then_tables(synthetic: ElfModule) -> None:
    """Checklist order follows docs/eval-spec.md §3.3 step 6 (cf. its worked example)."""
    names = [e.name for e in build_message(synthetic).entries]
    assert names == [".text", ".exit.text", ".plt", ".rodata", ".init.text", ".init.plt",
                     ".symtab", ".strtab", ".rela.text", ".rela.init.text", ".rela.rodata"]


def test_message_matches_independent_reference_on_321_tied_calls(synthetic: ElfModule) -> None:
    """The message equals a from-the-spec pyelftools implementation with many equal keys."""
    assert build_message(synthetic).message == reference_message(synthetic.data)


def test_stable_sort_would_change_the_message(synthetic: ElfModule) -> None:
    """Heapsort's order of equal-key relocations matters: a stable sort gives other bytes."""
    def stable(x: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        return sorted(x, key=lambda r: (r[1] & 0xFFFFFFFF, r[1] >> 32, r[2]))

    assert build_message(synthetic).message != reference_message(synthetic.data, stable)


@pytest.mark.debian
@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_message_matches_independent_reference_on_debian(debian: FixtureSet, name: str) -> None:
    """For every fixture module the message equals the independent reference byte for byte."""
    data, _ = split_appended_signature(debian.modules[name].read_bytes())
    assert build_message(ElfModule(data)).message == reference_message(data)


def test_secvma_seed_derives_secvma_public_key(tmp_path: Path) -> None:
    """The seed file form (64 hex digits) gives SECvma's published public key."""
    (tmp_path / "seed").write_text(SECVMA_SEED + "\n")
    key = load_private_key(tmp_path / "seed")
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert pub.hex() == SECVMA_PUB


def test_pem_raw_and_hex_keys_sign_identically(tmp_path: Path, synthetic: ElfModule) -> None:
    """PEM PKCS#8, a raw 32-byte seed and its hex digits are the same key (Ed25519 is
    deterministic)."""
    sk = Ed25519PrivateKey.generate()
    seed = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    (tmp_path / "k.pem").write_bytes(sk.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "k.raw").write_bytes(seed)
    (tmp_path / "k.hex").write_text(seed.hex())
    sigs = {sign_module(synthetic, load_private_key(tmp_path / f)) for f in
            ("k.pem", "k.raw", "k.hex")}
    assert len(sigs) == 1


def test_sign_then_verify_round_trips(tmp_path: Path, synthetic: ElfModule) -> None:
    """A signature made with the seed verifies with the matching public key."""
    (tmp_path / "seed").write_text(SECVMA_SEED)
    (tmp_path / "pub").write_text(SECVMA_PUB)
    sig = sign_module(synthetic, load_private_key(tmp_path / "seed"))
    msg = verify_module(synthetic, sig, load_public_key(tmp_path / "pub"))
    assert len(msg.checklist) == 11


def test_one_byte_tamper_in_signed_code_fails(tmp_path: Path, synthetic: ElfModule) -> None:
    """Flipping one byte of .text makes verification raise InvalidModuleSignature."""
    key = Ed25519PrivateKey.generate()
    sig = sign_module(synthetic, key)
    text = synthetic.section_by_name(".text")
    assert text is not None
    data = bytearray(synthetic.data)
    data[text.offset + 5] ^= 0x01
    with pytest.raises(InvalidModuleSignature, match="does not match"):
        verify_module(ElfModule(bytes(data)), sig, key.public_key())


def test_tamper_in_writable_data_is_not_covered(synthetic: ElfModule) -> None:
    """Writable sections (here .init.data) are outside the checklist, as in SECvma."""
    key = Ed25519PrivateKey.generate()
    sig = sign_module(synthetic, key)
    sec = synthetic.section_by_name(".init.data")
    assert sec is not None
    data = bytearray(synthetic.data)
    data[sec.offset] ^= 0xFF
    verify_module(ElfModule(bytes(data)), sig, key.public_key())


def test_wrong_key_fails(synthetic: ElfModule) -> None:
    """A signature by one key does not verify under another."""
    sig = sign_module(synthetic, Ed25519PrivateKey.generate())
    with pytest.raises(InvalidModuleSignature):
        verify_module(synthetic, sig, Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("text", ["", "00" * 63, "zz" * 64, "00" * 65])
def test_malformed_signature_hex_is_refused(text: str) -> None:
    """Anything but 128 hex digits is a MalformedSignature."""
    with pytest.raises(MalformedSignature):
        parse_signature_hex(text)


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_bad_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    """Short, garbage or broken-PEM key files raise KeyFormatError."""
    (tmp_path / "k").write_bytes(content)
    with pytest.raises(KeyFormatError):
        load_private_key(tmp_path / "k")


def test_missing_plt_sections_refused(assemble: Asm) -> None:
    """Like sign_mod, an object without .plt/.init.plt gets no message."""
    elf = ElfModule(assemble("    .text\n    ret\n"))
    with pytest.raises(MessageError, match="PLT"):
        build_message(elf)


def test_page_multiple_length_aborts_quirk(assemble: Asm, skeleton: str) -> None:
    """sign_mod aborts when the message length is an exact multiple of 4096 (quirk flag)."""
    base = "    .section .rodata,\"a\",%progbits\n    .space {n}\n" + skeleton
    n0 = len(build_message(ElfModule(assemble(base.format(n=16)))).message)
    pad = 16 + (-n0) % 4096
    elf = ElfModule(assemble(base.format(n=pad)))
    assert len(build_message(elf).message) % 4096 == 0
    with pytest.raises(MessageError, match="multiple of 4096"):
        build_message(elf, page_multiple_abort_quirk=True)


@pytest.mark.parametrize(("checklist", "match"), [
    ([], "1..100"), (list(range(1, 102)), "1..100"), ([0], "out of range"),
    ([999], "out of range"), ([1], "SHT_SYMTAB"),
])
def test_el2_checklist_refusals(synthetic: ElfModule, checklist: list[int], match: str) -> None:
    """A guest-supplied checklist that EL2 would refuse raises MessageError."""
    from secvma.module.secvma_sig import serialize_checklist

    with pytest.raises(MessageError, match=match):
        serialize_checklist(synthetic.sections, checklist, lambda s: b"\0" * s.size)


def test_el2_serialization_reads_frozen_bytes(synthetic: ElfModule) -> None:
    """EL2 serialises what its reader returns, so content changed after freezing is caught."""
    from secvma.module.secvma_sig import serialize_checklist

    msg = build_message(synthetic)
    good = serialize_checklist(synthetic.sections, msg.checklist,
                               lambda s: synthetic.section_bytes(s.index))
    bad = serialize_checklist(synthetic.sections, msg.checklist,
                              lambda s: b"\xff" * s.size if s.name == ".rodata"
                              else synthetic.section_bytes(s.index))
    assert good.message != bad.message and len(good.message) == len(bad.message)
