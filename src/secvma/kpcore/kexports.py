"""The kernel's exported symbols, read from the Image file before it runs (`__ksymtab`).

Why from the Image: module authentication relocates a module against the kernel's own symbols
(issue 10 item 4), and the values must not come from memory the kernel could have changed.
Debian's kallsyms name text symbols only (no KALLSYMS_ALL), so data exports (`jiffies`,
`kmalloc_caches`) are found in the export table the module loader itself searches.

6.1 arm64 (PREL32 relocations): `__ksymtab` and `__ksymtab_gpl` are arrays of
`struct kernel_symbol { s32 value_offset, name_offset, namespace_offset; }`, each offset
relative to its own field, sorted by name; the names sit in `__ksymtab_strings` (merged
strings, so a name may be the tail of another). No relocation is needed to read them: the
link-time VA of an export is KIMAGE_VADDR + its Image offset; at run time the KASLR
displacement is added.

Found by shape: the region of the Image where most Module.symvers names occur as strings is
`__ksymtab_strings`; every 4-aligned word whose PC-relative target lands on a known name in
it is a `name_offset` field, and its entry is the 12 bytes that start one word before. Only
long runs of such entries are the tables: Debian's Image has other small arrays of
PC-relative words pointing at the same strings (one named `__cpuhp_state_add_instance` with a
value in .rodata), and some real entries name a string outside the densest region, so a run
is followed entry by entry wherever its names lie.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Mapping

from secvma.kpcore.textsites import KIMAGE_VADDR
from secvma.module.symbols import Export, ExportKind, SymversEntry

_STRING = re.compile(rb"(?<=\0)[A-Za-z_][A-Za-z0-9_.$]*(?=\0)")
_CHUNK = 1 << 16
MAX_TABLE_SPAN = 4 << 20
"""The symbol tables lie within this many bytes before their strings."""
MIN_RUN = 64
"""Entries in a row that make a symbol table (6.1's __ksymtab/_gpl hold thousands)."""


def image_exports(image: bytes, symvers: Mapping[str, SymversEntry]) -> dict[str, Export]:
    """name -> Export (link-time address, kind from Module.symvers) of every vmlinux export
    whose `__ksymtab` entry is found; {} if the table is not found."""
    names = {n.encode(): e for n, e in symvers.items() if e.module == "vmlinux"}
    if not names:
        return {}
    hits = Counter(m.start() // _CHUNK for m in _STRING.finditer(image) if m.group() in names)
    if not hits:
        return {}
    best = max(hits, key=lambda c: hits[c])
    lo_c = hi_c = best
    while hits.get(lo_c - 1, 0) * 4 >= hits[best] // 8:
        lo_c -= 1
    while hits.get(hi_c + 1, 0) * 4 >= hits[best] // 8:
        hi_c += 1
    str_lo, str_hi = lo_c * _CHUNK, min(len(image), (hi_c + 1) * _CHUNK)
    start = max(0, str_lo - MAX_TABLE_SPAN) & ~3
    count = (min(len(image), str_hi) - start) // 4 - 1
    words = struct.unpack_from(f"<{count}i", image, start)
    def name_at(k: int) -> SymversEntry | None:
        """The export whose name the PC-relative word `k` points at (anywhere in the Image)."""
        target = start + 4 * k + words[k]
        if not 0 <= target < len(image):
            return None
        end = image.find(b"\0", target, target + 256)
        return names.get(image[target:end] if end > 0 else b"")

    found: dict[int, SymversEntry] = {}
    for k in range(1, count):
        if str_lo <= start + 4 * k + words[k] < str_hi:
            ent = name_at(k)
            if ent is not None:
                found[k] = ent
    # The tables are the long runs of 12-byte entries; a run is followed past entries whose
    # name lies outside the densest string region (merged strings can sit elsewhere), and
    # short runs (other arrays of PC-relative words that happen to point at names) are dropped.
    table: dict[int, SymversEntry] = {}
    for k in sorted(found):
        if k in table or k - 3 in found:
            continue
        run = [k]
        while run[-1] + 3 < count and (run[-1] + 3 in found or name_at(run[-1] + 3)):
            run.append(run[-1] + 3)
        if len(run) >= MIN_RUN:
            for j in run:
                ent = found.get(j) or name_at(j)
                assert ent is not None
                table[j] = ent
    out: dict[str, Export] = {}
    for k, ent in sorted(table.items()):
        if ent.name in out:
            continue
        entry = start + 4 * (k - 1)
        value = KIMAGE_VADDR + entry + words[k - 1]
        out[ent.name] = Export(ent.name, value, ent.kind, "vmlinux", ent.crc)
    return out


def relocate_exports(exports: Mapping[str, Export], kaslr: int) -> list[Export]:
    """The exports at their run-time addresses (KASLR displacement added)."""
    mask = (1 << 64) - 1
    return [Export(e.name, (e.address + kaslr) & mask, e.kind, e.owner, e.crc)
            for e in exports.values()]


__all__ = ["ExportKind", "image_exports", "relocate_exports"]
