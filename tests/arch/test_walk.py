"""Translation walker: generic walk/visitors, stage 1, stage 2, and both, on bytearray tables."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secvma.arch import descriptors as d
from secvma.arch.esr import FaultKind, InstructionAbort, decode_esr
from secvma.arch.walk import (
    AccessType,
    CpuFeatures,
    Fault,
    Perm,
    Translation,
    UnsupportedConfig,
    Visit,
    VisitCtx,
    WalkAction,
    get_leaf,
    hpfar_of,
    translate,
    translate_stage2,
    walk,
)
from secvma.platform import PhysAddr

RAM = 0x4000_0000
LOAD, STORE, FETCH = AccessType.LOAD, AccessType.STORE, AccessType.FETCH
SCTLR_M = 1
SCTLR_WXN = 1 << 19
TCR_48 = 16 | (16 << 16) | (0b10 << 30) | (0b101 << 32)  # T0SZ=T1SZ=16, TG1=4K, IPS=48
VTCR_32 = 32 | (1 << 6) | (0b101 << 16)  # T0SZ=32, SL0=1 (start L1), PS=48 (capped to 44)


class Mem:
    """1 MiB of 'RAM' at 0x4000_0000 holding table pages, with a bump allocator."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.next = RAM

    def table(self, pages: int = 1) -> PhysAddr:
        pa = self.next
        self.next += 4096 * pages
        return PhysAddr(pa)

    def set(self, table: int, index: int, desc: int) -> None:
        off = table - RAM + 8 * index
        self.buf[off : off + 8] = desc.to_bytes(8, "little")

    def read_u64(self, pa: PhysAddr) -> int:
        off = pa - RAM
        assert 0 <= off < len(self.buf), f"walk read outside the test RAM: {pa:#x}"
        return int.from_bytes(self.buf[off : off + 8], "little")


def page(oa: int, **kw: object) -> int:
    return d.S1Leaf(level=3, oa=PhysAddr(oa), **kw).encode()  # type: ignore[arg-type]


def tbl(pa: int, **kw: object) -> int:
    return d.S1Table(PhysAddr(pa), **kw).encode()  # type: ignore[arg-type]


VA = d.va_of_indices((1, 2, 3, 4)) | 0x123


def s1_tree(mem: Mem, leaf: int, *, high: bool = False, l0: int = 0, l1: int = 0,
            l2: int = 0) -> tuple[PhysAddr, int]:
    """A 4-level tree mapping VA (or its TTBR1 twin) through `leaf`; extra bits on tables."""
    t0, t1, t2, t3 = (mem.table() for _ in range(4))
    mem.set(t0, 1, tbl(t1) | l0)
    mem.set(t1, 2, tbl(t2) | l1)
    mem.set(t2, 3, tbl(t3) | l2)
    mem.set(t3, 4, leaf)
    va = d.va_of_indices((1, 2, 3, 4), high=high) | 0x123
    return t0, va


def s1(mem: Mem, va: int, access: AccessType, el: int, *, root: int, sctlr: int = SCTLR_M,
       tcr: int = TCR_48, cpu: CpuFeatures | None = None) -> Translation | Fault:
    kw = {} if cpu is None else {"cpu": cpu}
    return translate(mem.read_u64, va, access, el, sctlr=sctlr, tcr=tcr, ttbr0=root,
                     ttbr1=root, **kw)  # type: ignore[arg-type]


def fault_of(r: Translation | Fault) -> tuple[FaultKind, int, int, bool]:
    assert isinstance(r, Fault), r
    return (r.kind, r.level, r.stage, r.s1ptw)


# --- generic walker ------------------------------------------------------------------------


def _collect(out: list[tuple[str, int, int]], ctx: VisitCtx) -> None:
    out.append((ctx.kind.value, ctx.level, ctx.addr))


