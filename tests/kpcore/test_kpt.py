"""Kernel page-table store emulation: per-level rules, store forms, and the C quirks."""

from __future__ import annotations

import pytest
from fakes import (
    DATA,
    FORMS,
    INIT,
    PT_POOL,
    PXN,
    RODATA,
    TEXT,
    VMALLOC,
    block_desc,
    booted,
    kva,
    lva,
    map_vmalloc,
    page_desc,
    slot_of,
    table_desc,
)

from secvma.kpcore.pages import Usage
from secvma.kpcore.refusal import Errno, Outcome
from secvma.kpcore.stage2 import PermKind, kind_of
from secvma.platform import PhysAddr

PAGE = 0x4500_3000  # an ordinary page far above the kernel (not a block's first page)


def _usage(hv, pa: int) -> Usage:  # type: ignore[no-untyped-def]
    return hv.state.pages.usage_of(pa >> 12)


def test_new_table_is_claimed_zeroed_and_linked(any_policy: str) -> None:
    """Linking a pool page as a PTE table claims it (zeroed, RO) and then performs the store."""
    m, hv = booted(any_policy)
    pool = m.kernel.alloc_pool()
    m.plat.write(PhysAddr(pool), b"\xAA" * 4096)
    pmd_slot = slot_of(m, VMALLOC, 2)
    r = m.store(lva(pmd_slot), table_desc(pool))
    assert r.done and r.traps >= 2
    assert _usage(hv, pool) is Usage.EL1_PTE
    assert m.plat.read(PhysAddr(pool), 4096) == bytes(4096)
    assert m.plat.read_u64(PhysAddr(pmd_slot)) == table_desc(pool)
    assert m.load(lva(pool))
    assert kind_of(hv.state.s2.leaf(pool)[2]) is PermKind.RO  # type: ignore[index]
    assert not hv.refusals and not hv.check_invariants(m.plat)


def test_leaf_to_data_gets_pxn_forced(any_policy: str) -> None:
    """A new PTE without PXN to a non-code page is written with PXN set."""
    m, hv = booted(any_policy)
    _t, slot = map_vmalloc(m, VMALLOC, PAGE, pxn=False)
    assert m.plat.read_u64(PhysAddr(slot)) & PXN
    assert hv.state.pages.subcount_of(PAGE >> 12) == 1


def test_leaf_to_kernel_text_keeps_pxn_clear(any_policy: str) -> None:
    """A PTE mapping KCODE may stay executable."""
    m, _hv = booted(any_policy)
    _t, slot = map_vmalloc(m, VMALLOC, TEXT + 0x1000, pxn=False)
    assert not m.plat.read_u64(PhysAddr(slot)) & PXN


def test_table_link_to_wrong_class_is_refused() -> None:
    """hardened: linking a DATA page as a table injects a permission data abort."""
    m, hv = booted("hardened")
    r = m.store(lva(slot_of(m, VMALLOC, 2)), table_desc(DATA))
    assert r.injected is not None and not r.done
    esr, _far = r.injected
    assert esr >> 26 == 0x25 and esr & (1 << 6) and (esr & 0x3C) == 0x0C
    assert hv.refusals[-1].rule == "kpt-L2" and hv.refusals[-1].code is Errno.EPERM


def test_table_link_to_wrong_class_stalls_quirk() -> None:
    """secvma2024 (gap 11): the refused store is not emulated and the CPU spins on it."""
    m, hv = booted("secvma2024")
    r = m.store(lva(slot_of(m, VMALLOC, 2)), table_desc(DATA))
    assert r.stalled and not r.injected
    assert hv.refusals[-1].outcome is Outcome.STALL and len(hv.refusals) == 1


def test_output_address_change_is_refused(any_policy: str) -> None:
    """A live entry may not be redirected without going through zero."""
    m, _hv = booted(any_policy)
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    r = m.store(lva(slot), page_desc(PAGE + 0x1000, pxn=True))
    assert not r.done
    assert m.plat.read_u64(PhysAddr(slot)) & 0xFFFF_FFFF_F000 == PAGE


