"""Everything KPCore knows: one `KState` per machine (pages, stage 2, roots, registers, log).

Lock order of the C code (s2page -> host_kpt) has no counterpart here: the mailbox server
serves one trap at a time, so every handler runs to completion before the next one starts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from secvma.hvabi import BootInfo
from secvma.kpcore.modstate import ModState
from secvma.kpcore.pages import Owner, PageTable, commit_give_el2, pfn_of
from secvma.kpcore.policy import Policy
from secvma.kpcore.refusal import Refusal
from secvma.kpcore.stage2 import Stage2
from secvma.platform import Platform, SysReg

if TYPE_CHECKING:
    from secvma.kpcore.dma import DmaState
    from secvma.kpcore.ptefast import PteFastState

S2_POOL_OFFSET = 0x20_0000
"""The stage-2 table pool starts 2 MiB into the hypervisor region (machine/layout.py)."""

PINNED = (SysReg.SCTLR_EL1, SysReg.TCR_EL1, SysReg.MAIR_EL1, SysReg.AMAIR_EL1,
          SysReg.CONTEXTIDR_EL1)
"""Registers pinned to their value at install (spec §5.2, INV-ROOTS)."""


@dataclass(slots=True)
class CpuState:
    """Per-vCPU view: whether HVC 6 ran on it (TVM set) and the roots it runs with."""

    tvm: bool = False
    boot_window: bool = False  # between this CPU's first HVC 6 and its MMU-on SCTLR write
    enabled_once: bool = False
    switched: bool = False  # HVC 35 has loaded a user root (INV-ROOTS applies to TTBR0)
    ttbr0: int = 0
    ttbr1: int = 0
    stub_escaped: bool = False  # secvma2024: HVC 1/2 handed EL2 back to the host (gap 14)


@dataclass(slots=True)
class Stall:
    """The last stalled store per CPU (secvma2024 spins on it forever)."""

    pc: int
    ipa: int
    repeats: int


@dataclass
class KState:
    """The hypervisor's whole state (inspectable; `invariants.check` reads only this)."""

    policy: Policy
    pages: PageTable
    s2: Stage2
    hyp_range: tuple[int, int]
    boot: BootInfo | None = None
    vdso: tuple[tuple[int, int], ...] = ()  # PA ranges of the vDSO (transparent: from the Image)
    installed: bool = False
    cpus: dict[int, CpuState] = field(default_factory=dict)
    pinned: dict[SysReg, int] = field(default_factory=dict)
    vbar: int = 0
    user_roots: set[int] = field(default_factory=set)
    refusals: list[Refusal] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    stalls: dict[int, Stall] = field(default_factory=dict)
    stale_retries: dict[int, tuple[tuple[int, int, int], int]] = field(default_factory=dict)
    """Per CPU: (pc, page, ESR) of the last permission fault retried as a stale TLB, rounds."""
    dirty_tables: set[int] = field(default_factory=set)
    unsettled: dict[int, int] = field(default_factory=dict)
    """Pages claimed (made read-only at stage 2) by CPU n whose TLB invalidation has not run
    yet: another CPU may still write them through a stale TLB entry. Zeroed again at CPU n's
    next trap (its trampoline ran the broadcast TLBI before returning), see `settle`."""
    pgd_pending: dict[int, int] = field(default_factory=dict)
    """User roots whose HVC 33 is between its claim and its retried completion (by CPU n)."""
    mod: ModState = field(default_factory=ModState)
    dma: DmaState | None = None
    ptefast: PteFastState | None = None
    """The armed PTE fast path (kpcore/ptefast.py), None while stores all trap."""
    feat_xnx: bool = False
    """The CPUs read stage-2 XN[1:0] with FEAT_XNX (learned from ID_AA64MMFR1_EL1 at CpuStart):
    then XN = 01 (KERNEL, UCODE kinds) is not executable at EL1, and a fetch fault on such a
    leaf is a real permission fault, not a stale TLB entry."""

    @classmethod
    def create(cls, platform: Platform, policy: Policy) -> KState:
        """Fresh state: EL2's region owned by COREVISOR, empty stage 2 in the pool."""
        pages = PageTable(platform.ram_base, platform.ram_size)
        hyp_lo, hyp_hi = platform.hyp_base, platform.hyp_base + platform.hyp_size
        for pfn in range(pfn_of(hyp_lo), pfn_of(hyp_hi)):
            if pages.index(pfn) is not None:
                commit_give_el2(pages, pfn)
        pool_lo = hyp_lo + S2_POOL_OFFSET if platform.hyp_size > 2 * S2_POOL_OFFSET else hyp_lo
        smmu = platform.smmu
        pool_hi = hyp_hi
        if smmu is not None:  # the SMMU's tables take the top of the region
            if not (hyp_lo <= smmu.pool and smmu.pool + smmu.pool_size == hyp_hi):
                raise ValueError("the SMMU pool must be the top of the hypervisor region")
            pool_hi = smmu.pool
        s2 = Stage2(platform, pool_lo, pool_hi)
        return cls(policy, pages, s2, (hyp_lo, hyp_hi))

    def cpu(self, index: int) -> CpuState:
        st = self.cpus.get(index)
        if st is None:
            st = self.cpus[index] = CpuState()
        return st

    def is_host_ram(self, pa: int) -> bool:
        return self.pages.owner_of(pa >> 12) is Owner.HOST