def test_walk_visits_leaves_in_order() -> None:
    """A range walk reports each leaf once, in address order, with the VA it covers."""
    mem = Mem()
    t0, t1, t2, t3 = (mem.table() for _ in range(4))
    mem.set(t0, 0, tbl(t1))
    mem.set(t1, 0, tbl(t2))
    mem.set(t1, 1, d.S1Leaf(level=1, oa=PhysAddr(1 << 30)).encode())
    mem.set(t2, 0, tbl(t3))
    mem.set(t2, 1, d.S1Leaf(level=2, oa=PhysAddr(0x20_0000)).encode())
    for i in range(3):
        mem.set(t3, i, page(0x1000 * i))
    out: list[tuple[str, int, int]] = []
    walk(mem.read_u64, t0, 0, 2 << 30, functools.partial(_collect, out))
    assert out == [("page", 3, 0), ("page", 3, 0x1000), ("page", 3, 0x2000),
                   ("block", 2, 0x20_0000), ("block", 1, 1 << 30)]


def test_walk_table_pre_post_skip_and_stop() -> None:
    """TABLE_PRE comes before and TABLE_POST after a subtree; SKIP prunes it; STOP ends the walk."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x5000))
    out: list[tuple[str, int, int]] = []

    def visitor(ctx: VisitCtx) -> WalkAction:
        out.append((ctx.kind.value, ctx.level, ctx.addr))
        return WalkAction.SKIP if ctx.level == 1 and ctx.kind is d.DescKind.TABLE else \
            WalkAction.CONTINUE

    walk(mem.read_u64, root, va, 1, visitor, visit=Visit.TABLE_PRE | Visit.TABLE_POST)
    base = va & ~((1 << 39) - 1)
    assert out == [("table", 0, base), ("table", 1, va & ~((1 << 30) - 1)),
                   ("table", 1, va & ~((1 << 30) - 1)), ("table", 0, base)]
    stopped = walk(mem.read_u64, root, 0, 1 << 48, lambda ctx: WalkAction.STOP,
                   visit=Visit.ALL)
    assert stopped is WalkAction.STOP


def test_get_leaf_reports_invalid_entry_and_high_va() -> None:
    """get_leaf ends on the first invalid entry; TTBR1 VAs keep their high bits in ctx.addr."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x7000), high=True)
    leaf = get_leaf(mem.read_u64, root, va)
    assert leaf.kind is d.DescKind.PAGE and leaf.addr == va & ~0xFFF and leaf.level == 3
    miss = get_leaf(mem.read_u64, root, va + (1 << 30))
    assert miss.kind is d.DescKind.INVALID and miss.level == 1


# --- stage 1 -------------------------------------------------------------------------------


def test_s1_page_translates() -> None:
    """A valid 4-level page mapping gives PA = OA | offset, and RW (no X: PXN) at EL1."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x8765_4000, pxn=True, uxn=True))
    r = s1(mem, va, STORE, 1, root=root)
    assert isinstance(r, Translation)
    assert r.pa == 0x8765_4123 and r.perms == Perm.R | Perm.W and r.s1 and r.s1.level == 3


@pytest.mark.parametrize("level", [1, 2])
def test_s1_block_translates(level: int) -> None:
    """1 GiB and 2 MiB blocks keep the low VA bits."""
    mem = Mem()
    t0, t1, t2 = mem.table(), mem.table(), mem.table()
    mem.set(t0, 1, tbl(t1))
    oa = 3 << 30
    if level == 1:
        mem.set(t1, 2, d.S1Leaf(level=1, oa=PhysAddr(oa)).encode())
    else:
        mem.set(t1, 2, tbl(t2))
        mem.set(t2, 3, d.S1Leaf(level=2, oa=PhysAddr(oa)).encode())
    r = s1(mem, VA, LOAD, 1, root=t0)
    assert isinstance(r, Translation)
    assert r.pa == oa | (VA & (d.level_size(level) - 1))


@pytest.mark.parametrize("missing", [0, 1, 2, 3])
def test_s1_translation_fault_level(missing: int) -> None:
    """An invalid entry at level n is a stage-1 translation fault at level n."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x1000))
    t = root
    for level in range(missing):
        t = PhysAddr(mem.read_u64(PhysAddr(t + 8 * d.table_index(va, level))) & d.OA_MASK)
    mem.set(t, d.table_index(va, missing), 0)
    assert fault_of(s1(mem, va, LOAD, 1, root=root)) == (FaultKind.TRANSLATION, missing, 1, False)


