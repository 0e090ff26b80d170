"""The Platform seam: what a hypervisor sees of the machine, and the events it receives.

kpcore (and any other hypervisor, such as `secvma.machine.null.NullHypervisor`) is written
against these protocols only. The QEMU mailbox server (`secvma.machine.mailbox`) implements
them for real AArch64 code; `tests/kpcore/fakes.py` implements them over a bytearray so that policy
tests run in milliseconds.

Flow of one trap::

    guest traps to EL2 -> trampoline saves state to the CPU's mailbox -> MailboxServer decodes
    it into an Event -> hypervisor.handle(cpu, event) reads/writes guest memory through
    `Platform`, edits registers through `Vcpu`, queues EL2 commands (MSR, TLBI, stage-2 setup,
    abort injection) -> the trampoline runs the commands, reloads registers, ERETs.

An event handler must leave the vCPU able to continue: advance the PC past the trapping
instruction (`Vcpu.skip`), inject an abort, or leave ELR alone to retry the instruction
(only after changing what made it fault, otherwise the guest loops).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NewType, Protocol, runtime_checkable

PhysAddr = NewType("PhysAddr", int)
"""A guest physical address (host IPA == PA in this design: stage 2 is an identity map)."""

VirtAddr = NewType("VirtAddr", int)
"""A guest virtual address (stage-1 input)."""


class SysReg(enum.IntEnum):
    """EL1 system registers the trampoline can write for the hypervisor (its MSR table index)."""

    SCTLR_EL1 = 0
    TTBR0_EL1 = 1
    TTBR1_EL1 = 2
    TCR_EL1 = 3
    MAIR_EL1 = 4
    AMAIR_EL1 = 5
    CONTEXTIDR_EL1 = 6
    ESR_EL1 = 7
    FAR_EL1 = 8
    AFSR0_EL1 = 9
    AFSR1_EL1 = 10
    ELR_EL1 = 11
    SPSR_EL1 = 12
    VBAR_EL1 = 13
    MDSCR_EL1 = 14


# --- events ---------------------------------------------------------------------------------
# Events are read-only by convention; they are not frozen because a frozen dataclass costs
# ~0.5 µs more to build, on a path taken once per trap.


@dataclass(slots=True)
class CpuStart:
    """A vCPU entered the trampoline (boot CPU at reset, secondaries after PSCI CPU_ON).

    `entry` is where the vCPU will start at EL1 unless the hypervisor changes ELR.
    `mmfr1` is ID_AA64MMFR1_EL1 as the CPU reports it at EL2 (0 where unknown: a fake, or an
    ARMv8.0 reading); `feat_xnx` reads FEAT_XNX from it, never from the CPU's name.
    """

    entry: int
    context: int
    mmfr1: int = 0

    @property
    def feat_xnx(self) -> bool:
        """FEAT_XNX: stage-2 XN[1:0] distinguishes EL0 from EL1 (ID_AA64MMFR1_EL1.XNX, 31:28)."""
        return (self.mmfr1 >> 28) & 0xF >= 1


@dataclass(slots=True)
class Hvc:
    """HVC #imm from EL1 (or EL0, which is UNDEFINED architecturally and never arrives)."""

    imm: int
    x: tuple[int, int, int, int, int, int, int, int]


@dataclass(slots=True)
class Smc:
    """SMC #imm trapped by HCR_EL2.TSC (PSCI calls). ELR points at the SMC itself."""

    imm: int
    x: tuple[int, int, int, int]


@dataclass(slots=True)
class Stage2Abort:
    """A stage-2 data or instruction abort (EC 0x24 / 0x20, lower EL).

    `ipa` is HPFAR_EL2.FIPA << 12 | FAR_EL2[11:0]; `far` the faulting VA. `from_el0` says
    which exception level was running. `s1ptw` is set when the fault happened while the MMU
    walked stage-1 tables (the table page itself is not readable at stage 2).
    """

    esr: int
    far: int
    ipa: PhysAddr
    is_fetch: bool
    is_write: bool
    from_el0: bool
    s1ptw: bool


@dataclass(slots=True)
class SysregTrap:
    """MSR/MRS trapped to EL2 (EC 0x18), e.g. by HCR_EL2.TVM/TRVM.

    `encoding` is (op0, op1, CRn, CRm, op2); `reg` names it when it is one the trampoline can
    write (else None); `value` is x[rt] for a write (0 when rt is XZR).
    """

    encoding: tuple[int, int, int, int, int]
    reg: SysReg | None
    is_write: bool
    rt: int
    value: int


@dataclass(slots=True)
class OtherTrap:
    """Any other synchronous exception from a lower EL that reached EL2 (EC not handled above)."""

    esr: int
    far: int


@dataclass(slots=True)
class Unexpected:
    """An exception the trampoline never expects (IRQ/FIQ/SError to EL2, current-EL sync)."""

    vector: int
    esr: int
    far: int


