"""Descriptor encode/decode: round-trips, field positions, helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secvma.arch import descriptors as d
from secvma.platform import PhysAddr

levels_leaf = st.sampled_from([1, 2, 3])


@st.composite
def s1_leaf(draw: st.DrawFn) -> d.S1Leaf:
    level = draw(levels_leaf)
    oa = draw(st.integers(0, (1 << 48) - 1)) & d.oa_mask(level)
    return d.S1Leaf(
        level=level, oa=PhysAddr(oa), attrindx=draw(st.integers(0, 7)),
        ap=draw(st.integers(0, 3)), sh=draw(st.integers(0, 3)), af=draw(st.booleans()),
        ng=draw(st.booleans()), ns=draw(st.booleans()), dbm=draw(st.booleans()),
        contiguous=draw(st.booleans()), pxn=draw(st.booleans()), uxn=draw(st.booleans()),
        sw=draw(st.integers(0, 15)),
    )


@st.composite
def s2_leaf(draw: st.DrawFn) -> d.S2Leaf:
    level = draw(levels_leaf)
    oa = draw(st.integers(0, (1 << 48) - 1)) & d.oa_mask(level)
    return d.S2Leaf(
        level=level, oa=PhysAddr(oa), memattr=draw(st.integers(0, 15)),
        s2ap=draw(st.integers(0, 3)), sh=draw(st.integers(0, 3)), af=draw(st.booleans()),
        xn=draw(st.integers(0, 3)), dbm=draw(st.booleans()), contiguous=draw(st.booleans()),
        sw=draw(st.integers(0, 15)),
    )


table_pa = st.integers(0, (1 << 48) - 1).map(lambda x: PhysAddr(x & d.OA_MASK))


@given(s1_leaf())
def test_s1_leaf_roundtrip(leaf: d.S1Leaf) -> None:
    """A stage-1 block/page survives encode then decode at its level."""
    assert d.decode_s1(leaf.encode(), leaf.level) == leaf


@given(s2_leaf())
def test_s2_leaf_roundtrip(leaf: d.S2Leaf) -> None:
    """A stage-2 block/page survives encode then decode at its level."""
    assert d.decode_s2(leaf.encode(), leaf.level) == leaf


@given(table_pa, st.booleans(), st.booleans(), st.integers(0, 3), st.booleans(),
       st.integers(0, 15), st.integers(0, 2))
def test_s1_table_roundtrip(pa: PhysAddr, pxnt: bool, uxnt: bool, apt: int, nst: bool,
                            sw: int, level: int) -> None:
    """A stage-1 table descriptor survives encode then decode at levels 0-2."""
    t = d.S1Table(pa, pxnt, uxnt, apt, nst, sw)
    assert d.decode_s1(t.encode(), level) == t


@given(table_pa, st.integers(0, 15), st.integers(0, 2))
def test_s2_table_roundtrip(pa: PhysAddr, sw: int, level: int) -> None:
    """A stage-2 table descriptor survives encode then decode at levels 0-2."""
    t = d.S2Table(pa, sw)
    assert d.decode_s2(t.encode(), level) == t



@given(st.integers(0, (1 << 64) - 1), st.integers(0, 3))
def test_s1_decode_encode_keeps_named_bits(raw: int, level: int) -> None:
    """decode then encode reproduces every bit of a valid descriptor that a field names."""
    desc = d.decode_s1(raw, level)
    if isinstance(desc, d.Invalid):
        assert desc.encode() == raw
        return
    out = desc.encode()
    if isinstance(desc, d.S1Table):
        named = d.OA_MASK | 0b11 | (0x1F << 59) | (0xF << d.SW_SHIFT)
    else:
        named = d.oa_mask(level) | 0b11 | 0xFFF & ~0b11 | (0xFF << 51)
    assert out == raw & named


def test_desc_kind_reserved_encodings_are_invalid() -> None:
    """A level-0 block and a level-3 0b01 entry are invalid (4KB granule, no LPA2)."""
    assert d.desc_kind(0x1, 0) is d.DescKind.INVALID
    assert d.desc_kind(0x1, 3) is d.DescKind.INVALID
    assert d.desc_kind(0x3, 3) is d.DescKind.PAGE
    assert d.desc_kind(0x1, 1) is d.DescKind.BLOCK
    assert d.desc_kind(0x3, 2) is d.DescKind.TABLE
    assert d.desc_kind(0x2, 2) is d.DescKind.INVALID


def test_field_positions_match_spec() -> None:
    """Named bits sit where docs/kpcore-spec.md's descriptor conventions put them."""
    assert d.PXN == 1 << 53 and d.UXN == 1 << 54
    assert d.PXNTABLE == 1 << 59 and d.UXNTABLE == 1 << 60
    assert d.APTABLE_NO_EL0 == 1 << 61 and d.APTABLE_RO == 1 << 62
    assert (d.PUD_MARK, d.PMD_MARK, d.PTE_MARK, d.PTE_S2_GUEST) == (
        1 << 58, 1 << 55, 1 << 56, 1 << 57)
    leaf = d.S1Leaf(level=3, oa=PhysAddr(0x4000_1000), ap=d.S1AP.EL1_RO, attrindx=4)
    assert leaf.encode() == 0x4000_1000 | 0b11 | (4 << 2) | (0b10 << 6) | (1 << 10)