def test_s1_reserved_encodings_fault() -> None:
    """A level-3 0b01 entry and a level-0 block are translation faults at their level."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x1000) & ~0b10)
    assert fault_of(s1(mem, va, LOAD, 1, root=root)) == (FaultKind.TRANSLATION, 3, 1, False)
    mem.set(root, 1, 0x1 | (1 << 10))
    assert fault_of(s1(mem, va, LOAD, 1, root=root)) == (FaultKind.TRANSLATION, 0, 1, False)


def test_s1_access_flag_fault_before_permission() -> None:
    """AF=0 is an access-flag fault at the leaf level even when permission would also fail."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x1000, af=False, ap=d.S1AP.EL1_RO))
    assert fault_of(s1(mem, va, STORE, 1, root=root)) == (FaultKind.ACCESS_FLAG, 3, 1, False)


# AP[2:1] -> (EL1 R, EL1 W, EL0 R, EL0 W); Arm ARM D8.4.1.2 data access permissions.
AP_TABLE = {0b00: (1, 1, 0, 0), 0b01: (1, 1, 1, 1), 0b10: (1, 0, 0, 0), 0b11: (1, 0, 1, 0)}


@pytest.mark.parametrize("ap", [0, 1, 2, 3])
@pytest.mark.parametrize("pxn", [False, True])
@pytest.mark.parametrize("uxn", [False, True])
@pytest.mark.parametrize("el", [0, 1])
@pytest.mark.parametrize("access", [LOAD, STORE, FETCH])
def test_s1_permission_matrix(ap: int, pxn: bool, uxn: bool, el: int,
                              access: AccessType) -> None:
    """AP/PXN/UXN grant exactly the Arm ARM's rights; EL1 never executes EL0-writable pages."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x1000, ap=ap, pxn=pxn, uxn=uxn))
    r1, w1, r0, w0 = AP_TABLE[ap]
    x = (not uxn) if el == 0 else (not pxn and ap != 0b01)
    allowed = {LOAD: (r0 if el == 0 else r1), STORE: (w0 if el == 0 else w1), FETCH: x}[access]
    r = s1(mem, va, access, el, root=root)
    if allowed:
        assert isinstance(r, Translation)
    else:
        assert fault_of(r) == (FaultKind.PERMISSION, 3, 1, False)


@pytest.mark.parametrize(
    ("bits", "el", "access", "ok"),
    [(d.APTABLE_RO, 1, STORE, False), (d.APTABLE_RO, 1, LOAD, True),
     (d.APTABLE_NO_EL0, 0, LOAD, False), (d.APTABLE_NO_EL0, 1, STORE, True),
     (d.PXNTABLE, 1, FETCH, False), (d.PXNTABLE, 0, FETCH, True),
     (d.UXNTABLE, 0, FETCH, False), (d.UXNTABLE, 1, FETCH, True)])
def test_s1_hierarchical_attributes(bits: int, el: int, access: AccessType, ok: bool) -> None:
    """APTable/PXNTable/UXNTable on a level-1 table restrict the leaf (AP=01 leaf: EL0 RW)."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x1000, ap=d.S1AP.EL1_RW_EL0_RW if el == 0 else 0), l1=bits)
    r = s1(mem, va, access, el, root=root)
    assert isinstance(r, Translation) is ok, r


def test_s1_wxn_removes_execute() -> None:
    """SCTLR.WXN makes a writable page non-executable; a read-only one stays executable."""
    mem = Mem()
    root, va = s1_tree(mem, page(0x1000))
    assert isinstance(s1(mem, va, FETCH, 1, root=root), Translation)
    wxn = s1(mem, va, FETCH, 1, root=root, sctlr=SCTLR_M | SCTLR_WXN)
    assert fault_of(wxn) == (FaultKind.PERMISSION, 3, 1, False)
    root2, _ = s1_tree(mem, page(0x1000, ap=d.S1AP.EL1_RO))
    assert isinstance(s1(mem, va, FETCH, 1, root=root2, sctlr=SCTLR_M | SCTLR_WXN), Translation)


