"""Arm SMMUv3 facts as pure functions: registers, STE, CD, commands, events, IO page tables.

Only what a hypervisor needs to give each PCIe stream one stage-1 context (one CD per stream,
QEMU 7.2 translates at stage 1 only) with a 4 KB-granule, 3-level table (T0SZ = 32: a 4 GiB
IOVA space starting at level 1). Field positions follow the SMMUv3 architecture (IHI 0070);
every encoder has a decoder so that the tests round-trip them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

# ---- registers (offsets from the SMMU base; page 1 registers at +0x10000) --------------------
IDR0 = 0x00
IDR1 = 0x04
IDR5 = 0x14
CR0 = 0x20
CR0ACK = 0x24
CR1 = 0x28
CR2 = 0x2C
GBPA = 0x44
IRQ_CTRL = 0x50
GERROR = 0x60
GERRORN = 0x64
STRTAB_BASE = 0x80
STRTAB_BASE_CFG = 0x88
CMDQ_BASE = 0x90
CMDQ_PROD = 0x98
CMDQ_CONS = 0x9C
EVTQ_BASE = 0xA0
EVTQ_PROD = 0x100A8
EVTQ_CONS = 0x100AC

CR0_SMMUEN = 1 << 0
CR0_EVTQEN = 1 << 2
CR0_CMDQEN = 1 << 3
GBPA_UPDATE = 1 << 31
GBPA_ABORT = 1 << 20
CMDQ_CONS_ERR_SHIFT = 24
BASE_RA = 1 << 62
ADDR_MASK_51_5 = ((1 << 52) - 1) & ~0x1F
ADDR_MASK_51_6 = ((1 << 52) - 1) & ~0x3F

STE_SIZE = 64
CD_SIZE = 64
CMD_SIZE = 16
EVT_SIZE = 32
PAGE = 4096

# ---- stream table entry ----------------------------------------------------------------------
STE_V = 1 << 0
STE_CFG_SHIFT = 1
STE_CFG_ABORT = 0b000
STE_CFG_BYPASS = 0b100
STE_CFG_S1 = 0b101


def ste_s1(cd_pa: int) -> bytes:
    """A valid STE translating at stage 1 with the single CD at `cd_pa` (S1Fmt linear,
    S1CDMax 0, no stall)."""
    if cd_pa % CD_SIZE or cd_pa >> 52:
        raise ValueError(f"CD address {cd_pa:#x} must be 64-byte aligned and below 2^52")
    d0 = STE_V | (STE_CFG_S1 << STE_CFG_SHIFT) | (cd_pa & ADDR_MASK_51_6)
    return struct.pack("<8Q", d0, 0, 0, 0, 0, 0, 0, 0)


def ste_abort() -> bytes:
    """A valid STE that terminates every transaction of the stream (no event)."""
    return struct.pack("<8Q", STE_V | (STE_CFG_ABORT << STE_CFG_SHIFT), 0, 0, 0, 0, 0, 0, 0)


STE_INVALID = bytes(STE_SIZE)
"""V = 0: each transaction is refused and recorded (C_BAD_STE)."""


@dataclass(frozen=True, slots=True)
class SteView:
    valid: bool
    config: int
    cd_pa: int


def decode_ste(raw: bytes) -> SteView:
    d0 = struct.unpack_from("<Q", raw)[0]
    return SteView(bool(d0 & STE_V), (d0 >> STE_CFG_SHIFT) & 7, d0 & ADDR_MASK_51_6)


# ---- context descriptor ---------------------------------------------------------------------
IOVA_BITS = 32
T0SZ = 64 - IOVA_BITS
START_LEVEL = 1
IPS_40 = 0b010
CD_TG0_4K = 0
CD_EPD1 = 1 << 30
CD_V = 1 << 31
CD_AA64 = 1 << 41
CD_R = 1 << 45
CD_A = 1 << 46
CD_ASID_SHIFT = 48
# inner/outer write-back cacheable, inner shareable table walks
CD_IR0_WB = 1 << 8
CD_OR0_WB = 1 << 10
CD_SH0_IS = 3 << 12


def cd_s1(ttb0: int, asid: int) -> bytes:
    """A valid AArch64 CD: TTB0 = `ttb0` (4 KB granule, T0SZ 32), TTB1 walks disabled,
    faults recorded (R), aborted (A), never stalled."""
    if ttb0 % PAGE or ttb0 >> 40:
        raise ValueError(f"table base {ttb0:#x} must be page aligned and below 2^40")
    if not 0 <= asid < 1 << 16:
        raise ValueError(f"ASID {asid} outside 16 bits")
    d0 = (T0SZ | (CD_TG0_4K << 6) | CD_IR0_WB | CD_OR0_WB | CD_SH0_IS | CD_EPD1 | CD_V
          | (IPS_40 << 32) | CD_AA64 | CD_R | CD_A | (asid << CD_ASID_SHIFT))
    return struct.pack("<8Q", d0, ttb0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class CdView:
    valid: bool
    t0sz: int
    ttb0: int
    asid: int
    aa64: bool
    record: bool
    epd1: bool


def decode_cd(raw: bytes) -> CdView:
    d0, d1 = struct.unpack_from("<2Q", raw)
    return CdView(bool(d0 & CD_V), d0 & 0x3F, d1 & (((1 << 52) - 1) & ~0xF),
                  (d0 >> CD_ASID_SHIFT) & 0xFFFF, bool(d0 & CD_AA64), bool(d0 & CD_R),
                  bool(d0 & CD_EPD1))


# ---- IO page-table descriptors (stage-1 LPAE, 4 KB granule) --------------------------------
PTE_VALID = 1 << 0
PTE_TABLE = 1 << 1  # table at levels 1-2, page at level 3
PTE_ATTRIDX_SHIFT = 2
PTE_AP_RO = 1 << 7  # AP[2]
PTE_SH_IS = 3 << 8
PTE_AF = 1 << 10
PTE_ADDR_MASK = ((1 << 48) - 1) & ~0xFFF


def io_table_desc(table_pa: int) -> int:
    return (table_pa & PTE_ADDR_MASK) | PTE_VALID | PTE_TABLE


def io_page_desc(pa: int, writable: bool) -> int:
    """Level-3 page: AF set, inner shareable, AttrIndx 0 (the SMMU ignores MAIR for DMA)."""
    if pa % PAGE:
        raise ValueError(f"page address {pa:#x} not aligned")
    return (pa & PTE_ADDR_MASK) | PTE_VALID | PTE_TABLE | PTE_AF | PTE_SH_IS \
        | (0 if writable else PTE_AP_RO)


def io_index(iova: int, level: int) -> int:
    """Index of `iova` in the level-`level` table (levels 1..3 for a 32-bit IOVA space)."""
    return (iova >> (12 + 9 * (3 - level))) & (0x3 if level == START_LEVEL else 0x1FF)


def io_desc_writable(desc: int) -> bool:
    return not desc & PTE_AP_RO


# ---- commands -------------------------------------------------------------------------------


class CmdOp(enum.IntEnum):
    CFGI_STE = 0x03
    CFGI_ALL = 0x04
    CFGI_CD = 0x05
    TLBI_NH_ALL = 0x10
    TLBI_NH_ASID = 0x11
    TLBI_NH_VA = 0x12
    TLBI_NSNH_ALL = 0x30
    SYNC = 0x46


def cmd_cfgi_ste(sid: int) -> bytes:
    return struct.pack("<2Q", CmdOp.CFGI_STE | (sid << 32), 1)  # Leaf = 1


def cmd_cfgi_all() -> bytes:
    return struct.pack("<2Q", CmdOp.CFGI_ALL, 31)  # Range 31: every stream


def cmd_tlbi_nh_all() -> bytes:
    return struct.pack("<2Q", CmdOp.TLBI_NH_ALL, 0)


def cmd_tlbi_nsnh_all() -> bytes:
    return struct.pack("<2Q", CmdOp.TLBI_NSNH_ALL, 0)


def cmd_tlbi_nh_va(asid: int, iova: int) -> bytes:
    return struct.pack("<2Q", CmdOp.TLBI_NH_VA | (asid << 48), iova & ~0xFFF)


def cmd_tlbi_nh_asid(asid: int) -> bytes:
    return struct.pack("<2Q", CmdOp.TLBI_NH_ASID | (asid << 48), 0)


def cmd_sync() -> bytes:
    return struct.pack("<2Q", CmdOp.SYNC, 0)  # CS = 0: completion seen through CONS


def cmd_opcode(raw: bytes) -> int:
    return raw[0]


# ---- events ---------------------------------------------------------------------------------

EVENT_NAMES = {
    0x01: "unsupported-upstream-transaction",
    0x02: "bad-stream-id",
    0x03: "stream-table-fetch",
    0x04: "bad-ste",
    0x06: "stream-disabled",
    0x07: "transaction-forbidden",
    0x09: "cd-fetch",
    0x0A: "bad-cd",
    0x0B: "walk-external-abort",
    0x10: "translation",
    0x11: "address-size",
    0x12: "access-flag",
    0x13: "permission",
}
_ADDR_EVENTS = frozenset({0x10, 0x11, 0x12, 0x13, 0x0B})


@dataclass(frozen=True, slots=True)
class Event:
    """One event record: type, stream, input address (0 if the type carries none), read/write."""

    type: int
    sid: int
    iova: int
    write: bool

    @property
    def reason(self) -> str:
        return EVENT_NAMES.get(self.type, f"event-{self.type:#x}")


def decode_event(raw: bytes) -> Event:
    d0, d1, d2, _d3 = struct.unpack_from("<4Q", raw)
    etype = d0 & 0xFF
    iova = d2 if etype in _ADDR_EVENTS else 0
    rnw = bool((d1 >> 35) & 1)
    return Event(etype, d0 >> 32, iova, not rnw)


def encode_event(etype: int, sid: int, iova: int = 0, write: bool = True) -> bytes:
    """The record an SMMU writes (for the fake device of the tests)."""
    return struct.pack("<4Q", etype | (sid << 32), 0 if write else 1 << 35, iova, 0)


# ---- queue pointers -------------------------------------------------------------------------


def q_base(pa: int, log2size: int) -> int:
    return BASE_RA | (pa & ADDR_MASK_51_5) | log2size


def q_index(ptr: int, log2size: int) -> int:
    return ptr & ((1 << log2size) - 1)


def q_inc(ptr: int, log2size: int) -> int:
    """Next producer/consumer value: index + 1 with the wrap bit toggled at the end."""
    mask = (2 << log2size) - 1
    return (ptr + 1) & mask