@dataclass(slots=True)
class GuardTrip:
    """An interrupt exit found a pinned EL1 register off its value (`Vcpu.pin_sysreg`).

    The machine checks pinned registers itself on every interrupt that reaches EL2 (at least
    once per guard interval, `Vcpu.arm_guard`) and reports only a mismatch: `value` is what the
    register holds, `pinned`/`alt`/`mask` what it was pinned to. The kernel has not run since; unless
    the hypervisor writes the register (or halts), it resumes with the forged value.
    """

    reg: SysReg
    value: int
    pinned: int
    mask: int
    alt: int


Event = CpuStart | Hvc | Smc | Stage2Abort | SysregTrap | OtherTrap | Unexpected | GuardTrip


# --- what the hypervisor sees ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmmuWindow:
    """An SMMUv3 the hypervisor owns: its MMIO registers and the hypervisor memory reserved for
    its stream table, queues and IO page tables (inside [hyp_base, hyp_base + hyp_size))."""

    base: PhysAddr
    size: int
    pool: PhysAddr
    pool_size: int
    msi: tuple[PhysAddr, int] | None = None
    """The interrupt controller's MSI doorbell frame (base, size): devices signal interrupts
    by writing it, so an identity map of ordinary memory must include it."""


class Vcpu(Protocol):
    """One virtual CPU stopped in EL2 while its event is handled."""

    @property
    def index(self) -> int: ...

    @property
    def elr(self) -> int:
        """Address of the trapping instruction (or the next one, for HVC)."""
        ...

    @property
    def spsr(self) -> int: ...

    @property
    def esr(self) -> int: ...

    def x(self, n: int) -> int:
        """General-purpose register n (0..30); n == 31 reads as zero (XZR)."""
        ...

    def set_x(self, n: int, value: int) -> None:
        """Set x[n] on return to the guest; writes to n == 31 (XZR) are ignored."""
        ...

    def set_elr(self, value: int) -> None: ...

    def set_spsr(self, value: int) -> None: ...

    def skip(self) -> None:
        """Resume after the trapping instruction (ELR += 4)."""
        ...

    def write_sysreg(self, reg: SysReg, value: int) -> None:
        """Queue an EL1 system-register write on this CPU (done before ERET)."""
        ...

    def read_sysreg(self, reg: SysReg) -> int:
        """Last value the hypervisor wrote or saw written to `reg` on this CPU (shadow)."""
        ...

    def set_stage2(self, vttbr: int, vtcr: int, hcr: int) -> None:
        """Queue VTCR_EL2, VTTBR_EL2 and HCR_EL2 writes on this CPU, then a full TLB flush."""
        ...

    def inject_abort(self, esr: int, far: int) -> None:
        """Deliver a synchronous exception to EL1 (via VBAR_EL1) instead of resuming at ELR."""
        ...

    def smc_passthrough(self) -> None:
        """Forward a trapped SMC (PSCI) to the firmware and resume after it."""
        ...

    def arm_guard(self, interval_us: int) -> None:
        """Take control of this CPU at least every `interval_us`, whatever EL1 does.

        Every physical interrupt then enters EL2 first and reaches the kernel as a virtual
        one, and an EL2 timer fires each interval; on each such entry the machine compares the
        pinned registers (`pin_sysreg`) and raises `GuardTrip` on a mismatch. Stays armed
        until the CPU restarts (a new `CpuStart`).
        """
        ...

    def pin_sysreg(self, reg: SysReg, value: int, mask: int = (1 << 64) - 1,
                   alt: int | None = None) -> None:
        """Have the guard check `reg & mask` in {value, alt} on this CPU (replaces a pin)."""
        ...

    def unpin_sysreg(self, reg: SysReg) -> None:
        """Stop checking `reg` on this CPU."""
        ...

    def enable_root_fast_path(self, regs: frozenset[SysReg]) -> None:
        """Let this CPU load, without a round trip, TTBRs of `regs` (TTBR0_EL1/TTBR1_EL1)
        whose base is in the machine's allowed set (`Platform.set_allowed_roots`); every other
        write still traps. Off again after the CPU restarts."""
        ...


CODE_RANGES_MAX = 512
"""Separate ranges `Platform.flush_code` takes per CPU and trap (adjacent ones merge): a
hypervisor that installs code in more pieces than this refuses to (a resource limit)."""


def code_runs(starts: Iterable[int], size: int) -> list[tuple[int, int]]:
    """[start, start + size) for each start, merged where they touch: the (pa, size) ranges
    to hand `Platform.flush_code`, in address order."""
    runs: list[tuple[int, int]] = []
    for lo in sorted(set(starts)):
        if runs and lo <= runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], lo + size - runs[-1][0]))
        else:
            runs.append((lo, size))
    return runs