def test_s1_ttbr_selection_and_range() -> None:
    """VA[55] picks TTBR1; VAs outside both ranges, or under EPDn, fault at level 0."""
    mem = Mem()
    low, va_lo = s1_tree(mem, page(0x1000))
    high, va_hi = s1_tree(mem, page(0x2000), high=True)
    kw = {"sctlr": SCTLR_M, "tcr": TCR_48, "ttbr0": low, "ttbr1": high}
    r = translate(mem.read_u64, va_hi, LOAD, 1, **kw)
    assert isinstance(r, Translation) and r.pa == 0x2123
    r = translate(mem.read_u64, va_lo, LOAD, 1, **kw)
    assert isinstance(r, Translation) and r.pa == 0x1123
    gap = translate(mem.read_u64, va_lo | (1 << 50), LOAD, 1, **kw)
    assert fault_of(gap) == (FaultKind.TRANSLATION, 0, 1, False)
    tagged = va_lo | (0x5A << 56)
    assert fault_of(translate(mem.read_u64, tagged, LOAD, 1, **kw))[0] is FaultKind.TRANSLATION
    kw["tcr"] = TCR_48 | (1 << 37)  # TBI0
    r = translate(mem.read_u64, tagged, LOAD, 1, **kw)
    assert isinstance(r, Translation) and r.pa == 0x1123
    kw["tcr"] = TCR_48 | (1 << 23)  # EPD1
    epd = translate(mem.read_u64, va_hi, LOAD, 1, **kw)
    assert fault_of(epd) == (FaultKind.TRANSLATION, 0, 1, False)


@pytest.mark.parametrize(("tsz", "start"), [(25, 1), (34, 2), (30, 1), (20, 0)])
def test_s1_txsz_start_level(tsz: int, start: int) -> None:
    """T0SZ sets the input size and the start level (39-bit VA starts at level 1)."""
    mem = Mem()
    inputsize = 64 - tsz
    root = mem.table()
    t = root
    va = (1 << (inputsize - 1)) | 0x5123
    for level in range(start, 3):
        nxt = mem.table()
        idx = (va >> d.level_shift(level)) & ((1 << min(9, inputsize - d.level_shift(level))) - 1)
        mem.set(t, idx, tbl(nxt))
        t = nxt
    mem.set(t, d.table_index(va, 3), page(0x9000))
    tcr = tsz | (16 << 16) | (0b10 << 30) | (0b101 << 32)
    r = s1(mem, va, LOAD, 1, root=root, tcr=tcr)
    assert isinstance(r, Translation) and r.pa == 0x9123 and r.s1 is not None
    assert fault_of(s1(mem, va | (1 << inputsize), LOAD, 1, root=root, tcr=tcr))[:2] == (
        FaultKind.TRANSLATION, 0)


def test_s1_address_size_faults() -> None:
    """TTBR, table and output addresses above min(IPS, PARange) are address-size faults."""
    mem = Mem()
    root, va = s1_tree(mem, page(1 << 44))
    assert fault_of(s1(mem, va, LOAD, 1, root=root)) == (FaultKind.ADDRESS_SIZE, 3, 1, False)
    big = CpuFeatures(pa_bits=48)
    assert isinstance(s1(mem, va, LOAD, 1, root=root, cpu=big), Translation)
    ips32 = TCR_48 & ~(0b111 << 32)
    root2, _ = s1_tree(mem, page(1 << 33))
    assert isinstance(s1(mem, va, LOAD, 1, root=root2), Translation)
    assert fault_of(s1(mem, va, LOAD, 1, root=root2, tcr=ips32)) == (
        FaultKind.ADDRESS_SIZE, 3, 1, False)
    mem.set(root2, 1, tbl(1 << 45))
    assert fault_of(s1(mem, va, LOAD, 1, root=root2)) == (FaultKind.ADDRESS_SIZE, 0, 1, False)
    assert fault_of(s1(mem, va, LOAD, 1, root=root2 | (1 << 46))) == (
        FaultKind.ADDRESS_SIZE, 0, 1, False)


