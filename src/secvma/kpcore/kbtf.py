"""Kernel structure layouts from the BTF the Image carries (`CONFIG_DEBUG_INFO_BTF`).

Module authentication reads a few fields of the kernel's `struct module` (its name, its
layouts, its per-CPU area). Their offsets depend on the kernel's configuration; Debian's Image
describes its own types in a `.BTF` blob (the one `/sys/kernel/btf/vmlinux` shows), so the
offsets are read from the Image before it runs instead of being guessed. The format is the
kernel's (Documentation/bpf/btf.rst): a header, a table of types, a string table.

The Image is the user's file, not guest memory; still, a malformed blob raises `BtfError`
(never an IndexError or struct.error) so a caller can fall back or refuse.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off/len

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_DECL_TAG, KIND_ENUM64 = 13, 14, 15, 17, 19
_FIXED = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_ITEM = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
             KIND_DATASEC: 12, KIND_ENUM64: 12}
"""Bytes that follow a type record, by kind: fixed, or per vlen item; other kinds (2, 7-12,
16, 18) have none."""
MAX_KIND = 19


class BtfError(ValueError):
    """No BTF in the Image, or a blob that does not parse."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class Btf:
    """The types of one BTF blob: kind, name, size and members (structs/unions) by type id."""

    kinds: tuple[int, ...]  # index 0 is the void type
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    members: Mapping[int, tuple[Member, ...]]

    def struct_id(self, name: str) -> int:
        """The id of the struct `name` that has members (not a forward declaration)."""
        for tid, (kind, n) in enumerate(zip(self.kinds, self.names, strict=True)):
            if kind == KIND_STRUCT and n == name and self.members.get(tid):
                return tid
        raise BtfError(f"no struct {name} in the BTF")

    def offsets(self, struct_name: str) -> dict[str, int]:
        """Byte offset of every named member of `struct_name` (members of anonymous structs
        and unions included, at their place in the outer struct)."""
        out: dict[str, int] = {}
        self._flatten(self.struct_id(struct_name), 0, out, 0)
        return out

    def _flatten(self, tid: int, base_bits: int, out: dict[str, int], depth: int) -> None:
        if depth > 8:
            raise BtfError("anonymous members nested too deep")
        for m in self.members.get(tid, ()):
            if m.name:
                if m.bit_offset % 8 == 0:
                    out.setdefault(m.name, (base_bits + m.bit_offset) // 8)
            elif 0 < m.type_id < len(self.kinds) \
                    and self.kinds[m.type_id] in (KIND_STRUCT, KIND_UNION):
                self._flatten(m.type_id, base_bits + m.bit_offset, out, depth + 1)


def find_blob(image: bytes) -> int:
    """Offset of the kernel's BTF blob in `image` (the largest well-formed one)."""
    best, best_len = -1, 0
    pos = image.find(MAGIC.to_bytes(2, "little"))
    while pos >= 0:
        if pos + HEADER.size <= len(image):
            _m, ver, _f, hl, toff, tlen, soff, slen = HEADER.unpack_from(image, pos)
            end = pos + hl + max(toff + tlen, soff + slen)
            if ver == 1 and hl == HEADER.size and end <= len(image) and tlen > best_len:
                best, best_len = pos, tlen
        pos = image.find(MAGIC.to_bytes(2, "little"), pos + 1)
    if best < 0:
        raise BtfError("the Image carries no BTF (a kernel built without CONFIG_DEBUG_INFO_BTF)")
    return best


def parse(image: bytes, at: int | None = None) -> Btf:
    """The BTF blob of `image` (found by `find_blob` unless `at` is given)."""
    pos = find_blob(image) if at is None else at
    try:
        _m, _v, _f, hl, toff, tlen, soff, slen = HEADER.unpack_from(image, pos)
    except struct.error as exc:
        raise BtfError(f"truncated BTF header at {pos:#x}") from exc
    types = image[pos + hl + toff:pos + hl + toff + tlen]
    strs = image[pos + hl + soff:pos + hl + soff + slen]
    if len(types) != tlen or len(strs) != slen:
        raise BtfError("the BTF blob runs past the end of the Image")

    def name(off: int) -> str:
        if off >= len(strs):
            raise BtfError(f"string offset {off} past the string table")
        end = strs.find(b"\0", off)
        return strs[off:end if end >= 0 else len(strs)].decode("utf-8", "replace")

    kinds, names, sizes = [0], [""], [0]
    members: dict[int, tuple[Member, ...]] = {}
    p = 0
    try:
        while p < tlen:
            name_off, info, size = struct.unpack_from("<III", types, p)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            if not 1 <= kind <= MAX_KIND:
                raise BtfError(f"unknown BTF kind {kind} at type {len(kinds)}")
            extra = _FIXED.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for k in range(vlen):
                    mn, mt, moff = struct.unpack_from("<III", types, p + 12 + 12 * k)
                    ms.append(Member(name(mn), mt, moff & 0xFFFFFF if kflag else moff))
                members[len(kinds)] = tuple(ms)
            kinds.append(kind)
            names.append(name(name_off))
            sizes.append(size)
            p += 12 + extra
    except struct.error as exc:
        raise BtfError(f"truncated BTF type table at byte {p}") from exc
    return Btf(tuple(kinds), tuple(names), tuple(sizes), members)


__all__ = ["Btf", "BtfError", "Member", "find_blob", "parse"]
