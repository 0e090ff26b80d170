"""VMSAv8-64 translation-table descriptors, 4 KB granule, 48-bit input/output addresses.

Arm ARM (DDI 0487) D8.3 "Translation table descriptor formats" (D5.3 in issues before I.a):

    stage 1 table  (L0-L2, bits[1:0]=0b11): NSTable 63, APTable 62:61, UXNTable 60, PXNTable 59,
                   IGNORED 58:52 (SECvma/Linux software bits live here), next-level table 47:12
    stage 1 block  (L1-L2, bits[1:0]=0b01) / page (L3, bits[1:0]=0b11):
                   software 58:55, UXN 54, PXN 53, Contiguous 52, DBM 51, OA 47:n,
                   nG 11, AF 10, SH 9:8, AP[2:1] 7:6, NS 5, AttrIndx 4:2
    stage 2 table  next-level table 47:12 (no hierarchical attributes: bits 63:59 RES0/IGNORED)
    stage 2 block/page: software 58:55, XN[1:0] 54:53 (FEAT_XNX; XN only at bit 54 on v8.0),
                   Contiguous 52, DBM 51, OA 47:n, AF 10, SH 9:8, S2AP 7:6, MemAttr 5:2

Level numbering is the Arm ARM's (0..3, leaf pages at 3). A block is allowed at levels 1 and 2
only for the 4 KB granule without FEAT_LPA2; bits[1:0]=0b01 at level 0, and 0b01 at level 3, are
invalid encodings that translate as a Translation fault.

SECvma software bits (stage 2, `asm/pgtable-hwdef.h`): PUD_MARK bit 58, PMD_MARK bit 55,
PTE_MARK bit 56, and SeKVM's PTE_S2_GUEST bit 57.

Decoding is lossy only for RES0/IGNORED bits outside the named fields (they are dropped);
`encode(decode(x)) == x` for every x that uses named fields only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from secvma.platform import PhysAddr, VirtAddr

# --- geometry (Arm ARM D8.2 "Translation process", 4KB granule) ---------------------------

GRANULE_SHIFT = 12
GRANULE_SIZE = 1 << GRANULE_SHIFT
ENTRIES_PER_TABLE = 512
BITS_PER_LEVEL = 9
MAX_LEVEL = 3
OA_BITS = 48

OA_MASK = ((1 << OA_BITS) - 1) & ~(GRANULE_SIZE - 1)
"""Bits 47:12: next-level table address or page output address."""


def level_shift(level: int) -> int:
    """Number of input-address bits below the ones indexed at `level` (L3: 12 ... L0: 39)."""
    _check_level(level)
    return GRANULE_SHIFT + BITS_PER_LEVEL * (MAX_LEVEL - level)


def level_size(level: int) -> int:
    """Bytes mapped by one entry at `level`: 512 GiB, 1 GiB, 2 MiB, 4 KiB for L0..L3."""
    return 1 << level_shift(level)


def table_index(va: int, level: int) -> int:
    """Index of the entry for `va` in a (non-concatenated) table at `level` (9 bits)."""
    return (va >> level_shift(level)) & (ENTRIES_PER_TABLE - 1)


def is_block_allowed(level: int) -> bool:
    """Whether a block descriptor is legal at `level` (4KB granule, no FEAT_LPA2: L1, L2)."""
    _check_level(level)
    return level in (1, 2)


def oa_mask(level: int) -> int:
    """Output-address bits of a leaf at `level`: 47:30 (L1 block), 47:21 (L2), 47:12 (L3)."""
    return ((1 << OA_BITS) - 1) & ~(level_size(level) - 1)


def _check_level(level: int) -> None:
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"translation level {level} outside 0..3")


def _bit(value: int, n: int) -> bool:
    return bool((value >> n) & 1)


def _field(value: int, shift: int, width: int) -> int:
    return (value >> shift) & ((1 << width) - 1)


def _check_width(name: str, value: int, width: int) -> None:
    if not 0 <= value < (1 << width):
        raise ValueError(f"{name}={value:#x} does not fit in {width} bits")


# --- field constants -----------------------------------------------------------------------

DESC_VALID = 1 << 0
DESC_TABLE = 1 << 1
"""bit 1: table (L0-L2) or page (L3) when set, block (L1-L2) when clear."""

ATTRINDX_SHIFT = 2  # stage 1, 3 bits
MEMATTR_SHIFT = 2  # stage 2, 4 bits
NS = 1 << 5
AP_SHIFT = 6  # AP[2:1] (stage 1) and S2AP[1:0] (stage 2), bits 7:6
AP_RO = 1 << 7  # AP[2]: read-only
AP_EL0 = 1 << 6  # AP[1]: EL0 accessible
S2AP_R = 1 << 6  # S2AP[0]: read
S2AP_W = 1 << 7  # S2AP[1]: write
SH_SHIFT = 8
AF = 1 << 10
NG = 1 << 11
DBM = 1 << 51
CONTIGUOUS = 1 << 52
PXN = 1 << 53
UXN = 1 << 54
S2_XN = 1 << 54  # stage 2 XN[1] (the only XN bit without FEAT_XNX)
S2_XXN = 1 << 53  # stage 2 XN[0] with FEAT_XNX
S2_XN_SHIFT = 53
SW_SHIFT = 55  # software-defined bits 58:55
SW_WIDTH = 4

PXNTABLE = 1 << 59
UXNTABLE = 1 << 60
APTABLE_SHIFT = 61
APTABLE_NO_EL0 = 1 << 61  # APTable[0]
APTABLE_RO = 1 << 62  # APTable[1]
NSTABLE = 1 << 63

PMD_MARK = 1 << 55
PTE_MARK = 1 << 56
PTE_S2_GUEST = 1 << 57
PUD_MARK = 1 << 58


class Shareability(enum.IntEnum):
    """SH[1:0] (Arm ARM D8.6.2): 0b01 is reserved (CONSTRAINED UNPREDICTABLE)."""

    NON = 0b00
    RESERVED = 0b01
    OUTER = 0b10
    INNER = 0b11


class S2MemAttr(enum.IntEnum):
    """Stage-2 MemAttr[3:0] (Arm ARM D8.6.5, FWB off): the values SECvma uses."""

    DEVICE_nGnRnE = 0b0000
    DEVICE_nGnRE = 0b0001
    DEVICE_nGRE = 0b0010
    DEVICE_GRE = 0b0011
    NORMAL_NC = 0b0101  # outer and inner Non-cacheable
    NORMAL_WT = 0b1010
    NORMAL_WB = 0b1111  # outer and inner Write-Back cacheable


class S1AP(enum.IntEnum):
    """Stage-1 AP[2:1] (Arm ARM D8.4.1.2, Table "Data access permissions")."""

    EL1_RW = 0b00
    EL1_RW_EL0_RW = 0b01
    EL1_RO = 0b10
    EL1_RO_EL0_RO = 0b11


class S2Perm(enum.Enum):
    """Stage-2 access permission as SECvma thinks of it: read, write, execute (EL0 and EL1).

    `value` is (S2AP[1:0], executable). Execute here means both EL0 and EL1 (XN=0); use
    `s2_xn_bits` directly for the FEAT_XNX asymmetric forms.
    """

    NONE = (0b00, False)
    X = (0b00, True)
    R = (0b01, False)
    RX = (0b01, True)
    W = (0b10, False)
    WX = (0b10, True)
    RW = (0b11, False)
    RWX = (0b11, True)

    @property
    def readable(self) -> bool:
        return bool(self.value[0] & 1)

    @property
    def writable(self) -> bool:
        return bool(self.value[0] & 2)

    @property
    def executable(self) -> bool:
        return self.value[1]


def s2perm_bits(perm: S2Perm) -> int:
    """Descriptor bits for `perm`: S2AP (7:6) and XN (bit 54 set when not executable)."""
    s2ap, x = perm.value
    return (s2ap << AP_SHIFT) | (0 if x else S2_XN)


_S2PERM_BITS_MASK = (0b11 << AP_SHIFT) | S2_XN | S2_XXN


def s2perm_of(desc: int) -> S2Perm:
    """S2Perm of a stage-2 leaf: S2AP and XN[1] (executable iff XN[1:0] == 00 or XN[0] unset
    on a v8.0 CPU; FEAT_XNX asymmetric encodings 01/11 are reported by `s2_exec`)."""
    s2ap = _field(desc, AP_SHIFT, 2)
    x = not _bit(desc, 54)
    for p in S2Perm:
        if p.value == (s2ap, x):
            return p
    raise AssertionError("every (S2AP, X) pair is an S2Perm")


def s2_exec(xn_bits: int, *, el0: bool, feat_xnx: bool) -> bool:
    """Whether stage 2 permits instruction fetch from `el0`/EL1 given XN[1:0] (bits 54:53).

    AArch64.CheckS2Permission (DDI 0487 D8.4.2 / "Stage 2 instruction execution"):
    with FEAT_XNX, XN[1:0] = 00 exec at EL0 and EL1; 01 EL0 only (PXN-like); 10 neither;
    11 EL1 only (UXN-like). Without FEAT_XNX (ARMv8.0, e.g. Cortex-A57) only XN[1] counts.
    """
    if not feat_xnx:
        return not (xn_bits & 0b10)
    return {0b00: True, 0b01: el0, 0b10: False, 0b11: not el0}[xn_bits & 0b11]


# --- descriptor records --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invalid:
    """bit 0 clear, or a reserved encoding for its level (an L0 block, an L3 0b01 entry).

    `raw` is kept whole (software may park data in an invalid entry) and `encode` returns it.
    """

    raw: int = 0

    def encode(self) -> int:
        return self.raw


@dataclass(frozen=True, slots=True)
class S1Table:
    """Stage-1 table descriptor (levels 0-2). Arm ARM D8.3.1, hierarchical attrs D8.4.1.3."""

    next_table: PhysAddr
    pxntable: bool = False
    uxntable: bool = False
    aptable: int = 0
    nstable: bool = False
    sw: int = 0  # IGNORED bits 58:55

    def encode(self) -> int:
        _check_width("aptable", self.aptable, 2)
        _check_width("sw", self.sw, SW_WIDTH)
        if self.next_table & ~OA_MASK:
            raise ValueError(f"table address {self.next_table:#x} not 4KB aligned in 47:12")
        return (
            self.next_table
            | DESC_VALID
            | DESC_TABLE
            | (PXNTABLE if self.pxntable else 0)
            | (UXNTABLE if self.uxntable else 0)
            | (self.aptable << APTABLE_SHIFT)
            | (NSTABLE if self.nstable else 0)
            | (self.sw << SW_SHIFT)
        )


@dataclass(frozen=True, slots=True)
class S1Leaf:
    """Stage-1 block (levels 1-2) or page (level 3) descriptor. Arm ARM D8.3.2."""

    level: int
    oa: PhysAddr
    attrindx: int = 0
    ap: int = 0  # AP[2:1]
    sh: int = 0
    af: bool = True
    ng: bool = False
    ns: bool = False
    dbm: bool = False
    contiguous: bool = False
    pxn: bool = False
    uxn: bool = False
    sw: int = 0

    @property
    def is_block(self) -> bool:
        return self.level < MAX_LEVEL

    def encode(self) -> int:
        if self.level != MAX_LEVEL and not is_block_allowed(self.level):
            raise ValueError(f"no block descriptor at level {self.level}")
        if self.oa & ~oa_mask(self.level):
            raise ValueError(f"output address {self.oa:#x} misaligned for level {self.level}")
        _check_width("attrindx", self.attrindx, 3)
        _check_width("ap", self.ap, 2)
        _check_width("sh", self.sh, 2)
        _check_width("sw", self.sw, SW_WIDTH)
        return (
            self.oa
            | DESC_VALID
            | (DESC_TABLE if self.level == MAX_LEVEL else 0)
            | (self.attrindx << ATTRINDX_SHIFT)
            | (NS if self.ns else 0)
            | (self.ap << AP_SHIFT)
            | (self.sh << SH_SHIFT)
            | (AF if self.af else 0)
            | (NG if self.ng else 0)
            | (DBM if self.dbm else 0)
            | (CONTIGUOUS if self.contiguous else 0)
            | (PXN if self.pxn else 0)
            | (UXN if self.uxn else 0)
            | (self.sw << SW_SHIFT)
        )


@dataclass(frozen=True, slots=True)
class S2Table:
    """Stage-2 table descriptor (levels 0-2): only the next-level address (D8.3.1)."""

    next_table: PhysAddr
    sw: int = 0  # IGNORED bits 58:55

    def encode(self) -> int:
        _check_width("sw", self.sw, SW_WIDTH)
        if self.next_table & ~OA_MASK:
            raise ValueError(f"table address {self.next_table:#x} not 4KB aligned in 47:12")
        return self.next_table | DESC_VALID | DESC_TABLE | (self.sw << SW_SHIFT)


@dataclass(frozen=True, slots=True)
class S2Leaf:
    """Stage-2 block (levels 1-2) or page (level 3) descriptor. Arm ARM D8.3.2, D8.6.5."""

    level: int
    oa: PhysAddr
    memattr: int = S2MemAttr.NORMAL_WB
    s2ap: int = 0b11
    sh: int = Shareability.INNER
    af: bool = True
    xn: int = 0  # XN[1:0], bits 54:53
    dbm: bool = False
    contiguous: bool = False
    sw: int = 0

    @property
    def is_block(self) -> bool:
        return self.level < MAX_LEVEL

    @property
    def perm(self) -> S2Perm:
        return s2perm_of(self.encode())

    def encode(self) -> int:
        if self.level != MAX_LEVEL and not is_block_allowed(self.level):
            raise ValueError(f"no block descriptor at level {self.level}")
        if self.oa & ~oa_mask(self.level):
            raise ValueError(f"output address {self.oa:#x} misaligned for level {self.level}")
        _check_width("memattr", self.memattr, 4)
        _check_width("s2ap", self.s2ap, 2)
        _check_width("sh", self.sh, 2)
        _check_width("xn", self.xn, 2)
        _check_width("sw", self.sw, SW_WIDTH)
        return (
            self.oa
            | DESC_VALID
            | (DESC_TABLE if self.level == MAX_LEVEL else 0)
            | (self.memattr << MEMATTR_SHIFT)
            | (self.s2ap << AP_SHIFT)
            | (self.sh << SH_SHIFT)
            | (AF if self.af else 0)
            | (DBM if self.dbm else 0)
            | (CONTIGUOUS if self.contiguous else 0)
            | (self.xn << S2_XN_SHIFT)
            | (self.sw << SW_SHIFT)
        )


S1Desc = Invalid | S1Table | S1Leaf
S2Desc = Invalid | S2Table | S2Leaf


class DescKind(enum.Enum):
    """What a raw descriptor is at a given level (both stages share the bits[1:0] rule)."""

    INVALID = "invalid"
    TABLE = "table"
    BLOCK = "block"
    PAGE = "page"


def desc_kind(raw: int, level: int) -> DescKind:
    """Classify `raw` at `level` from bits[1:0] (Arm ARM D8.3, 4KB granule, no FEAT_LPA2).

    Level-0 block and level-3 bits[1:0]=0b01 are reserved and behave as invalid.
    """
    _check_level(level)
    if not raw & DESC_VALID:
        return DescKind.INVALID
    if raw & DESC_TABLE:
        return DescKind.PAGE if level == MAX_LEVEL else DescKind.TABLE
    return DescKind.BLOCK if is_block_allowed(level) else DescKind.INVALID


def decode_s1(raw: int, level: int) -> S1Desc:
    """Decode a stage-1 descriptor found at `level`."""
    kind = desc_kind(raw, level)
    if kind is DescKind.INVALID:
        return Invalid(raw)
    if kind is DescKind.TABLE:
        return S1Table(
            next_table=PhysAddr(raw & OA_MASK),
            pxntable=bool(raw & PXNTABLE),
            uxntable=bool(raw & UXNTABLE),
            aptable=_field(raw, APTABLE_SHIFT, 2),
            nstable=bool(raw & NSTABLE),
            sw=_field(raw, SW_SHIFT, SW_WIDTH),
        )
    return S1Leaf(
        level=level,
        oa=PhysAddr(raw & oa_mask(level)),
        attrindx=_field(raw, ATTRINDX_SHIFT, 3),
        ap=_field(raw, AP_SHIFT, 2),
        sh=_field(raw, SH_SHIFT, 2),
        af=bool(raw & AF),
        ng=bool(raw & NG),
        ns=bool(raw & NS),
        dbm=bool(raw & DBM),
        contiguous=bool(raw & CONTIGUOUS),
        pxn=bool(raw & PXN),
        uxn=bool(raw & UXN),
        sw=_field(raw, SW_SHIFT, SW_WIDTH),
    )


def decode_s2(raw: int, level: int) -> S2Desc:
    """Decode a stage-2 descriptor found at `level`."""
    kind = desc_kind(raw, level)
    if kind is DescKind.INVALID:
        return Invalid(raw)
    if kind is DescKind.TABLE:
        return S2Table(next_table=PhysAddr(raw & OA_MASK), sw=_field(raw, SW_SHIFT, SW_WIDTH))
    return S2Leaf(
        level=level,
        oa=PhysAddr(raw & oa_mask(level)),
        memattr=_field(raw, MEMATTR_SHIFT, 4),
        s2ap=_field(raw, AP_SHIFT, 2),
        sh=_field(raw, SH_SHIFT, 2),
        af=bool(raw & AF),
        xn=_field(raw, S2_XN_SHIFT, 2),
        dbm=bool(raw & DBM),
        contiguous=bool(raw & CONTIGUOUS),
        sw=_field(raw, SW_SHIFT, SW_WIDTH),
    )


# --- small constructors the hypervisor uses --------------------------------------------------


def encode_table_desc(
    pa: PhysAddr,
    *,
    pxntable: bool = False,
    uxntable: bool = False,
    aptable: int = 0,
    nstable: bool = False,
) -> int:
    """Raw table descriptor pointing at `pa` (stage 1; with no attrs also valid at stage 2)."""
    return S1Table(pa, pxntable, uxntable, aptable, nstable).encode()


def encode_s2_leaf(
    pa: PhysAddr,
    level: int,
    perm: S2Perm,
    *,
    memattr: S2MemAttr = S2MemAttr.NORMAL_WB,
    sh: Shareability = Shareability.INNER,
    sw: int = 0,
) -> int:
    """Raw stage-2 block/page mapping `pa` at `level` with `perm`, AF set."""
    s2ap, x = perm.value
    return S2Leaf(
        level=level, oa=pa, memattr=memattr, s2ap=s2ap, sh=sh, xn=0 if x else 0b10, sw=sw
    ).encode()


def with_s2perm(raw: int, perm: S2Perm) -> int:
    """`raw` stage-2 leaf with its S2AP/XN replaced by `perm` (XN[0] cleared)."""
    return (raw & ~_S2PERM_BITS_MASK) | s2perm_bits(perm)


def leaf_output(raw: int, level: int, ia: int) -> PhysAddr:
    """Output address of input address `ia` through leaf `raw` at `level`."""
    return PhysAddr((raw & oa_mask(level)) | (ia & (level_size(level) - 1)))


def va_of_indices(indices: tuple[int, ...], *, high: bool = False) -> VirtAddr:
    """VA whose L0.. indices are `indices` (missing levels zero); `high` sign-extends (TTBR1)."""
    va = 0
    for level, idx in enumerate(indices):
        va |= (idx & (ENTRIES_PER_TABLE - 1)) << level_shift(level)
    if high:
        va |= ((1 << 64) - 1) & ~((1 << OA_BITS) - 1)
    return VirtAddr(va)