def test_s1_mmu_off_is_flat() -> None:
    """SCTLR.M=0: VA is the IPA, all rights; beyond PARange an address-size fault."""
    mem = Mem()
    r = s1(mem, 0x4000_1234, FETCH, 0, root=0, sctlr=0)
    assert isinstance(r, Translation) and r.pa == 0x4000_1234
    assert r.perms == Perm.R | Perm.W | Perm.X
    assert fault_of(s1(mem, 1 << 44, LOAD, 1, root=0, sctlr=0)) == (
        FaultKind.ADDRESS_SIZE, 0, 1, False)


def test_unsupported_granule_raises() -> None:
    """A 64KB TG0 is refused with UnsupportedConfig rather than mistranslated."""
    mem = Mem()
    with pytest.raises(UnsupportedConfig):
        s1(mem, 0x1000, LOAD, 1, root=RAM, tcr=TCR_48 | (0b01 << 14))


@given(st.integers(0, 3), st.booleans(), st.booleans(), st.integers(0, 3), st.booleans(),
       st.booleans(), st.booleans())
def test_s1_perms_monotone_under_table_restrictions(ap: int, pxn: bool, uxn: bool, apt: int,
                                                    pxnt: bool, uxnt: bool, wxn: bool) -> None:
    """Hierarchical table bits and WXN only remove rights (APTable may lift the implicit PXN)."""
    from secvma.arch.walk import s1_perms

    desc = page(0x1000, ap=ap, pxn=pxn, uxn=uxn)
    for el in (0, 1):
        free = s1_perms(desc, el)
        limited = s1_perms(desc, el, aptable=apt, pxntable=pxnt, uxntable=uxnt, wxn=wxn)
        assert limited & free & (Perm.R | Perm.W) == limited & (Perm.R | Perm.W)
        if not apt:  # APTable can *grant* EL1 execute: once EL0 cannot write, PXN-by-AP lifts
            assert limited & free == limited


# --- stage 2 -------------------------------------------------------------------------------


def s2_tree(mem: Mem, ipa: int, leaf: int, level: int = 3) -> PhysAddr:
    """Stage-2 tables (VTCR_32: start level 1, 4 entries) mapping `ipa` through `leaf`."""
    root = mem.table()
    t = root
    for lvl in range(1, level):
        nxt = mem.table()
        mem.set(t, d.table_index(ipa, lvl) if lvl > 1 else ipa >> 30, tbl(nxt))
        t = nxt
    mem.set(t, d.table_index(ipa, level) if level > 1 else ipa >> 30, leaf)
    return root


def s2leaf(oa: int, perm: d.S2Perm, level: int = 3, **kw: object) -> int:
    raw = d.encode_s2_leaf(PhysAddr(oa), level, perm)
    if kw.get("af") is False:
        raw &= ~d.AF
    return raw


@pytest.mark.parametrize("perm", list(d.S2Perm))
@pytest.mark.parametrize("access", [LOAD, STORE, FETCH])
def test_s2_permissions(perm: d.S2Perm, access: AccessType) -> None:
    """S2AP grants read/write and XN execute, exactly as S2Perm says."""
    mem = Mem()
    ipa = 0x8000_3456
    root = s2_tree(mem, ipa, s2leaf(0x1_2345_6000, perm))
    r = translate_stage2(mem.read_u64, ipa, access, 1, vtcr=VTCR_32, vttbr=root)
    ok = {LOAD: perm.readable, STORE: perm.writable, FETCH: perm.executable}[access]
    if ok:
        assert not isinstance(r, Fault) and d.leaf_output(r.desc, r.level, ipa) == 0x1_2345_6456
    else:
        assert isinstance(r, Fault) and (r.kind, r.level, r.stage) == (FaultKind.PERMISSION, 3, 2)