def test_linux_kernel_page_decodes() -> None:
    """A typical Linux PAGE_KERNEL_ROX pte (AttrIndx 0 normal, SH inner, AF, nG, UXN) decodes."""
    raw = 0x0040_0000_4081_0F83 | (1 << 7)
    leaf = d.decode_s1(raw, 3)
    assert isinstance(leaf, d.S1Leaf)
    assert leaf.oa == 0x4081_0000 and leaf.ap == 0b10 and leaf.uxn and not leaf.pxn
    assert leaf.sh == d.Shareability.INNER and leaf.af and leaf.ng


def test_geometry_helpers() -> None:
    """Level sizes, index extraction and block legality for the 4KB granule."""
    assert [d.level_size(lvl) for lvl in range(4)] == [1 << 39, 1 << 30, 1 << 21, 1 << 12]
    va = d.va_of_indices((1, 2, 3, 4), high=True)
    assert [d.table_index(va, lvl) for lvl in range(4)] == [1, 2, 3, 4]
    assert va >> 48 == 0xFFFF
    assert [d.is_block_allowed(lvl) for lvl in range(4)] == [False, True, True, False]
    with pytest.raises(ValueError):
        d.level_size(4)


def test_encode_rejects_misaligned_block() -> None:
    """A 2 MiB block whose output address is not 2 MiB aligned is refused."""
    with pytest.raises(ValueError):
        d.S2Leaf(level=2, oa=PhysAddr(0x4000_1000)).encode()
    with pytest.raises(ValueError):
        d.S1Leaf(level=0, oa=PhysAddr(0)).encode()


@pytest.mark.parametrize("perm", list(d.S2Perm))
def test_s2perm_bits_roundtrip(perm: d.S2Perm) -> None:
    """Every S2Perm maps to S2AP/XN bits and back."""
    raw = d.encode_s2_leaf(PhysAddr(0x4000_0000), 2, perm)
    assert d.s2perm_of(raw) is perm
    assert d.s2perm_of(d.with_s2perm(raw | d.S2_XXN, perm)) is perm
    leaf = d.decode_s2(raw, 2)
    assert isinstance(leaf, d.S2Leaf) and leaf.perm is perm and leaf.af


def test_s2_read_only_matches_spec_value() -> None:
    """S2AP 01 is read-only and 11 read/write (docs/kpcore-spec.md descriptor conventions)."""
    assert d.s2perm_bits(d.S2Perm.R) & (0b11 << 6) == 0b01 << 6
    assert d.s2perm_bits(d.S2Perm.RW) & (0b11 << 6) == 0b11 << 6
    assert d.S2MemAttr.NORMAL_WB == 0b1111 and d.S2MemAttr.DEVICE_nGnRE == 0b0001


@pytest.mark.parametrize(
    ("xn", "el0", "el1"), [(0b00, True, True), (0b01, True, False), (0b10, False, False),
                           (0b11, False, True)])
def test_s2_exec_feat_xnx(xn: int, el0: bool, el1: bool) -> None:
    """FEAT_XNX XN[1:0]: 00 both, 01 EL0 only (PXN-like), 10 none, 11 EL1 only (UXN-like)."""
    assert d.s2_exec(xn, el0=True, feat_xnx=True) is el0
    assert d.s2_exec(xn, el0=False, feat_xnx=True) is el1


def test_s2_exec_armv80_ignores_bit53() -> None:
    """Without FEAT_XNX only XN[1] (bit 54) matters and applies to both ELs."""
    for xn in range(4):
        for el0 in (True, False):
            assert d.s2_exec(xn, el0=el0, feat_xnx=False) is (xn < 2)