def test_attribute_update_keeps_output_and_pxn(any_policy: str) -> None:
    """Changing attributes of a live leaf is allowed; PXN stays forced."""
    m, _hv = booted(any_policy)
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    r = m.store(lva(slot), page_desc(PAGE) | (1 << 7))
    assert r.done
    assert m.plat.read_u64(PhysAddr(slot)) & PXN


def test_unlinking_last_reference_releases_table(any_policy: str) -> None:
    """Zeroing the only link to a PTE table releases it: class NONE, zeroed, RW again."""
    m, hv = booted(any_policy)
    table, _slot = map_vmalloc(m, VMALLOC, PAGE)
    r = m.store(lva(slot_of(m, VMALLOC, 2)), 0)
    assert r.done
    assert _usage(hv, table) is Usage.NONE
    assert m.plat.read(PhysAddr(table), 4096) == bytes(4096)
    leaf = hv.state.s2.leaf(table)
    assert leaf is None or kind_of(leaf[2]).writable  # type: ignore[union-attr]
    assert not hv.check_invariants(m.plat)


def test_release_of_table_drops_child_counts() -> None:
    """hardened: releasing a table decrements what its entries referenced (INV-COUNT)."""
    m, hv = booted("hardened")
    map_vmalloc(m, VMALLOC, PAGE)
    assert hv.state.pages.subcount_of(PAGE >> 12) == 1
    m.store(lva(slot_of(m, VMALLOC, 2)), 0)
    assert hv.state.pages.subcount_of(PAGE >> 12) == 0
    assert not hv.check_invariants(m.plat, full=True)


def test_unmapping_empty_entry_counts_nothing() -> None:
    """hardened: a zero store over a zero entry changes no count (gap 17 closed)."""
    m, hv = booted("hardened")
    table, slot = map_vmalloc(m, VMALLOC, PAGE)
    before = hv.state.pages.subcount_of(table >> 12)
    m.store(lva(slot + 8), 0)
    assert hv.state.pages.subcount_of(table >> 12) == before
    assert not hv.check_invariants(m.plat, full=True)


def test_unmapping_last_leaf_zeroes_target_quirk() -> None:
    """secvma2024 (gap 17): the last kernel unmapping of an ordinary page zeroes it."""
    m, _hv = booted("secvma2024")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    m.plat.write(PhysAddr(PAGE), b"secret")
    m.store(lva(slot), 0)
    assert m.plat.read(PhysAddr(PAGE), 6) == bytes(6)


def test_unmapping_last_leaf_keeps_target_contents() -> None:
    """hardened: leaf targets are never zeroed by EL2."""
    m, _hv = booted("hardened")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    m.plat.write(PhysAddr(PAGE), b"secret")
    m.store(lva(slot), 0)
    assert m.plat.read(PhysAddr(PAGE), 6) == b"secret"


@pytest.mark.parametrize("form", FORMS)
def test_every_store_form_is_emulated(form: str) -> None:
    """hardened: each store form writing a legal descriptor (or zero) into a PTE table works."""
    m, hv = booted("hardened")
    _table, slot = map_vmalloc(m, VMALLOC, PAGE)
    target = slot + 16 if form != "dc_zva" else slot
    value = 0 if form in ("stp_xzr", "dc_zva") else page_desc(PAGE + 0x1000, pxn=True)
    width = 8
    r = m.store(lva(target), value, width, form, value2=0)
    assert r.done, (form, r, hv.refusals)
    got = m.plat.read_u64(PhysAddr(target))
    assert got == (value | PXN if value else 0)
    assert not hv.check_invariants(m.plat, full=True)


def test_partial_store_validated_as_whole_descriptor() -> None:
    """hardened (gap 1): a 4-byte store of a descriptor's low half gets PXN in the result."""
    m, hv = booted("hardened")
    _table, slot = map_vmalloc(m, VMALLOC, PAGE)
    r = m.store(lva(slot + 8), page_desc(PAGE + 0x1000) & 0xFFFF_FFFF, 4, "str")
    assert r.done
    assert m.plat.read_u64(PhysAddr(slot + 8)) & PXN
    assert not hv.check_invariants(m.plat)