@pytest.mark.parametrize("xn", [0, 1, 2, 3])
@pytest.mark.parametrize("el", [0, 1])
@pytest.mark.parametrize("xnx", [False, True])
def test_s2_xn_feat_xnx_parameter(xn: int, el: int, xnx: bool) -> None:
    """Stage-2 XN[1:0] follows FEAT_XNX when the CPU has it, else only bit 54 counts."""
    mem = Mem()
    leaf = d.S2Leaf(level=3, oa=PhysAddr(0x5000), xn=xn).encode()
    root = s2_tree(mem, 0x5000, leaf)
    r = translate_stage2(mem.read_u64, 0x5000, FETCH, el, vtcr=VTCR_32, vttbr=root,
                         cpu=CpuFeatures(feat_xnx=xnx))
    expected = d.s2_exec(xn, el0=el == 0, feat_xnx=xnx)
    assert (not isinstance(r, Fault)) is expected
    if xnx:
        assert expected is {0: True, 1: el == 0, 2: False, 3: el == 1}[xn]


@pytest.mark.parametrize("missing", [1, 2, 3])
def test_s2_translation_fault_level(missing: int) -> None:
    """An unmapped IPA is a stage-2 translation fault at the level of the invalid entry."""
    mem = Mem()
    ipa = 0x8020_1000
    root = s2_tree(mem, ipa, s2leaf(0x1000, d.S2Perm.RW))
    r = translate_stage2(mem.read_u64, ipa + (d.level_size(missing) * 1), LOAD, 1,
                         vtcr=VTCR_32, vttbr=root)
    assert isinstance(r, Fault) and (r.kind, r.level, r.stage) == (
        FaultKind.TRANSLATION, missing, 2)
    assert r.ipa == ipa + d.level_size(missing)


def test_s2_block_af_and_address_size() -> None:
    """Stage-2 2 MiB block maps; AF=0 and an OA above PS/PARange fault at the block level."""
    mem = Mem()
    root = s2_tree(mem, 0x4000_0000, s2leaf(0x8000_0000, d.S2Perm.RWX, 2), level=2)
    r = translate_stage2(mem.read_u64, 0x4001_2345, STORE, 1, vtcr=VTCR_32, vttbr=root)
    assert not isinstance(r, Fault) and r.level == 2
    root = s2_tree(mem, 0x4000_0000, s2leaf(0x8000_0000, d.S2Perm.RWX, 2, af=False), level=2)
    r = translate_stage2(mem.read_u64, 0x4001_2345, LOAD, 1, vtcr=VTCR_32, vttbr=root)
    assert isinstance(r, Fault) and (r.kind, r.level) == (FaultKind.ACCESS_FLAG, 2)
    root = s2_tree(mem, 0x4000_0000, s2leaf(0x1_0000_0000, d.S2Perm.RW, 2), level=2)
    ps32 = VTCR_32 & ~(0b111 << 16)
    r = translate_stage2(mem.read_u64, 0x4000_0000, LOAD, 1, vtcr=ps32, vttbr=root)
    assert isinstance(r, Fault) and (r.kind, r.level) == (FaultKind.ADDRESS_SIZE, 2)


def test_s2_input_range_and_bad_sl0() -> None:
    """An IPA beyond T0SZ, SL0=3, or an SL0 inconsistent with T0SZ fault at level 0."""
    mem = Mem()
    root = s2_tree(mem, 0x4000_0000, s2leaf(0x4000_0000, d.S2Perm.RW))
    for vtcr, ipa in [(VTCR_32, 1 << 32), (VTCR_32 | (3 << 6), 0x4000_0000),
                      (16 | (0b101 << 16), 0x4000_0000)]:
        r = translate_stage2(mem.read_u64, ipa, LOAD, 1, vtcr=vtcr, vttbr=root)
        assert isinstance(r, Fault) and (r.kind, r.level) == (FaultKind.TRANSLATION, 0), vtcr


def test_s2_concatenated_start_tables() -> None:
    """T0SZ=24 with SL0=1 uses two concatenated level-1 tables (1024 entries)."""
    mem = Mem()
    root = mem.table(2)
    ipa = (600 << 30) | 0x1234
    mem.set(root, 600, s2leaf(0x7 << 30, d.S2Perm.RW, 1))
    vtcr = 24 | (1 << 6) | (0b101 << 16)
    r = translate_stage2(mem.read_u64, ipa, LOAD, 1, vtcr=vtcr, vttbr=root)
    assert not isinstance(r, Fault) and d.leaf_output(r.desc, 1, ipa) == (0x7 << 30) | 0x1234


# --- both stages ---------------------------------------------------------------------------


