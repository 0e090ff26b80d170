"""A small SMMUv3 model for the fake machine: registers, command queue, a TLB, stage-1 walks
and event records, written from the architecture independently of `secvma.arch.smmuv3` (its
own bit positions), so that an encoding mistake in the driver shows up as a wrong walk."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from secvma.platform import PhysAddr, SmmuWindow

if TYPE_CHECKING:
    from secvma.sim.machine import FakePlatform

SMMU_BASE = 0x0905_0000
SMMU_SIZE = 0x2_0000
POOL_SIZE = 0x80_0000
M52 = (1 << 52) - 1
MSI_BASE = 0x0802_0000


class FakeSmmu:
    def __init__(self, plat: FakePlatform) -> None:
        self.plat = plat
        pool = plat.hyp_base + plat.hyp_size - POOL_SIZE
        self.window = SmmuWindow(PhysAddr(SMMU_BASE), SMMU_SIZE, PhysAddr(pool), POOL_SIZE,
                                 (PhysAddr(MSI_BASE), 0x1000))
        self.regs: dict[int, int] = {}
        self.commands: list[int] = []
        self.tlb: dict[tuple[int, int], tuple[int, bool]] = {}  # (sid, page) -> (pa, writable)
        self.cfg_cache: dict[int, tuple[int, int] | None] = {}  # sid -> (ttb0, asid)
        self.accesses = 0

    # ---- registers ----------------------------------------------------------------------
    def read(self, pa: int, size: int) -> int:
        self.accesses += 1
        off = (pa - SMMU_BASE) & ~0x10000
        if off == 0x24:
            return self.regs.get(0x20, 0)
        return self.regs.get(off, 0)

    def write(self, pa: int, size: int, value: int) -> None:
        self.accesses += 1
        off = (pa - SMMU_BASE) & ~0x10000
        self.regs[off] = value
        if off == 0x98:
            self._consume()

    @property
    def enabled(self) -> bool:
        return bool(self.regs.get(0x20, 0) & 1)

    def _consume(self) -> None:
        base = self.regs[0x90] & M52 & ~0x1F
        log2 = self.regs[0x90] & 0x1F
        cons = self.regs.get(0x9C, 0)
        prod = self.regs[0x98]
        while cons != prod:
            idx = cons & ((1 << log2) - 1)
            d0, d1 = struct.unpack("<2Q", self.plat.read(PhysAddr(base + 16 * idx), 16))
            op = d0 & 0xFF
            self.commands.append(op)
            if op in (0x03, 0x05):
                self.cfg_cache.pop(d0 >> 32, None)
            elif op == 0x04:
                self.cfg_cache.clear()
            elif op in (0x10, 0x30):
                self.tlb.clear()
            elif op == 0x11:
                asid = d0 >> 48
                for k in [k for k in self.tlb if self._asid(k[0]) == asid]:
                    del self.tlb[k]
            elif op == 0x12:
                asid, page = d0 >> 48, (d1 >> 12) << 12
                for k in [k for k in self.tlb if k[1] == page and self._asid(k[0]) == asid]:
                    del self.tlb[k]
            cons = (cons + 1) & ((2 << log2) - 1)
        self.regs[0x9C] = cons

    def _asid(self, sid: int) -> int | None:
        cfg = self.cfg_cache.get(sid)
        return None if cfg is None else cfg[1]

    # ---- translation --------------------------------------------------------------------
    def _config(self, sid: int) -> tuple[int, int] | None:
        if sid in self.cfg_cache:
            return self.cfg_cache[sid]
        base = self.regs[0x80] & M52 & ~0x3F
        d0 = self.plat.read_u64(PhysAddr(base + 64 * sid))
        if not d0 & 1 or (d0 >> 1) & 7 != 0b101:
            return None  # invalid (recorded by the caller) or abort/bypass: not used here
        cd = d0 & M52 & ~0x3F
        c0, c1 = struct.unpack("<2Q", self.plat.read(PhysAddr(cd), 16))
        assert c0 >> 31 & 1 and c0 >> 41 & 1 and c0 >> 46 & 1, "CD not valid/AA64/A"
        assert c0 & 0x3F == 32 and (c0 >> 6) & 3 == 0 and c0 >> 30 & 1, "CD geometry"
        cfg = (c1 & M52 & ~0xF, c0 >> 48)
        self.cfg_cache[sid] = cfg
        return cfg

    def _event(self, etype: int, sid: int, iova: int, write: bool) -> None:
        base = self.regs[0xA0] & M52 & ~0x1F
        log2 = self.regs[0xA0] & 0x1F
        prod = self.regs.get(0xA8, 0)
        rec = struct.pack("<4Q", etype | (sid << 32), 0 if write else 1 << 35, iova, 0)
        self.plat.write(PhysAddr(base + 32 * (prod & ((1 << log2) - 1))), rec)
        self.regs[0xA8] = (prod + 1) & ((2 << log2) - 1)

    def translate(self, sid: int, iova: int, write: bool) -> int | None:
        """PA of a device access at `iova`, None when refused (an event is recorded)."""
        if not self.enabled:
            return iova
        cfg = self._config(sid)
        if cfg is None:
            self._event(0x04, sid, 0, write)
            return None
        page = iova & ~0xFFF
        hit = self.tlb.get((sid, page))
        if hit is None:
            table = cfg[0]
            for level, shift in ((1, 30), (2, 21), (3, 12)):
                idx = (iova >> shift) & (3 if level == 1 else 0x1FF)
                d = self.plat.read_u64(PhysAddr(table + 8 * idx))
                if d & 3 != 3:
                    self._event(0x10, sid, iova, write)
                    return None
                table = d & ((1 << 48) - 1) & ~0xFFF
            if not d & (1 << 10):
                self._event(0x12, sid, iova, write)
                return None
            hit = (table, not d & (1 << 7))
            self.tlb[(sid, page)] = hit
        if write and not hit[1]:
            self._event(0x13, sid, iova, write)
            return None
        return hit[0] | (iova & 0xFFF)

    def dma_write(self, sid: int, iova: int, data: bytes) -> bool:
        pa = self.translate(sid, iova, True)
        if pa is None:
            return False
        self.plat.write(PhysAddr(pa), data)
        return True