def test_partial_store_truncates_pxn_quirk() -> None:
    """secvma2024 (gap 1): PXN is OR-ed into the register then truncated: entry stays PXN=0."""
    m, hv = booted("secvma2024")
    _table, slot = map_vmalloc(m, VMALLOC, PAGE)
    r = m.store(lva(slot + 8), page_desc(PAGE + 0x1000) & 0xFFFF_FFFF, 4, "str")
    assert r.done
    assert not m.plat.read_u64(PhysAddr(slot + 8)) & PXN
    assert any(v.inv == "INV-PXN" for v in hv.check_invariants(m.plat))


def test_zero_high_half_clears_pxn_quirk() -> None:
    """secvma2024 (gap 1): a zero store to bytes 4-7 is an 'unmapping' that drops PXN."""
    m, _hv = booted("secvma2024")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    m.store(lva(slot + 4), 0, 4, "str")
    assert not m.plat.read_u64(PhysAddr(slot)) & PXN


def test_zero_high_half_keeps_pxn() -> None:
    """hardened (gap 1): the merged descriptor is validated; PXN is kept."""
    m, _hv = booted("hardened")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    m.store(lva(slot + 4), 0, 4, "str")
    e = m.plat.read_u64(PhysAddr(slot))
    assert e == 0 or e & PXN


def test_stxr_keeps_high_half() -> None:
    """hardened (gap 9): a 64-bit STXR stores all 64 bits (PXN, UXN included)."""
    m, _hv = booted("hardened")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    v = page_desc(PAGE + 0x1000, pxn=True)
    assert m.store(lva(slot + 8), v, 8, "stxr").done
    assert m.plat.read_u64(PhysAddr(slot + 8)) == v
    assert m.cpu.regs[4] == 0  # status: success


def test_stxr_drops_high_half_quirk() -> None:
    """secvma2024 (gap 9): only the low 32 bits of a 64-bit STXR value are stored."""
    m, _hv = booted("secvma2024")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    v = page_desc(PAGE + 0x1000, pxn=True)
    assert m.store(lva(slot + 8), v, 8, "stxr").done
    assert m.plat.read_u64(PhysAddr(slot + 8)) == v & 0xFFFF_FFFF


def test_stp_into_kpt_page_panics_quirk() -> None:
    """secvma2024: an STP into a classified table has no syndrome and panics (spec §3.2)."""
    m, hv = booted("secvma2024")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    m.store(lva(slot + 16), 0, 8, "stp")
    assert m.plat.halted and hv.refusals[-1].outcome is Outcome.PANIC


def test_insn_outside_text_refused() -> None:
    """hardened (gap 10): an ISV=0 store whose PC is not kernel text is not decoded."""
    m, hv = booted("hardened")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    from fakes import INSN_SLOT, enc_store

    m.plat.write(PhysAddr(DATA), enc_store("stp_xzr", 8).to_bytes(4, "little"))
    m.plat.write(PhysAddr(INSN_SLOT), bytes(4))
    m.cpu.regs[1] = lva(slot)
    m.cpu.elr = kva(DATA)
    from secvma.arch.esr import DataAbort
    from secvma.platform import Stage2Abort

    esr = DataAbort(lower_el=True, il=True, isv=False, sas=0, sse=False, srt=0, sf=False,
                    ar=False, vncr=False, fnv=False, ea=False, cm=False, s1ptw=False,
                    wnr=True, dfsc=0x0F).encode()
    m.event(Stage2Abort(esr, lva(slot), PhysAddr(slot), False, True, False, False))
    assert hv.refusals[-1].rule == "kpt-decode"
    assert m.plat.read_u64(PhysAddr(slot)) != 0


def test_block_leaf_pxn_checks_every_page() -> None:
    """hardened: a 2 MiB block is executable only if every page is KCODE."""
    m, _hv = booted("hardened")
    slot = slot_of(m, VMALLOC, 2)
    r = m.store(lva(slot), block_desc(RODATA, pxn=False))
    assert r.done and m.plat.read_u64(PhysAddr(slot)) & PXN
    whole_text = slot_of(m, VMALLOC + 0x20_0000, 2)  # TEXT is one 2 MiB block of KCODE
    r = m.store(lva(whole_text), block_desc(TEXT, pxn=False))
    assert r.done and not m.plat.read_u64(PhysAddr(whole_text)) & PXN