def identity_s2(mem: Mem, *, except_page: int | None = None,
                perm_of: dict[int, d.S2Perm] | None = None) -> PhysAddr:
    """Stage 2 mapping the 1 GiB at 0x4000_0000 and 0-1 GiB page by page (first 512 pages)."""
    root, l2 = mem.table(), mem.table()
    mem.set(root, 1, tbl(l2))
    l3 = mem.table()
    mem.set(l2, 0, tbl(l3))
    for i in range(512):
        pa = RAM + 0x1000 * i
        if pa == except_page:
            continue
        perm = (perm_of or {}).get(pa, d.S2Perm.RWX)
        mem.set(l3, i, d.encode_s2_leaf(PhysAddr(pa), 3, perm))
    for i in range(1, 512):
        mem.set(l2, i, d.encode_s2_leaf(PhysAddr(RAM + (i << 21)), 2, d.S2Perm.RWX))
    return root


def both(mem: Mem, va: int, access: AccessType, el: int, root: int, vttbr: int
         ) -> Translation | Fault:
    return translate(mem.read_u64, va, access, el, sctlr=SCTLR_M, tcr=TCR_48, ttbr0=root,
                     ttbr1=root, vtcr=VTCR_32, vttbr=vttbr, stage2_enabled=True)


def test_both_stages_translate_and_intersect_perms() -> None:
    """Stage 1 then stage 2: PA from both, rights are the intersection."""
    mem = Mem()
    root, va = s1_tree(mem, page(RAM + 0x30_0000))
    vttbr = identity_s2(mem)
    r = both(mem, va, STORE, 1, root, vttbr)
    assert isinstance(r, Translation) and r.pa == RAM + 0x30_0123 and r.ipa == r.pa
    assert r.s2 is not None and r.s2.level == 2 and r.perms == Perm.R | Perm.W | Perm.X


def test_both_stages_s1ptw_translation_fault() -> None:
    """A stage-1 table page unmapped at stage 2 is a stage-2 fault with S1PTW and its IPA."""
    mem = Mem()
    root, va = s1_tree(mem, page(RAM + 0x30_0000))
    l2_table = mem.read_u64(PhysAddr(root + 8)) & d.OA_MASK  # the level-1 table page
    vttbr = identity_s2(mem, except_page=l2_table)
    r = both(mem, va, FETCH, 0, root, vttbr)
    assert fault_of(r) == (FaultKind.TRANSLATION, 3, 2, True)
    assert isinstance(r, Fault) and r.ipa == l2_table + 8 * 2 and r.va == va
    esr = decode_esr(r.esr(target_el=2))
    assert isinstance(esr, InstructionAbort) and esr.s1ptw and esr.lower_el
    assert esr.fault.kind is FaultKind.TRANSLATION and esr.fault.level == 3


def test_both_stages_s1ptw_needs_only_read() -> None:
    """A read-only table page is walkable; a no-access one is a S1PTW permission fault."""
    mem = Mem()
    root, va = s1_tree(mem, page(RAM + 0x30_0000))
    vttbr = identity_s2(mem, perm_of={root: d.S2Perm.R})
    assert isinstance(both(mem, va, STORE, 1, root, vttbr), Translation)
    vttbr = identity_s2(mem, perm_of={root: d.S2Perm.NONE})
    assert fault_of(both(mem, va, LOAD, 1, root, vttbr)) == (FaultKind.PERMISSION, 3, 2, True)


def test_both_stages_write_to_protected_page_esr() -> None:
    """A store to a stage-2 read-only page reports EC 0x24, WnR, permission level 3, HPFAR."""
    mem = Mem()
    target = RAM + 0x8000
    root, va = s1_tree(mem, page(target))
    vttbr = identity_s2(mem, perm_of={target: d.S2Perm.R})
    r = both(mem, va, STORE, 1, root, vttbr)
    assert fault_of(r) == (FaultKind.PERMISSION, 3, 2, False)
    assert isinstance(r, Fault)
    assert r.esr(target_el=2) == 0x9200004F and hpfar_of(r) == (target >> 12) << 4
    assert r.ipa == target | 0x123
