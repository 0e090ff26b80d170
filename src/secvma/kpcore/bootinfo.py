"""The boot-information block the kernel hands over with HVC 6 (x1 = its PA).

C: sekvm/el1.c:init_el2_data_page records the same facts in `el2_data` before install; here
the kernel passes `secvma.hvabi.BootInfo` (parsed only through `secvma.hvabi`). Every field is
guest input and is validated before use; the helpers below are the only range tests kpcore
makes on it.
"""

from __future__ import annotations

import itertools

from secvma.hvabi import BootInfo
from secvma.kpcore.refusal import Errno, HypRefusal
from secvma.platform import GuestMemoryError, PhysAddr, Platform

RULE = "boot-info"
TRAMP_PG_DIR = 0
"""The testbed kernel has no KPTI trampoline root (spec §1.4 step 6 does not apply)."""


def sections(info: BootInfo) -> dict[str, tuple[int, int]]:
    """Every physical range kpcore relies on, by name."""
    return {"text": (info.text, info.etext), "rodata": (info.rodata, info.erodata),
            "vdso": (info.vdso, info.evdso), "init_text": (info.inittext, info.einittext),
            "data": (info.data, info.end),
            "pgtable_pool": (info.pgtable_pool, info.pgtable_pool_end),
            "mod_text_pool": (info.mod_text_pool, info.mod_text_pool_end),
            "mod_ro_pool": (info.mod_ro_pool, info.mod_ro_pool_end),
            "reserved": (info.reserved, info.reserved_end)}


def in_pgtable_pool(info: BootInfo, pa: int) -> bool:
    return info.pgtable_pool <= pa < info.pgtable_pool_end


def in_module_pool(info: BootInfo, pa: int) -> bool:
    return (info.mod_text_pool <= pa < info.mod_text_pool_end
            or info.mod_ro_pool <= pa < info.mod_ro_pool_end)


def in_vdso(info: BootInfo, pa: int) -> bool:
    return info.vdso <= pa < info.evdso


def in_image(info: BootInfo, pa: int) -> bool:
    return info.text <= pa < info.end


def read_boot_info(platform: Platform, pa: int, ram_base: int, ram_end: int) -> BootInfo:
    """Read and validate the block at `pa`. Refusal EINVAL for anything malformed."""
    if pa % 8 or not ram_base <= pa <= ram_end - BootInfo.SIZE:
        raise HypRefusal(Errno.EINVAL, RULE, "boot-info block outside RAM", pa=pa)
    try:
        info = BootInfo.from_bytes(platform.read(PhysAddr(pa), BootInfo.SIZE))
    except (GuestMemoryError, ValueError) as exc:
        raise HypRefusal(Errno.EINVAL, RULE, f"unreadable boot-info block: {exc}",
                         pa=pa) from None
    validate(info, ram_base, ram_end)
    return info


def validate(info: BootInfo, ram_base: int, ram_end: int) -> None:
    """Sections inside RAM, ordered, page aligned, disjoint; roots inside RAM."""
    def bad(reason: str, **v: int) -> HypRefusal:
        return HypRefusal(Errno.EINVAL, RULE, reason, **v)

    for name, (lo, hi) in sections(info).items():
        if lo == hi == 0 and name not in ("text", "rodata", "data"):
            continue
        if lo % 4096 or hi % 4096 or lo > hi or not (ram_base <= lo and hi <= ram_end):
            raise bad(f"section {name} [{lo:#x}, {hi:#x}) malformed or outside RAM",
                      start=lo, end=hi)
    if info.etext <= info.text:
        raise bad("empty kernel text", text=info.text)
    order = [(info.text, info.etext), (info.rodata, info.erodata),
             (info.inittext, info.einittext), (info.data, info.end)]
    for (_alo, ahi), (blo, _bhi) in itertools.pairwise(order):
        if blo < ahi:
            raise bad("kernel sections overlap or are out of order", start=blo, end=ahi)
    if info.evdso > info.vdso and not (info.rodata <= info.vdso and info.evdso <= info.erodata):
        raise bad("vDSO outside rodata", start=info.vdso, end=info.evdso)
    for name in ("swapper_pg_dir", "empty_zero_page"):
        v = getattr(info, name)
        if v % 4096 or not ram_base <= v < ram_end:
            raise bad(f"{name} {v:#x} not a RAM page", pa=v)
    if info.swapper_pg_dir == info.empty_zero_page:
        raise bad("swapper_pg_dir aliases empty_zero_page", pa=info.swapper_pg_dir)
