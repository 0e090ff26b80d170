"""How KPCore reads a stage-1 descriptor written into a protected kernel table (spec §1.3, §3.3).

C: kint/kint.h:points_to_table / points_to_leaf. The C code looks at the type bit only (and at
PGD level treats any non-zero entry as a table); `hardened` reads descriptors as the hardware
does (bits[1:0]), so an entry the MMU ignores is never counted or validated as a mapping.

    level  secvma2024 (any_nonzero)           hardened
    0      non-zero -> table                  0b11 -> table, other non-zero -> malformed
    1, 2   bit1 -> table, else non-zero leaf  0b11 table, 0b01 block, 0bx0 -> malformed
    3      non-zero -> leaf                   0b11 page, other non-zero -> malformed
"""

from __future__ import annotations

import enum

from secvma.arch.descriptors import OA_MASK, oa_mask

PXN = 1 << 53
UXN = 1 << 54
PXNTABLE = 1 << 59


class Shape(enum.Enum):
    EMPTY = "empty"
    TABLE = "table"
    LEAF = "leaf"
    MALFORMED = "malformed"


def shape(raw: int, level: int, *, any_nonzero: bool) -> Shape:
    """What KPCore treats `raw` at `level` as."""
    if raw == 0:
        return Shape.EMPTY
    if any_nonzero:
        if level == 0 or (level in (1, 2) and raw & 2):
            return Shape.TABLE
        return Shape.LEAF
    low = raw & 3
    if low == 3:
        return Shape.LEAF if level == 3 else Shape.TABLE
    if low == 1 and level in (1, 2):
        return Shape.LEAF
    return Shape.MALFORMED


def out_pa(raw: int, level: int, sh: Shape) -> int:
    """Output (or next-table) address bits 47:12 / 47:21 / 47:30 of a descriptor."""
    if sh is Shape.LEAF and level in (1, 2):
        return raw & oa_mask(level)
    return raw & OA_MASK


def leaf_pages(level: int) -> int:
    return {1: 1 << 18, 2: 1 << 9, 3: 1}[level]
