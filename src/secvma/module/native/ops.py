"""The accelerator's entry points, with the Python reference as the fallback for anything odd.

Each function returns None when the accelerator is not available (or disabled), and the
caller then runs the pure-Python code it would have run anyway. Buffers are passed without
copies: RELA entries are read straight out of the module's bytes at a section offset (the
C side bounds-checks offset and count against the buffer's length).
"""

from __future__ import annotations

import ctypes
import functools
from array import array
from collections.abc import Sequence
from typing import Literal

from secvma.module.config import LoaderConfig
from secvma.module.elf import RELA, ElfModule
from secvma.module.native import lib
from secvma.module.relocations import (
    _APPLY,
    M64,
    RECIPES,
    Imm,
    Kind,
    Op,
    RelocRecipe,
    RelocTarget,
    apply_relocations,
)

PLAN_REFUSE = 1
_KIND = {Kind.NONE: 0, Kind.DATA: 1, Kind.MOVW: 2, Kind.IMM: 3, Kind.ADRP: 4, Kind.BRANCH: 5}
_OP = {Op.NONE: 0, Op.ABS: 1, Op.PREL: 2, Op.PAGE: 3}
_M32 = 0xFFFFFFFF


class _Recipe(ctypes.Structure):
    """`recipe_t` of modaccel.c: one row of `relocations.RECIPES`."""

    _fields_ = [
        ("rtype", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("op", ctypes.c_uint32),
        ("width", ctypes.c_uint32),
        ("lsb", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
        ("imm_shift", ctypes.c_int32),
        ("imm_mask", ctypes.c_uint32),
        ("is_signed", ctypes.c_uint32),
        ("check", ctypes.c_uint32),
        ("plt_sorted", ctypes.c_uint32),
        ("place_bytes", ctypes.c_uint32),
    ]


@functools.cache
def recipe_table() -> tuple[ctypes.Array[_Recipe], tuple[RelocRecipe, ...]]:
    """`RECIPES` as the C engine's table (rows in ascending type order) and the rows."""
    from secvma.module.load import PLT_TYPES  # load imports this module

    rows = tuple(sorted(RECIPES.values(), key=lambda r: r.rtype.value))
    table = (_Recipe * len(rows))()
    for i, r in enumerate(rows):
        shift, mask = r.imm.value if r.imm is not None else (0, 0)
        assert r.imm is not Imm.ADR or shift == -1, "IMM_ADR is shift -1 in modaccel.c"
        table[i] = _Recipe(r.rtype.value, _KIND[r.kind], _OP[r.op], r.width, r.lsb, r.length,
                           int(shift), int(mask), int(r.signed), int(r.check),
                           int(r.rtype in PLT_TYPES), r.place_bytes)
    return table, rows


def _writable(buf: bytearray) -> ctypes.Array[ctypes.c_char]:
    """A ctypes view of `buf` (a 1-byte scratch array when `buf` is empty)."""
    if not buf:
        return ctypes.create_string_buffer(1)
    return (ctypes.c_char * len(buf)).from_buffer(buf)


def sort_relas(data: bytes, offset: int, count: int) -> bytes | None:
    """`count` RELA entries at `data[offset:]` in the arm64 loader's heapsort order."""
    native = lib()
    if native is None or min(offset, count) < 0 or offset + count * RELA.size > len(data):
        return None
    out = bytearray(count * RELA.size)
    rc = native.secvma_sort_relas(data, len(data), offset, count, _writable(out), len(out))
    return bytes(out) if rc == 0 else None


def count_plts(relas: bytes, offset: int, count: int, elf: ElfModule, dst_index: int,
               dst_align: int, cfg: LoaderConfig) -> tuple[int, int] | Literal[False] | None:
    """`load.count_plts` on *sorted* entries at `relas[offset:]`.

    Returns (slots, alignment); False when a symbol index is outside the symbol table (the
    caller raises its error); None when the accelerator is unavailable.
    """
    native = lib()
    if native is None:
        return None
    st = elf.sections[elf.symtab_index]
    out = (ctypes.c_uint64 * 3)()
    rc = native.secvma_count_plts(relas, len(relas), offset, count, elf.data, len(elf.data),
                                  st.offset, elf.symbol_count, dst_index,
                                  int(cfg.randomize_base), int(cfg.erratum_843419),
                                  cfg.plt_entry_size, dst_align & M64, out)
    if rc == 1:
        return False
    if rc != 0:
        return None
    return int(out[0]), int(out[1])


def symbol_array(symvals: Sequence[int]) -> array[int]:
    """Symbol values as the u64 array the engine reads (values taken modulo 2^64)."""
    try:
        return array("Q", symvals)
    except OverflowError:
        return array("Q", [v & M64 for v in symvals])


def apply_relas(target: RelocTarget, data: bytes, offset: int, count: int,
                symvals: Sequence[int], symarr: array[int], *, plt_sort: bool,
                erratum_843419: bool, module_plts: bool) -> dict[int, int] | None:
    """`relocations.apply_relocations` on RELA bytes, with the C engine doing the work.

    The entries are applied in the order `apply_relocations` would see them: the file order
    at `data[offset:]`, or `load.plt_order` of it when `plt_sort` (code sections). When a
    pre-check fails the reference runs from scratch (nothing was written) to raise its
    error; entries the engine hands back (PLT, erratum 843419, overflow) are applied by the
    reference's per-kind function, in order. Returns counts per type in the reference's
    dict order, or None when the accelerator is unavailable.
    """
    native = lib()
    if native is None:
        return None
    table, rows = recipe_table()
    nrec = len(rows)
    nsyms = len(symvals)
    order = (ctypes.c_uint32 * max(count, 1))()
    counts = (ctypes.c_uint64 * nrec)()
    first = (ctypes.c_uint64 * nrec)()
    size = len(target.buf)
    rc = native.secvma_plan(table, nrec, data, len(data), offset, count, size, nsyms,
                            int(plt_sort), order, count, counts, first)
    if rc != 0:
        relas = list(RELA.iter_unpack(data[offset : offset + count * RELA.size]))
        if plt_sort:
            from secvma.module.load import plt_order

            relas = plt_order(relas)
        return apply_relocations(target, relas, symvals, erratum_843419=erratum_843419,
                                 module_plts=module_plts)
    buf = _writable(target.buf)
    base = target.addr & M64
    sym_ptr = symarr.buffer_info()[0] if nsyms else None
    pos = 0
    while True:
        pos = native.secvma_apply(table, nrec, data, len(data), offset, count, buf, size, base,
                                  sym_ptr, nsyms, int(erratum_843419), order, count, pos)
        if pos == count:
            break
        if pos < 0:
            raise RuntimeError(f"modaccel: secvma_apply rejected its arguments ({pos})")
        entry = RELA.unpack_from(data, offset + order[pos] * RELA.size)
        rec = RECIPES[entry[1] & _M32]
        _APPLY[rec.kind](rec, target, [entry], symvals, erratum_843419, module_plts)
        pos += 1
    present = [s for s in range(nrec) if counts[s]]
    if plt_sort:
        present.sort(key=lambda s: (1, rows[s].rtype.value) if table[s].plt_sorted
                     else (0, first[s]))
    else:
        present.sort(key=lambda s: first[s])
    return {rows[s].rtype.value: int(counts[s]) for s in present}
