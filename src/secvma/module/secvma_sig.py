"""SECvma module signatures: the signed message of docs/eval-spec.md §3.3, and Ed25519 over it.

Why the message looks like this: SECvma's hypervisor authenticates exactly the bytes the
kernel hands it — the code and read-only sections, symtab, strtab and their relocations,
*after* Linux rewrote the headers and heap-sorted the relocations — so the offline signer
must reproduce that load-time view byte for byte. Steps (docs/eval-spec.md §3.3):

1. clear SHF_ALLOC on the first allocated `__versions` and `.modinfo` (kernel `find_sec`);
2. the symbol table is the first SHT_SYMTAB, the string table its `sh_link`;
3. heap-sort (Linux 4.18 `lib/sort.c`) every RELA section that patches an executable section;
4. `.plt` and `.init.plt` (last of each name; both required) become NOBITS, flags
   ALLOC|EXECINSTR, align L1_CACHE_BYTES, size (PLT count + 1) × entry size;
5. symtab and strtab get SHF_ALLOC (KALLSYMS);
6. checklist: core (a) ALLOC|EXEC then (b) ALLOC and not WRITE; the same for `.init*` names;
   then symtab, strtab, then every RELA section whose target is already listed;
7. message = for each entry: six little-endian u64 {size, flags, align or 1, info, type,
   link} followed by the section bytes unless NOBITS.
Then Ed25519 (RFC 8032, pure) signs the whole message.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secvma.module import native
from secvma.module.config import SECVMA_4_18, LoaderConfig
from secvma.module.elf import (
    RELA,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHT_NOBITS,
    SHT_RELA,
    SHT_SYMTAB,
    ElfModule,
    Section,
)
from secvma.module.errors import (
    InvalidModuleSignature,
    KeyFormatError,
    MalformedSignature,
    MessageError,
)
from secvma.module.load import count_plts
from secvma.module.native import ops
from secvma.module.sort import sort_relas

RECORD = struct.Struct("<6Q")
M64 = (1 << 64) - 1
MAX_VERIFY_SECTIONS = 100  # MAX_VERIFY_SECTION_SIZE in the SECvma patch
SIGNATURE_BYTES = 64
_TAKEN = 1 << 63  # the kernel marks taken sections by setting bit 63 of sh_entsize


@dataclass(frozen=True)
class MessageEntry:
    """One checklist entry as it appears in the message (header values after rewrites)."""

    index: int
    name: str
    size: int
    flags: int
    addralign: int
    info: int
    type: int
    link: int
    offset: int  # where this entry's 48-byte record starts in the message


@dataclass(frozen=True)
class SignedMessage:
    """The exact byte stream SECvma signs and the checklist it came from."""

    message: bytes
    checklist: tuple[int, ...]
    entries: tuple[MessageEntry, ...]

    def content_of(self, index: int) -> bytes:
        """The section bytes the message holds for checklist section `index`."""
        for e in self.entries:
            if e.index == index:
                start = e.offset + RECORD.size
                return b"" if e.type == SHT_NOBITS else self.message[start : start + e.size]
        raise KeyError(index)


def _first_alloc(secs: list[Section], name: str) -> int:
    """Kernel `find_sec`: first *allocated* section of that name, or 0."""
    for s in secs[1:]:
        if s.flags & SHF_ALLOC and s.name == name:
            return s.index
    return 0


def build_message(elf: ElfModule, cfg: LoaderConfig = SECVMA_4_18, *,
                  page_multiple_abort_quirk: bool = False) -> SignedMessage:
    """The signed message of docs/eval-spec.md §3.3 for `elf` (module docstring, steps 1–7).

    `page_multiple_abort_quirk` reproduces the C tool's assertion that aborts when the
    message length is an exact multiple of the 4 KiB page (raises MessageError).
    """
    secs = list(elf.sections)
    for name in ("__versions", ".modinfo"):
        idx = _first_alloc(secs, name)
        if idx:
            secs[idx] = dataclasses.replace(secs[idx], flags=secs[idx].flags & ~SHF_ALLOC)
    sym_i = elf.symtab_index
    str_i = secs[sym_i].link
    contents: dict[int, bytes] = {}
    syms = elf.raw_symbols()
    nplt = {False: 0, True: 0}
    fast = native.available()
    for rs in elf.rela_sections():
        dst = secs[rs.info]
        if not dst.flags & SHF_EXECINSTR:
            continue
        if fast:
            n, align = _sorted_section_native(elf, rs, dst, cfg, contents)
            secs[rs.info] = dataclasses.replace(secs[rs.info], addralign=align)
            nplt[dst.name.startswith(".init")] += n
            continue
        relas = sort_relas(elf.relocations(rs.index))
        if relas and max(r[1] >> 32 for r in relas) >= len(syms):
            raise MessageError(f"{rs.name}: relocation symbol index out of range")
        contents[rs.index] = struct.pack(f"<{len(relas) * 3}Q",
                                         *[v & M64 for r in relas for v in r])
        n, align = count_plts(syms, relas, rs.info, dst, cfg)
        secs[rs.info] = dataclasses.replace(secs[rs.info], addralign=align)
        nplt[dst.name.startswith(".init")] += n
    plt = init_plt = 0
    for s in secs:
        if s.name == ".plt":
            plt = s.index
        elif s.name == ".init.plt":
            init_plt = s.index
    if not plt or not init_plt:
        raise MessageError("module PLT section(s) missing: need .plt and .init.plt")
    for idx, is_init in ((plt, False), (init_plt, True)):
        secs[idx] = dataclasses.replace(
            secs[idx], type=SHT_NOBITS, flags=SHF_EXECINSTR | SHF_ALLOC,
            addralign=cfg.l1_cache_bytes, size=(nplt[is_init] + 1) * cfg.plt_entry_size)
    for idx in (sym_i, str_i):
        secs[idx] = dataclasses.replace(secs[idx], flags=secs[idx].flags | SHF_ALLOC)

    checklist = _checklist(secs, sym_i, str_i)

    def read(sec: Section) -> bytes:
        body = contents.get(sec.index)
        return body if body is not None else elf.data[sec.offset : sec.offset + sec.size]

    msg = serialize_checklist(secs, checklist, read)
    if page_multiple_abort_quirk and len(msg.message) % 4096 == 0:
        raise MessageError(f"message length {len(msg.message)} is a multiple of 4096 "
                           "(sign_mod aborts)")
    return msg


def _sorted_section_native(elf: ElfModule, rs: Section, dst: Section, cfg: LoaderConfig,
                           contents: dict[int, bytes]) -> tuple[int, int]:
    """Steps 3–4 for one RELA section with the accelerator: sorted bytes into `contents`,
    then (PLT slots, alignment), exactly as the pure-Python loop body computes them."""
    n = rs.size // RELA.size
    body = ops.sort_relas(elf.data, rs.offset, n)
    if body is None:
        raise native.NativeBuildError("modaccel: sort refused a section the parser accepted")
    got = ops.count_plts(body, 0, n, elf, rs.info, dst.addralign, cfg)
    if got is False:
        raise MessageError(f"{rs.name}: relocation symbol index out of range")
    if got is None:
        raise native.NativeBuildError("modaccel: count_plts refused its arguments")
    contents[rs.index] = body
    return got


def serialize_checklist(sections: Sequence[Section], checklist: Sequence[int],
                        read: Callable[[Section], bytes]) -> SignedMessage:
    """Records + contents for a given checklist (EL2's `init_info` + `move_section`).

    This is the hypervisor's half: the guest kernel supplies the checklist and the
    (already rewritten) headers, and `read` returns a section's current bytes from wherever
    the hypervisor froze them. Refuses what EL2 refuses: an empty or > 100-entry
    checklist, an index of 0 or >= e_shnum, no SHT_SYMTAB entry, short contents.
    """
    if not 0 < len(checklist) <= MAX_VERIFY_SECTIONS:
        raise MessageError(f"checklist has {len(checklist)} entries; SECvma accepts 1..100")
    n = len(sections)
    if any(not 0 < i < n for i in checklist):
        raise MessageError(f"checklist index out of range 1..{n - 1}: {list(checklist)}")
    if not any(sections[i].type == SHT_SYMTAB for i in checklist):
        raise MessageError("checklist has no SHT_SYMTAB entry")
    parts: list[bytes] = []
    entries = []
    pos = 0
    for idx in checklist:
        s = sections[idx]
        entries.append(MessageEntry(idx, s.name, s.size, s.flags, s.addralign or 1, s.info,
                                    s.type, s.link, pos))
        parts.append(RECORD.pack(s.size, s.flags, s.addralign or 1, s.info, s.type, s.link))
        pos += RECORD.size
        if s.type != SHT_NOBITS:
            body = read(s)
            if len(body) != s.size:
                raise MessageError(f"section {idx} ({s.name}) has {len(body)} of {s.size} bytes")
            parts.append(body)
            pos += s.size
    return SignedMessage(b"".join(parts), tuple(checklist), tuple(entries))


def _checklist(secs: list[Section], sym_i: int, str_i: int) -> list[int]:
    """Eval-spec §3.3 step 6: code, then RO data, core then init; symtab, strtab; relas."""
    out: list[int] = []
    taken = {i for i, s in enumerate(secs) if s.entsize & _TAKEN}
    for init in (False, True):
        for need_exec in (True, False):
            for s in secs:
                if s.index in taken or s.index in (sym_i, str_i) or s.index == 0:
                    continue
                if s.name.startswith(".init") != init or not s.flags & SHF_ALLOC:
                    continue
                ok = (s.flags & SHF_EXECINSTR) if need_exec else not s.flags & SHF_WRITE
                if ok:
                    out.append(s.index)
                    taken.add(s.index)
    out += [sym_i, str_i]
    listed = set(out)
    out += [s.index for s in secs if s.type == SHT_RELA and s.info in listed]
    return out


# ---------------------------------------------------------------------------- keys


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _hex_or_raw(data: bytes) -> bytes | None:
    """32 raw bytes, or 64 hex digits (with optional whitespace) -> 32 bytes."""
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def private_key_from_bytes(data: bytes) -> Ed25519PrivateKey:
    """Ed25519 private key from PEM (PKCS#8), a raw 32-byte seed, or its 64 hex digits."""
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"bad PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"PEM key is {type(key).__name__}, need Ed25519")
        return key
    seed = _hex_or_raw(data)
    if seed is None:
        raise KeyFormatError(f"key is {len(data)} bytes: need PEM, a 32-byte seed or 64 hex")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_from_bytes(data: bytes) -> Ed25519PublicKey:
    """Ed25519 public key from PEM (SubjectPublicKeyInfo), 32 raw bytes or 64 hex digits.

    A PEM *private* key is accepted too (its public half is used).
    """
    if b"PRIVATE KEY" in data:
        return private_key_from_bytes(data).public_key()
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"bad PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"PEM key is {type(key).__name__}, need Ed25519")
        return key
    raw = _hex_or_raw(data)
    if raw is None:
        raise KeyFormatError(f"key is {len(data)} bytes: need PEM, 32 raw bytes or 64 hex")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFormatError(f"not an Ed25519 public key: {exc}") from exc


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    return private_key_from_bytes(_read(path, "private key"))


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    return public_key_from_bytes(_read(path, "public key"))


def parse_signature_hex(text: str) -> bytes:
    """The 128-hex-digit form `sign_mod` prints (and SECvma's table stores) -> 64 bytes."""
    t = text.strip().lower()
    if len(t) != 2 * SIGNATURE_BYTES:
        raise MalformedSignature(f"signature has {len(t)} hex digits, need 128")
    try:
        return bytes.fromhex(t)
    except ValueError as exc:
        raise MalformedSignature(f"signature is not hex: {exc}") from exc


# ---------------------------------------------------------------------------- sign / verify


def sign_message(msg: SignedMessage, key: Ed25519PrivateKey) -> bytes:
    return key.sign(msg.message)


def verify_message(msg: SignedMessage, signature: bytes, key: Ed25519PublicKey) -> None:
    """Raise InvalidModuleSignature unless `signature` is valid for the message."""
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedSignature(f"Ed25519 signature is {len(signature)} bytes, need 64")
    try:
        key.verify(signature, msg.message)
    except InvalidSignature as exc:
        raise InvalidModuleSignature(
            f"SECvma Ed25519 signature does not match the {len(msg.message)}-byte message "
            f"of {len(msg.checklist)} checklist sections (wrong key or modified module)"
        ) from exc


def sign_module(elf: ElfModule, key: Ed25519PrivateKey, cfg: LoaderConfig = SECVMA_4_18) -> bytes:
    """The 64-byte SECvma signature of a module (what `sign_mod` prints as hex)."""
    return sign_message(build_message(elf, cfg), key)


def verify_module(elf: ElfModule, signature: bytes, key: Ed25519PublicKey,
                  cfg: LoaderConfig = SECVMA_4_18) -> SignedMessage:
    """Build the message and verify it; returns the message (raises if invalid)."""
    msg = build_message(elf, cfg)
    verify_message(msg, signature, key)
    return msg