class Platform(Protocol):
    """The machine as the hypervisor sees it: guest-physical memory and TLB maintenance."""

    @property
    def ram_base(self) -> PhysAddr: ...

    @property
    def ram_size(self) -> int: ...

    @property
    def hyp_base(self) -> PhysAddr:
        """Start of the memory reserved for the hypervisor (stage-2 tables live here)."""
        ...

    @property
    def hyp_size(self) -> int: ...

    @property
    def ncpus(self) -> int: ...

    def read(self, pa: PhysAddr, size: int) -> bytes:
        """Read guest RAM; raises `GuestMemoryError` outside RAM."""
        ...

    def write(self, pa: PhysAddr, data: bytes) -> None:
        """Write guest RAM; raises `GuestMemoryError` outside RAM."""
        ...

    def read_u64(self, pa: PhysAddr) -> int: ...

    def write_u64(self, pa: PhysAddr, value: int) -> None: ...

    def flush_tlb_all(self, cpu: Vcpu) -> None:
        """TLBI VMALLS12E1IS (all stage-1 and stage-2 entries of the VMID, all CPUs)."""
        ...

    def flush_tlb_ipa(self, cpu: Vcpu, ipa: PhysAddr) -> None:
        """TLBI IPAS2E1IS for one page, then VMALLE1IS (stage-1 entries built on it)."""
        ...

    def flush_code(self, cpu: Vcpu, pa: PhysAddr, size: int) -> None:
        """Make code the hypervisor wrote into [pa, pa + size) with `write` what every CPU
        fetches from there: carried out by `cpu` before it resumes (an emulator drops its
        translations of the range, hardware invalidates its instruction caches). Call it for
        exactly the bytes written: at most CODE_RANGES_MAX separate ranges per trap."""
        ...

    def write_code(self, cpu: Vcpu, pa: PhysAddr, data: bytes) -> None:
        """Write instruction bytes so that every CPU fetches them (text patching).

        A plain `write` into guest RAM bypasses an emulator's tracking of translated code
        (docs/qemu-platform.md issue 6); this store is carried out by `cpu` at EL2 before it resumes.
        """
        ...

    def set_allowed_roots(self, reg: SysReg, bases: Iterable[int]) -> None:
        """The TTBR bases (BADDR: ASID and CnP clear) of `reg` that CPUs with the root fast
        path load without a trap, replacing the previous set. A base dropped here is never
        loaded without a trap once this returns (removal is ordered before `roots_in_use`);
        the set is bounded: a base that does not fit is left out (its writes keep trapping)."""
        ...

    def roots_in_use(self, reg: SysReg) -> set[int]:
        """TTBR0_EL1 bases (BADDR) some CPU has loaded, or is loading through the fast path,
        now (`reg` must be TTBR0_EL1: user roots are the ones a kernel frees)."""
        ...

    def halt(self, reason: str) -> None:
        """Stop the machine: the run ends with `reason` as a hypervisor halt."""
        ...

    @property
    def smmu(self) -> SmmuWindow | None:
        """The board's SMMUv3 (None: no SMMU; then `mmio_*` are never called)."""
        ...

    def mmio_read(self, pa: PhysAddr, size: int) -> int:
        """Read a 4- or 8-byte device register (only inside `smmu`); raises `GuestMemoryError`
        elsewhere."""
        ...

    def mmio_write(self, pa: PhysAddr, size: int, value: int) -> None:
        """Write a 4- or 8-byte device register (only inside `smmu`); done when it returns."""
        ...

    def mmio_doorbell(self, cpu: Vcpu, pa: PhysAddr, value_pa: PhysAddr) -> None:
        """Queue on `cpu` (done at EL2, in order with its other commands, before it resumes
        the guest): write the u32 that hypervisor memory holds at `value_pa` *at that moment*
        into the 32-bit register `pa`. No round trip to the device model; a later ring never
        writes an older value."""
        ...


@runtime_checkable
class PteFastPath(Protocol):
    """Optional capability of a platform (attribute `pte_fast_path`): harmless kernel PTE
    stores carried out without a round trip, on a single-CPU machine.

    The hypervisor marks pages in two bitmaps: level-3 kernel table pages, and ordinary pages
    (a leaf mapping one is given PXN, nothing else). On an enabled CPU, a 64-bit store with a
    syndrome into an aligned slot of a marked table page that maps an ordinary page into an
    empty slot (PXN forced), or empties a slot that mapped one (then TLBI as `flush_tlb_ipa`
    of the table page), is done by the machine and logged; everything else traps as before.
    The hypervisor must `drain` the log and account for every entry before it decides anything.
    """

    def load(self, tables: bytes, ordinary: bytes) -> None:
        """Replace both bitmaps (bit n of byte n // 8 = page ram_base + n * 4 KB)."""
        ...

    def mark(self, pfn: int, table: bool, ordinary: bool) -> None:
        """Set one page's two bits."""
        ...

    def enable(self, cpu: Vcpu, on: bool) -> None:
        """Turn the fast path on or off for `cpu` (off again after the CPU restarts)."""
        ...

    def drain(self) -> list[tuple[int, int, int, int]]:
        """Every CPU's logged stores, oldest first, as (cpu, slot PA, old, stored), and
        forget them; safe while CPUs run and append (never from two callers at once)."""
        ...


@runtime_checkable
class Hypervisor(Protocol):
    """An EL2 policy. `handle` is called once per event, on the CPU that raised it."""

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None: ...


class GuestMemoryError(ValueError):
    """A guest-physical access outside RAM (a guest-controlled address was bad)."""