def test_write_to_kernel_text_via_linear_map_is_refused(any_policy: str) -> None:
    """Stage 2 keeps KCODE read-only even where stage 1 maps it writable."""
    m, hv = booted(any_policy)
    r = m.store(lva(TEXT + 0x1000), 0xD503201F)
    assert not r.done
    assert hv.refusals[-1].rule == "s2-write-protected"


def test_claim_splits_block_and_protects_only_that_page() -> None:
    """hardened (gap 4): a claimed page inside a RW block gets its own RO 4 KB entry."""
    m, hv = booted("hardened")
    pool = PT_POOL + 0x5000
    assert m.load(lva(pool + 0x1000))
    r = m.store(lva(slot_of(m, VMALLOC, 2)), table_desc(pool))
    assert r.done
    s2 = hv.state.s2
    assert s2.leaf(pool)[1] == 3 and kind_of(s2.leaf(pool)[2]) is PermKind.RO  # type: ignore[index]
    assert kind_of(s2.leaf(pool + 0x1000)[2]).writable  # type: ignore[index,union-attr]
    assert not hv.check_invariants(m.plat, full=True)


def test_init_pages_classified_and_unmapped(any_policy: str) -> None:
    """INIT text is classified at boot; unmapping it (free_initmem) is accepted."""
    m, hv = booted(any_policy)
    assert _usage(hv, INIT) is Usage.EL1_INIT
    r = m.store(lva(slot_of(m, kva(INIT), 3)), 0)
    assert r.done and not hv.refusals


def test_hardened_init_text_runs_at_el1_until_freed() -> None:
    """hardened: init text is KCODE at stage 2 (read-only, EL1-executable even with FEAT_XNX)
    while the kernel maps it; before, it was KERNEL (XN = 01), which a FEAT_XNX CPU does not
    let EL1 run (the testbed stopped at start_kernel on -cpu max). Unmapping its last PTE
    (free_initmem) makes it ordinary memory: KERNEL, writable, not EL1-executable."""
    m, hv = booted("hardened", "4k")
    assert m.load(kva(INIT))
    hit = hv.state.s2.leaf(INIT)
    assert hit is not None and kind_of(hit[2]) is PermKind.KCODE
    assert not hv.check_invariants(m.plat, full=True)
    r = m.store(lva(slot_of(m, kva(INIT), 3)), 0)
    assert r.done and not hv.refusals
    assert _usage(hv, INIT) is Usage.NONE
    hit = hv.state.s2.leaf(INIT)
    assert hit is None or kind_of(hit[2]) is PermKind.KERNEL
    assert m.store(lva(INIT), 0x1234)  # the page allocator may now write it
    assert not hv.refusals and not hv.check_invariants(m.plat, full=True)


def _mod_page(hv, pa: int) -> None:  # type: ignore[no-untyped-def]
    from secvma.kpcore.hostmem import set_class

    set_class(hv.state, pa >> 12, Usage.EL1_MOD_TXT)


def test_mark_ex_only_on_authenticated_pte() -> None:
    """hardened (gap 2): PXN is cleared only on a PTE that maps the MOD_txt page."""
    from secvma.kpcore.kpt import set_module_exec
    from secvma.kpcore.refusal import HypRefusal

    m, hv = booted("hardened")
    _mod_page(hv, PAGE)
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    set_module_exec(hv.state, m.plat, VMALLOC, PAGE, True)
    assert not m.plat.read_u64(PhysAddr(slot)) & PXN
    _t2, slot2 = map_vmalloc(m, VMALLOC + 0x1000, PAGE + 0x1000)
    with pytest.raises(HypRefusal):
        set_module_exec(hv.state, m.plat, VMALLOC + 0x1000, PAGE, True)
    assert m.plat.read_u64(PhysAddr(slot2)) & PXN


def test_mark_ex_trusts_live_entry_quirk() -> None:
    """secvma2024 (gap 2): PXN is cleared on whatever entry maps the VA, even a data page."""
    from secvma.kpcore.kpt import set_module_exec

    m, hv = booted("secvma2024")
    _t, slot = map_vmalloc(m, VMALLOC, PAGE)
    set_module_exec(hv.state, m.plat, VMALLOC, PAGE + 0x5000, True)
    assert not m.plat.read_u64(PhysAddr(slot)) & PXN
