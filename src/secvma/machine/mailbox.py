"""The mailbox server: the Platform implementation on QEMU, and the loop that serves traps.

Each vCPU has a mailbox page (layout.py). The trampoline writes a request and spins; this
loop sees `state == REQUEST`, decodes the saved syndrome into an `Event`, calls the
hypervisor, writes the queued commands and `state = RESPONSE`. Register reads and writes go
straight to the mailbox words through a `memoryview` over the mapped RAM file (zero copy).

Hot path (issue 14): a trap's header (ESR, FAR, HPFAR, ELR, SPSR) and an HVC's x0..x7 are
each read with one precompiled struct operation, MSR/MRS syndromes are decoded once per
encoding (cached), and an answer without commands is a single store of the state word (the
trampoline zeroes the command list before it posts a request).

`spin_us=None` busy-polls: one host core is burnt while the guest runs, for the lowest trap
latency (see `secvma bench micro`). With `spin_us` the loop spins that long after the last
trap, then sleeps between polls, each sleep longer than the last up to `IDLE_SLEEP_MAX_S`,
so an idle guest costs the host almost nothing and a busy one keeps the spinning latency.
While it spins it yields the core after each round of polls (`sched_yield`): on a loaded
host the spinning server and the spinning vCPU thread otherwise take turns at each other's
expense, and the vCPU thread waited in the run queue for most of a module load (one xfs load
with every PTE store trapping, load average ~6 on 2 cores: gaps between an answer and the
next trap summed to 1.6-3.2 s of 2.7-4.1 s, matching the vCPU thread's run-queue wait in
/proc schedstat; with the yield 0.7-0.9 s of 1.75-1.8 s).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from secvma.machine import layout
from secvma.machine.console import Console
from secvma.machine.errors import (
    GuestTimeout,
    ProtocolError,
    QemuDied,
    UnexpectedException,
)
from secvma.machine.qemu import QemuProcess
from secvma.machine.qtest import QtestClient
from secvma.platform import (
    CODE_RANGES_MAX,
    CpuStart,
    Event,
    GuardTrip,
    GuestMemoryError,
    Hvc,
    Hypervisor,
    OtherTrap,
    PhysAddr,
    Smc,
    SmmuWindow,
    Stage2Abort,
    SysReg,
    SysregTrap,
    Unexpected,
)

MASK64 = (1 << 64) - 1

EC_HVC64 = 0x16
EC_SMC64 = 0x17
EC_SYS64 = 0x18
EC_IABT_LOW = 0x20
EC_DABT_LOW = 0x24

PSCI_CPU_ON = (0xC4000003, 0x84000003)
PSCI_CPU_OFF = 0x84000002
STARVE_S = 20.0  # the guard's watchdog: an armed CPU silent this long (wall) halts the machine
HOUSEKEEP_S = 0.002  # console, QEMU liveness, deadline and watchdog checks at most this often
HOOK_S = 0.0002  # the hypervisor's `poll` and the caller's poll hook at most this often
DEFAULT_SPIN_US = 1000.0  # spin this long after a trap before sleeping (runner.boot's default)
IDLE_SLEEP_MIN_S = 0.00005  # first sleep once the spin window has passed without a trap
YIELD_WHILE_SPINNING = True  # spin-then-sleep yields the core between poll rounds (see above)
IDLE_SLEEP_MAX_S = 0.001  # longest sleep: bounds the extra latency of a trap after idling

# (op0, op1, CRn, CRm, op2) of the registers the trampoline can write
SYSREG_BY_ENCODING: dict[tuple[int, int, int, int, int], SysReg] = {
    (3, 0, 1, 0, 0): SysReg.SCTLR_EL1,
    (3, 0, 2, 0, 0): SysReg.TTBR0_EL1,
    (3, 0, 2, 0, 1): SysReg.TTBR1_EL1,
    (3, 0, 2, 0, 2): SysReg.TCR_EL1,
    (3, 0, 10, 2, 0): SysReg.MAIR_EL1,
    (3, 0, 10, 3, 0): SysReg.AMAIR_EL1,
    (3, 0, 13, 0, 1): SysReg.CONTEXTIDR_EL1,
    (3, 0, 5, 2, 0): SysReg.ESR_EL1,
    (3, 0, 6, 0, 0): SysReg.FAR_EL1,
    (3, 0, 5, 1, 0): SysReg.AFSR0_EL1,
    (3, 0, 5, 1, 1): SysReg.AFSR1_EL1,
    (3, 0, 4, 0, 1): SysReg.ELR_EL1,
    (3, 0, 4, 0, 0): SysReg.SPSR_EL1,
    (3, 0, 12, 0, 0): SysReg.VBAR_EL1,
    (2, 0, 0, 2, 2): SysReg.MDSCR_EL1,
}
ENCODING_BY_SYSREG = {v: k for k, v in SYSREG_BY_ENCODING.items()}

_SAVED_EL1 = {
    SysReg.SCTLR_EL1: layout.MB_SCTLR,
    SysReg.TTBR0_EL1: layout.MB_TTBR0,
    SysReg.TTBR1_EL1: layout.MB_TTBR1,
    SysReg.TCR_EL1: layout.MB_TCR,
    SysReg.MAIR_EL1: layout.MB_MAIR,
    SysReg.VBAR_EL1: layout.MB_VBAR,
}


# One struct operation per trap header and per register block (issue 14 item 2).
_HEADER_FIELDS = (layout.MB_ESR, layout.MB_FAR, layout.MB_HPFAR, layout.MB_ELR, layout.MB_SPSR)
assert all(f == layout.MB_ESR + 8 * i for i, f in enumerate(_HEADER_FIELDS)), "trap header not contiguous"
_HEADER = struct.Struct("<5Q")  # ESR, FAR, HPFAR, ELR, SPSR at MB_ESR
_X8 = struct.Struct("<8Q")
_X4 = struct.Struct("<4Q")
_CMD_Q = layout.CMD_SIZE // 8  # u64 words per command slot
assert layout.CODE_SYNC_MAX == CODE_RANGES_MAX, "the code sync list is the seam's limit"

SYSREG_DECODE_CACHE_MAX = 512  # distinct MSR/MRS encodings remembered (a guest cannot grow it further)
_sysreg_decode: dict[int, tuple[tuple[int, int, int, int, int], SysReg | None]] = {}


def decode_sysreg_iss(iss: int) -> tuple[tuple[int, int, int, int, int], SysReg | None]:
    """(op0, op1, CRn, CRm, op2) and the SysReg of an EC 0x18 ISS (Rt and direction ignored).

    Cached per encoding: a handful of registers trap, each thousands of times."""
    key = iss & 0x3FFC1E
    hit = _sysreg_decode.get(key)
    if hit is not None:
        return hit
    enc = ((iss >> 20) & 3, (iss >> 14) & 7, (iss >> 10) & 0xF, (iss >> 1) & 0xF, (iss >> 17) & 7)
    out = (enc, SYSREG_BY_ENCODING.get(enc))
    if len(_sysreg_decode) < SYSREG_DECODE_CACHE_MAX:
        _sysreg_decode[key] = out
    return out


def sysreg_iss_key(reg: SysReg) -> int:
    """The ISS of an MSR (write) to `reg` with Rt = 0: the trampoline fast-path table key."""
    op0, op1, crn, crm, op2 = ENCODING_BY_SYSREG[reg]
    return (op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (crm << 1)


@dataclass
class GuardStats:
    """What the interrupt guard did in a run (summed over CPUs; see layout "interrupt guard")."""

    armed_cpus: int
    irqs: int  # physical interrupts taken at EL2
    ticks: int  # guard timer expiries
    checks: int  # guard-table checks (one per interrupt exit)
    trips: int  # mismatches reported to the hypervisor
    sgis: int  # IPIs sent by EL2 for EL1
    lr_overflow: int  # interrupts lost because no list register and no queue slot was free
    ppi_fixes: int  # guard PPIs re-enabled after the kernel had disabled them
    irq_path_us: float  # mean time in the EL2 interrupt path, entry to ERET
    interval_us: float  # the armed period
    fgt: int  # ID_AA64MMFR0_EL1.FGT seen at EL2 (0: no fine-grained traps)


@dataclass
class RunResult:
    """How a run ended and what it cost."""

    exit: str  # "poweroff" | "halt" | "until"
    reason: str
    wall_s: float
    console: str
    qemu_rc: int | None
    traps: dict[str, int] = field(default_factory=dict)
    fast_traps: int = 0
    trampoline_traps: int = 0
    roundtrip_us: list[float] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)
    cntfrq: int = 0
    guard: GuardStats | None = None
    fast_root_traps: int = 0  # of fast_traps: TTBR writes answered by the root fast path
    fast_pte_traps: int = 0  # of fast_traps: kernel PTE stores done by the PTE fast path

    def roundtrip_stats(self) -> dict[str, float]:
        """Median, p99 and count of the trap round trips measured by the trampoline (µs)."""
        s = sorted(self.roundtrip_us)
        if not s:
            return {"n": 0}
        return {"n": len(s), "median": s[len(s) // 2], "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
                "min": s[0]}


class MailboxCpu:
    """`platform.Vcpu` for one vCPU stopped in the trampoline."""

    def __init__(self, server: MailboxServer, index: int):
        self.server = server
        self._index = index
        off = layout.mailbox_pa(index) - layout.RAM_BASE
        self.off = off
        self.q = server.q
        self.qx = (off + layout.MB_X) // 8
        self.q_elr = (off + layout.MB_ELR) // 8
        self.q_spsr = (off + layout.MB_SPSR) // 8
        self.q_esr = (off + layout.MB_ESR) // 8
        self.q_last = (off + layout.MB_LAST) // 8
        self.q_cmds = (off + layout.MB_CMDS) // 8
        self.u_state = (off + layout.MB_STATE) // 4
        self.u_kind = (off + layout.MB_KIND) // 4
        self.cmds: list[tuple[int, int, int]] = []
        self.code_ranges: list[list[int]] = []  # [pa, size] for OP_CODE_SYNC, this trap
        self.code_list = layout.CODE_SYNC_BASE + index * layout.CODE_SYNC_STRIDE
        self.shadow: dict[SysReg, int] = {}  # last value written, for registers not saved per trap
        self.written: dict[SysReg, int] = {}  # written during the current trap
        self.pending_entry: int | None = None
        self.last_rt_valid = False
        self.started = False
        self.pins: dict[SysReg, tuple[int, int, int]] = {}  # guard table: reg -> (mask, value, alt)
        self.guard_period = 0  # counter ticks, 0 while not armed
        self.trips = 0
        self.watch_seen = -1  # the watchdog's last view of this CPU's EL2 entries, and when
        self.watch_t = 0.0

    @property
    def index(self) -> int:
        return self._index

    @property
    def elr(self) -> int:
        return int(self.q[self.q_elr])

    @property
    def spsr(self) -> int:
        return int(self.q[self.q_spsr])

    @property
    def esr(self) -> int:
        return int(self.q[self.q_esr])

    def x(self, n: int) -> int:
        if n == 31:
            return 0
        if not 0 <= n < 31:
            raise ValueError(f"no register x{n}")
        return self.q[self.qx + n]

    def set_x(self, n: int, value: int) -> None:
        if not 0 <= n <= 31:
            raise ValueError(f"no register x{n}")
        if n != 31:
            self.q[self.qx + n] = value & MASK64

    def set_elr(self, value: int) -> None:
        self.q[self.q_elr] = value & MASK64

    def set_spsr(self, value: int) -> None:
        self.q[self.q_spsr] = value & MASK64

    def skip(self) -> None:
        self.q[self.q_elr] = (self.q[self.q_elr] + 4) & MASK64

    def write_sysreg(self, reg: SysReg, value: int) -> None:
        self.cmds.append((layout.OP_MSR, int(reg), value & MASK64))
        self.shadow[reg] = value & MASK64
        self.written[reg] = value & MASK64
        if reg is SysReg.TTBR0_EL1:  # in use from this decision on (roots_in_use), not only
            self.q[(self.off + layout.MB_NEXT_TTBR0) >> 3] = value & MASK64  # once loaded

    def read_sysreg(self, reg: SysReg) -> int:
        """The register's value as this trap sees it.

        A write queued during this trap wins; otherwise the value the trampoline saved at trap
        entry (SCTLR, TTBR0/1, TCR, MAIR, VBAR: the guest may have changed them since the
        hypervisor last wrote them, VBAR_EL1 without trapping at all); otherwise the last value
        written through the hypervisor (0 if never).
        """
        if reg in self.written:
            return self.written[reg]
        off = _SAVED_EL1.get(reg)
        if off is not None:
            return int(self.q[(self.off + off) // 8])
        return self.shadow.get(reg, 0)

    def el1_saved(self, field_off: int) -> int:
        """An EL1 register the trampoline saved at this trap (layout.MB_SCTLR ... MB_SP_EL1)."""
        return int(self.q[(self.off + field_off) // 8])

    def set_stage2(self, vttbr: int, vtcr: int, hcr: int) -> None:
        self.cmds += [(layout.OP_VTCR, vtcr, 0), (layout.OP_VTTBR, vttbr, 0),
                      (layout.OP_TLBI_ALL, 0, 0), (layout.OP_HCR, hcr, 0)]

    def inject_abort(self, esr: int, far: int) -> None:
        self.cmds.append((layout.OP_INJECT, esr & MASK64, far & MASK64))

    def smc_passthrough(self) -> None:
        """Forward the trapped SMC (PSCI) to the firmware from EL2 and resume after it.

        CPU_ON is redirected through the trampoline: the target CPU starts in EL2 first and
        then enters the kernel's entry point at EL1 (otherwise it would run the kernel at EL2,
        outside the hypervisor's control).
        """
        fid = self.x(0) & 0xFFFFFFFF
        if fid == PSCI_CPU_OFF:
            self.guard_period = 0  # nothing runs there any more: not watched
        if fid in PSCI_CPU_ON:
            target = self.x(1) & 0xFF
            if target < self.server.ncpus:
                self.server.cpus[target].pending_entry = self.x(2)
                self.set_x(2, layout.TRAMPOLINE_BASE)
        self.skip()
        self.cmds.append((layout.OP_SMC, 0, 0))

    # ---- interrupt guard ---------------------------------------------------------------
    def arm_guard(self, interval_us: int) -> None:
        if not 100 <= interval_us <= 10_000_000:
            raise ValueError(f"guard interval {interval_us} µs outside 100 µs .. 10 s")
        freq = int(self.q[(self.off + layout.MB_CNTFRQ) // 8]) or 62_500_000
        self.guard_period = max(1, interval_us * freq // 1_000_000)
        self.watch_seen = -1
        self.cmds.append((layout.OP_GUARD, self.guard_period, 0))

    def pin_sysreg(self, reg: SysReg, value: int, mask: int = MASK64, alt: int | None = None) -> None:
        mask &= MASK64
        self.pins[SysReg(reg)] = (mask, value & mask, (value if alt is None else alt) & mask)
        self._write_pins()

    def unpin_sysreg(self, reg: SysReg) -> None:
        if self.pins.pop(reg, None) is not None:
            self._write_pins()

    def _write_pins(self) -> None:
        """Rewrite this CPU's guard table (the CPU is stopped here, so no torn entry is seen)."""
        if len(self.pins) > layout.GUARD_MAX:
            raise ValueError(f"at most {layout.GUARD_MAX} pinned registers")
        mm, base = self.server.mm, self.off + layout.MB_GUARDTAB
        for i, (reg, (mask, value, alt)) in enumerate(self.pins.items()):
            struct.pack_into("<IIQQQQ", mm, base + i * layout.GUARD_ENTRY_SIZE, int(reg), layout.GUARD_ON,
                             mask, value, alt, 0)
        struct.pack_into("<IIQQQQ", mm, base + len(self.pins) * layout.GUARD_ENTRY_SIZE, 0, 0, 0, 0, 0, 0)

    def guard_trip(self) -> GuardTrip:
        """The mismatch the trampoline reported (KIND_GUARD)."""
        hit = int(self.q[(self.off + layout.MB_GUARD_HIT) // 8])
        if not 0 <= hit < len(self.pins):
            raise ProtocolError(f"cpu{self.index}: guard hit {hit} outside its {len(self.pins)} pins",
                                last_pc=self.elr)
        reg, mask, value, alt, seen = struct.unpack_from(
            "<I4xQQQQ", self.server.mm, self.off + layout.MB_GUARDTAB + hit * layout.GUARD_ENTRY_SIZE)
        self.trips += 1
        return GuardTrip(SysReg(reg), seen, value, mask, alt)

    def counter(self, field_off: int) -> int:
        """A u64 counter of this CPU's mailbox (layout.MB_IRQS, MB_TICKS, ...)."""
        return int(self.q[(self.off + field_off) // 8])

    def enable_root_fast_path(self, regs: frozenset[SysReg]) -> None:
        bits = 0
        for reg in regs:
            if reg not in ROOT_TABLE_INDEX:
                raise ValueError(f"no root fast path for {reg.name}")
            bits |= 1 << ROOT_TABLE_INDEX[reg]
        self.q[(self.off + layout.MB_ROOT_EN) >> 3] = bits

    def set_fast_path(self, regs: list[SysReg]) -> None:
        """Let the trampoline perform MSRs to `regs` itself, without a round trip to Python."""
        if len(regs) > layout.FAST_MAX:
            raise ValueError(f"at most {layout.FAST_MAX} fast-path registers")
        mm = self.server.mm
        base = self.off + layout.MB_FASTTAB
        for i, reg in enumerate(regs):
            struct.pack_into("<IIQ", mm, base + i * layout.FAST_ENTRY_SIZE, sysreg_iss_key(reg), int(reg), 0)
        struct.pack_into("<IIQ", mm, base + len(regs) * layout.FAST_ENTRY_SIZE, 0, 0, 0)


ROOT_TABLE_INDEX = {SysReg.TTBR0_EL1: 0, SysReg.TTBR1_EL1: 1}


class PteFast:
    """`platform.PteFastPath` on the trampoline (layout "PTE fast path")."""

    def __init__(self, server: MailboxServer) -> None:
        self.server = server
        self.mm = server.mm
        self.tables = layout.PTE_TABLE_MAP - layout.RAM_BASE
        self.ordinary = layout.PTE_TARGET_MAP - layout.RAM_BASE
        self.base_pfn = layout.RAM_BASE >> 12
        self.npages = min(server.qemu.ram_size, layout.MAX_RAM) >> 12
        self.replayed = 0  # log entries handed to the hypervisor
        self.kept: list[tuple[int, int, int, int]] = []  # drained when guest RAM went away
        for c in server.cpus:  # a log left over from a previous run of the same RAM file
            off = layout.pte_log_pa(c.index) - layout.RAM_BASE
            self.mm[off:off + 16] = bytes(16)

    def load(self, tables: bytes, ordinary: bytes) -> None:
        n = layout.PTE_MAP_SIZE
        if len(tables) > n or len(ordinary) > n:
            raise ValueError(f"a PTE fast-path bitmap holds at most {n} bytes")
        self.mm[self.tables:self.tables + n] = tables.ljust(n, b"\0")
        self.mm[self.ordinary:self.ordinary + n] = ordinary.ljust(n, b"\0")

    def mark(self, pfn: int, table: bool, ordinary: bool) -> None:
        i = pfn - self.base_pfn
        if not 0 <= i < self.npages:
            return
        byte, bit = i >> 3, 1 << (i & 7)
        for base, on in ((self.tables, table), (self.ordinary, ordinary)):
            v = self.mm[base + byte]
            self.mm[base + byte] = (v | bit) if on else (v & ~bit)

    def enable(self, cpu: object, on: bool) -> None:
        c = self.server._cpu(cpu)
        self.server.q[(c.off + layout.MB_PTE_EN) >> 3] = int(on)

    def keep(self) -> None:
        """Drain the logs into memory before guest RAM is unmapped (`drain` returns them)."""
        if not self.server.released:
            self.kept = self.drain()

    def carried_out(self) -> int:
        """PTE stores the trampoline has carried out since the CPUs started (MB_FAST_PTES)."""
        if self.server.released:
            return 0
        return sum(int(self.server.q[(c.off + layout.MB_FAST_PTES) >> 3]) for c in self.server.cpus)

    def drain(self) -> list[tuple[int, int, int, int]]:
        out, self.kept = self.kept, []
        if self.server.released:  # the machine is gone: what it logged last was kept
            return out
        q = self.server.q
        for c in self.server.cpus:
            base = (layout.pte_log_pa(c.index) - layout.RAM_BASE) >> 3
            head, tail = int(q[base]), int(q[base + 1])  # head first: its entries are written
            if head == tail:
                continue
            if not 0 < head - tail <= layout.PTE_LOG_MAX:
                raise ProtocolError(f"cpu{c.index}: PTE fast-path log head {head}, tail {tail}")
            for k in range(tail, head):
                e = base + 2 + 3 * (k % layout.PTE_LOG_MAX)
                out.append((c.index, int(q[e]), int(q[e + 1]), int(q[e + 2])))
            q[base + 1] = head
        self.replayed += len(out)
        return out


class RootTable:
    """One shared root fast-path table in the hypervisor region (layout "root fast path").

    Python is its only writer; every CPU's trampoline reads it. Entries are single aligned
    u64 stores, so a CPU sees a slot either before or after a change, never torn."""

    def __init__(self, mm: memoryview, off: int) -> None:
        self.q = mm
        self.base = off >> 3  # u64 index of slot 0
        self.slots: dict[int, int] = {}  # BADDR -> slot
        self.left_out = 0  # bases that found their bucket full (they keep trapping)
        for i in range(layout.ROOT_BUCKETS * layout.ROOT_WAYS):
            self.q[self.base + i] = 0

    def set(self, bases: set[int]) -> bool:
        """Make the table hold `bases` (as far as buckets allow); True if any was removed."""
        gone = [b for b in self.slots if b not in bases]
        for b in gone:
            self.q[self.base + self.slots.pop(b)] = 0
        for b in bases:
            if b in self.slots or b == 0:
                continue
            first = ((b >> 12) % layout.ROOT_BUCKETS) * layout.ROOT_WAYS
            for slot in range(first, first + layout.ROOT_WAYS):
                if self.q[self.base + slot] == 0:
                    self.q[self.base + slot] = b
                    self.slots[b] = slot
                    break
            else:
                self.left_out += 1
        return bool(gone)


class MailboxServer:
    """`platform.Platform` over a running QEMU, and the trap-serving loop."""

    def __init__(self, qemu: QemuProcess, hypervisor: Hypervisor, *,
                 spin_us: float | None = None, kernel_entry: int | None = None):
        if qemu.mm is None:
            raise ValueError("QEMU must be started with shared RAM before serving mailboxes")
        self.qemu = qemu
        self.mm = qemu.mm
        self.q = memoryview(self.mm).cast("Q")
        self.u32 = memoryview(self.mm).cast("I")
        self.hyp = hypervisor
        self.ncpus = qemu.config.ncpus
        self.cpus = [MailboxCpu(self, i) for i in range(self.ncpus)]
        self.spin_us = spin_us
        self.kernel_entry = kernel_entry if kernel_entry is not None else qemu.config.kernel_addr
        self._trap_counts: dict[type, int] = {}  # by event type: no name lookup per trap
        self.rt_ticks: list[int] = []
        self._halt: str | None = None
        self._current: MailboxCpu | None = None
        tab = layout.ROOTTAB_BASE - layout.RAM_BASE
        self.root_tables = {reg: RootTable(self.q, tab + i * layout.ROOT_TABLE_SIZE)
                            for reg, i in ROOT_TABLE_INDEX.items()}
        self._fence = threading.Lock()
        self.starve_s = STARVE_S
        self._qtest: QtestClient | None = None
        self.idle_sleeps = 0  # sleeps of the serve loop (spin-then-sleep only)
        self.released = False  # guest RAM unmapped (the run is over)
        self.pte_fast_path = PteFast(self)

    # ---- Platform ----------------------------------------------------------------------
    @property
    def ram_base(self) -> PhysAddr:
        return PhysAddr(layout.RAM_BASE)

    @property
    def ram_size(self) -> int:
        return self.qemu.ram_size

    @property
    def hyp_base(self) -> PhysAddr:
        return PhysAddr(layout.HYP_BASE)

    @property
    def hyp_size(self) -> int:
        return layout.HYP_SIZE

    def set_allowed_roots(self, reg: SysReg, bases: Iterable[int]) -> None:
        table = self.root_tables.get(reg)
        if table is None:
            raise ValueError(f"no root fast path for {reg.name}")
        want = {b & layout.ROOT_BADDR for b in bases}
        if table.set(want):
            # store -> load fence before any roots_in_use read (x86 TSO may reorder a store
            # with a later load; a lock's atomic read-modify-write may not)
            with self._fence:
                pass

    def roots_in_use(self, reg: SysReg) -> set[int]:
        if reg is not SysReg.TTBR0_EL1:
            raise ValueError("roots in use are tracked for TTBR0_EL1 only")
        out: set[int] = set()
        for c in self.cpus:
            for f in (layout.MB_CUR_TTBR0, layout.MB_NEXT_TTBR0):
                v = int(self.q[(c.off + f) >> 3]) & layout.ROOT_BADDR
                if v:
                    out.add(v)
        return out

    def _off(self, pa: int, size: int) -> int:
        off = pa - layout.RAM_BASE
        if size < 0 or off < 0 or off + size > self.qemu.ram_size:
            raise GuestMemoryError(f"guest-physical range {pa:#x}+{size:#x} is outside RAM")
        return off

    def read(self, pa: PhysAddr, size: int) -> bytes:
        off = self._off(pa, size)
        return self.mm[off:off + size]

    def write(self, pa: PhysAddr, data: bytes) -> None:
        n = len(data)
        off = pa - layout.RAM_BASE
        if off < 0 or off + n > self.qemu.ram_size:
            raise GuestMemoryError(f"guest-physical range {pa:#x}+{n:#x} is outside RAM")
        self.mm[off:off + n] = data

    def read_u64(self, pa: PhysAddr) -> int:
        off = self._off(pa, 8)
        if off & 7:
            return int.from_bytes(self.mm[off:off + 8], "little")
        return int(self.q[off >> 3])

    def write_u64(self, pa: PhysAddr, value: int) -> None:
        off = self._off(pa, 8)
        if off & 7:
            self.mm[off:off + 8] = (value & MASK64).to_bytes(8, "little")
        else:
            self.q[off >> 3] = value & MASK64

    def _cpu(self, cpu: object) -> MailboxCpu:
        if not isinstance(cpu, MailboxCpu):
            raise TypeError("not a vCPU of this machine")
        return cpu

    def flush_tlb_all(self, cpu: object) -> None:
        self._cpu(cpu).cmds.append((layout.OP_TLBI_ALL, 0, 0))

    def flush_tlb_ipa(self, cpu: object, ipa: PhysAddr) -> None:
        self._cpu(cpu).cmds.append((layout.OP_TLBI_IPA, ipa & ~0xFFF, 0))

    def flush_code(self, cpu: object, pa: PhysAddr, size: int) -> None:
        """One OP_CODE_SYNC per trap, where the first call queues it; its list grows with each
        call (a range overlapping or adjacent to the last one extends it). Rounded out to
        whole u64s."""
        c = self._cpu(cpu)
        lo, hi = pa & ~7, (pa + size + 7) & ~7
        self._off(lo, hi - lo)
        if size <= 0:
            return
        ranges = c.code_ranges
        if ranges and ranges[-1][0] <= lo <= ranges[-1][0] + ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], hi - ranges[-1][0])
            return
        if len(ranges) >= layout.CODE_SYNC_MAX:
            raise ValueError(f"more than {layout.CODE_SYNC_MAX} code ranges in one trap")
        if not ranges:
            c.cmds.append((layout.OP_CODE_SYNC, c.code_list, 0))  # count set by _respond
        ranges.append([lo, hi - lo])

    def write_code(self, cpu: object, pa: PhysAddr, data: bytes) -> None:
        """Aligned 32-bit stores by `cpu` at EL2 (partial words merged with RAM's bytes).

        QEMU invalidates exactly the translated blocks these stores hit (its IC IALLUIS is a
        no-op: only stores make it drop translations; see `flush_code`).
        """
        c = self._cpu(cpu)
        lo, hi = pa & ~3, -(-(pa + len(data)) // 4) * 4
        words = bytearray(self.read(PhysAddr(lo), hi - lo))
        words[pa - lo:pa - lo + len(data)] = data
        for off in range(0, hi - lo, 4):
            c.cmds.append((layout.OP_STR32, lo + off, int.from_bytes(words[off:off + 4], "little")))

    @property
    def smmu(self) -> SmmuWindow | None:
        if not self.qemu.config.smmu:
            return None
        return SmmuWindow(PhysAddr(layout.SMMU_BASE), layout.SMMU_SIZE,
                          PhysAddr(layout.SMMU_POOL_BASE), layout.SMMU_POOL_SIZE,
                          None if layout.GIC_MSI_FRAME is None else
                          (PhysAddr(layout.GIC_MSI_FRAME[0]), layout.GIC_MSI_FRAME[1]))

    def _mmio(self, pa: int, size: int) -> QtestClient:
        if not self.qemu.config.smmu or not (
                pa >= layout.SMMU_BASE and pa + size <= layout.SMMU_BASE + layout.SMMU_SIZE):
            raise GuestMemoryError(f"no hypervisor-owned device register at {pa:#x}")
        if self._qtest is None:
            self._qtest = QtestClient(self.qemu.qtest_path)
        return self._qtest

    def mmio_read(self, pa: PhysAddr, size: int) -> int:
        return self._mmio(pa, size).read(pa, size)

    def mmio_write(self, pa: PhysAddr, size: int, value: int) -> None:
        self._mmio(pa, size).write(pa, size, value)

    def mmio_doorbell(self, cpu: object, pa: PhysAddr, value_pa: PhysAddr) -> None:
        self._mmio(pa, 4)  # validates the register
        if not layout.HYP_BASE <= value_pa <= layout.HYP_BASE + layout.HYP_SIZE - 4:
            raise GuestMemoryError(f"doorbell value at {value_pa:#x} is not hypervisor memory")
        self._cpu(cpu).cmds.append((layout.OP_DOORBELL, pa, value_pa))

    def halt(self, reason: str) -> None:
        self._halt = reason
        if self._current is not None:
            self._current.cmds.append((layout.OP_HALT, 0, 0))

    # ---- decoding ----------------------------------------------------------------------
    def _event(self, cpu: MailboxCpu) -> Event:
        kind = self.u32[cpu.u_kind]
        if kind == layout.KIND_TRAP:
            mm, off = self.mm, cpu.off
            esr = self.q[cpu.q_esr]  # alone first: an HVC needs no FAR/HPFAR/SPSR
            ec = esr >> 26
            if ec == EC_HVC64:
                return Hvc(esr & 0xFFFF, _X8.unpack_from(mm, off + layout.MB_X))
            esr, far, hpfar, _elr, spsr = _HEADER.unpack_from(mm, off + layout.MB_ESR)
            ec = esr >> 26
            if ec in (EC_DABT_LOW, EC_IABT_LOW):
                ipa: PhysAddr = ((hpfar >> 4) << 12) | (far & 0xFFF)  # no NewType call on the hot path
                return Stage2Abort(esr, far, ipa, ec == EC_IABT_LOW,
                                   ec == EC_DABT_LOW and esr & (1 << 6) != 0,
                                   (spsr & 0xF) == 0, esr & (1 << 7) != 0)
            if ec == EC_SYS64:
                enc, reg = decode_sysreg_iss(esr)
                rt = (esr >> 5) & 0x1F
                is_write = not esr & 1
                value = cpu.x(rt) if is_write else 0
                return SysregTrap(enc, reg, is_write, rt, value)
            if ec == EC_SMC64:
                return Smc(esr & 0xFFFF, _X4.unpack_from(mm, off + layout.MB_X))
            return OtherTrap(esr, far)
        if kind == layout.KIND_HELLO:
            if cpu.pending_entry is not None:
                cpu.set_elr(cpu.pending_entry)
                cpu.pending_entry = None
            elif cpu.index == 0 and not cpu.started:
                cpu.set_elr(self.kernel_entry)
            cpu.started = True
            cpu.last_rt_valid = False
            cpu.pins.clear()  # the trampoline emptied the guard table and disarmed the guard
            cpu.guard_period = 0
            return CpuStart(cpu.elr, cpu.x(0), cpu.counter(layout.MB_FEAT1))
        if kind == layout.KIND_GUARD:
            return cpu.guard_trip()
        if kind == layout.KIND_UNEXPECTED:
            vec = int(self.q[(cpu.off + layout.MB_VEC) >> 3])
            return Unexpected(vec, cpu.esr, int(self.q[(cpu.off + layout.MB_FAR) >> 3]))
        raise ProtocolError(f"cpu{cpu.index} mailbox holds unknown request kind {kind}",
                            last_pc=cpu.elr)

    def _respond(self, cpu: MailboxCpu) -> None:
        cmds = cpu.cmds
        if cmds:  # else the list is already empty: the trampoline zeroed it before the request
            if len(cmds) >= layout.MAX_CMDS:
                raise ProtocolError(f"hypervisor queued {len(cmds)} EL2 commands on cpu{cpu.index}; "
                                    f"the trampoline takes {layout.MAX_CMDS - 1}")
            q, i = self.q, cpu.q_cmds
            if cpu.code_ranges:
                self._write_code_list(cpu)
            for op, a, b in cmds:
                if op == layout.OP_CODE_SYNC:
                    b = len(cpu.code_ranges)
                q[i] = op
                q[i + 1] = a
                q[i + 2] = b
                i += _CMD_Q
            q[i] = layout.OP_END
            cmds.clear()
            cpu.code_ranges.clear()
        self.u32[cpu.u_state] = layout.STATE_RESPONSE

    @property
    def traps(self) -> Counter[str]:
        """Traps served so far by event type name (`unexpected` for an EL2 vector's)."""
        return Counter({("unexpected" if t is Unexpected else t.__name__): n
                        for t, n in self._trap_counts.items()})

    def _write_code_list(self, cpu: MailboxCpu) -> None:
        base = (cpu.code_list - layout.RAM_BASE) >> 3
        for k, (pa, size) in enumerate(cpu.code_ranges):
            self.q[base + 2 * k] = pa
            self.q[base + 2 * k + 1] = size

    def _serve_one(self, cpu: MailboxCpu) -> None:
        if cpu.last_rt_valid:
            self.rt_ticks.append(self.q[cpu.q_last])
        ev = self._event(cpu)
        kind = type(ev)
        counts = self._trap_counts
        counts[kind] = counts.get(kind, 0) + 1
        if kind is Unexpected:
            assert isinstance(ev, Unexpected)
            raise UnexpectedException(
                f"cpu{cpu.index}: exception at EL2 vector {ev.vector:#x} (ESR {ev.esr:#x}, "
                f"FAR {ev.far:#x}) - the trampoline never expects it", last_pc=cpu.elr)
        if cpu.written:
            cpu.written.clear()
        self._current = cpu
        self.hyp.handle(self, cpu, ev)
        self._current = None
        cpu.last_rt_valid = kind is not CpuStart
        self._respond(cpu)

    # ---- the loop ----------------------------------------------------------------------
    def serve(self, console: Console, timeout_s: float,
              until: Callable[[Console], bool] | None = None,
              poll_hook: Callable[[MailboxServer], None] | None = None) -> RunResult:
        """Serve traps until QEMU exits, the hypervisor halts, `until(console)` or the timeout."""
        qemu = self.qemu
        deadline = qemu.t_start + timeout_s
        states = [(cpu, cpu.u_state) for cpu in self.cpus]
        u32 = self.u32
        single = states[0] if len(states) == 1 else None
        spin_s = None if self.spin_us is None else self.spin_us / 1e6
        yield_spin = spin_s is not None and YIELD_WHILE_SPINNING
        idle_hook = getattr(self.hyp, "poll", None)
        perf_counter = time.perf_counter
        last_trap = next_hook = next_house = perf_counter()
        sleep_s = IDLE_SLEEP_MIN_S
        polls = 512  # state-word reads per round: 1 once the loop sleeps between rounds
        exit_kind, reason = "poweroff", ""
        while True:
            n = 0
            hit: MailboxCpu | None = None
            if single is not None:
                c0, s0 = single
                while n < polls:
                    if u32[s0] == 1:
                        hit = c0
                        break
                    n += 1
            else:
                while n < polls and hit is None:
                    for c, s in states:
                        if u32[s] == 1:
                            hit = c
                            break
                    n += 1
            if hit is not None:
                self._serve_one(hit)
                if self._halt is not None:
                    exit_kind, reason = "halt", self._halt
                    break
                if spin_s is not None:
                    last_trap = perf_counter()
                    sleep_s, polls = IDLE_SLEEP_MIN_S, 512
                continue
            now = perf_counter()
            if now >= next_hook:  # the hypervisor's and the caller's pollers
                next_hook = now + HOOK_S
                if idle_hook is not None:
                    idle_hook(self)
                if poll_hook is not None:
                    poll_hook(self)
                if self._halt is not None:
                    exit_kind, reason = "halt", self._halt
                    break
            if now >= next_house:  # the machine's housekeeping
                next_house = now + HOUSEKEEP_S
                console.poll()
                if not qemu.alive():
                    break
                if until is not None and until(console):
                    exit_kind, reason = "until", "stop condition met"
                    break
                starved = self._starved(now)
                if starved is not None:
                    exit_kind, reason = "halt", starved
                    break
                if now > deadline:
                    pcs = qemu.last_pcs()
                    raise GuestTimeout(
                        f"guest still running after {timeout_s:.0f} s; console tail:\n{console.tail()}",
                        last_pc=pcs[0] if pcs else None)
            if spin_s is not None and now - last_trap > spin_s:
                self.idle_sleeps += 1
                polls = 1
                time.sleep(sleep_s)
                sleep_s = min(sleep_s * 2, IDLE_SLEEP_MAX_S)
            elif yield_spin:  # spinning: let a runnable QEMU thread have this core
                os.sched_yield()
        return self._finish(console, exit_kind, reason)

    def _starved(self, now: float) -> str | None:
        """The guard's watchdog: an armed CPU that entered EL2 for nothing in `starve_s`.

        The guard timer brings every armed CPU to EL2 each interval, so a long silence means the
        kernel disabled the guard's interrupt (limit 1 of docs/el1-registers.md) and stays away
        from every trap: the machine is halted rather than left unchecked. Wall clock, so the
        bound is generous (a loaded host may deschedule QEMU for a while).
        """
        for c in self.cpus:
            if not c.guard_period or not c.started:
                continue
            seen = c.counter(layout.MB_IRQS) + c.counter(layout.MB_NTR)
            if seen != c.watch_seen or self.u32[(c.off + layout.MB_STATE) >> 2] != 0:
                c.watch_seen, c.watch_t = seen, now
            elif now - c.watch_t > self.starve_s:
                return (f"guard starved: cpu{c.index} entered EL2 for nothing in {self.starve_s:.0f} s "
                        f"(guard interval {c.guard_period * 1e6 / (c.counter(layout.MB_CNTFRQ) or 1):.0f} "
                        "us): its kernel disabled the guard's interrupt")
        return None

    def _finish(self, console: Console, exit_kind: str, reason: str) -> RunResult:
        qemu = self.qemu
        wall = time.perf_counter() - qemu.t_start
        cntfrq = int(self.q[(self.cpus[0].off + layout.MB_CNTFRQ) >> 3]) or 62_500_000
        fast = sum(int(self.q[(c.off + layout.MB_FAST) >> 3]) for c in self.cpus)
        ntr = sum(int(self.q[(c.off + layout.MB_NTR) >> 3]) for c in self.cpus)
        guard = self.guard_stats(cntfrq)
        fast_roots = sum(int(self.q[(c.off + layout.MB_FAST_ROOTS) >> 3]) for c in self.cpus)
        fast_ptes = sum(int(self.q[(c.off + layout.MB_FAST_PTES) >> 3]) for c in self.cpus)
        if exit_kind != "poweroff":  # read every counter above: release() unmaps guest RAM
            self.release()
            qemu.stop()
        else:
            assert qemu.proc is not None
            rc = qemu.proc.wait()
            if rc != 0:
                console.poll()
                raise QemuDied(f"QEMU exited with status {rc}: {qemu.stderr_tail()}\n"
                               f"console tail:\n{console.tail()}")
        console.poll()
        rt = [t * 1e6 / cntfrq for t in self.rt_ticks]
        return RunResult(exit_kind, reason, wall, console.text,
                         qemu.proc.returncode if qemu.proc else None, dict(self.traps), fast, ntr, rt,
                         {k.decode(errors="replace"): v for k, v in console.first_seen.items()},
                         cntfrq, guard, fast_roots, fast_ptes)

    def el2_counters(self) -> dict[str, int]:
        """The trampoline's own counters, summed over CPUs: every trap it took (`ntr`), those
        answered at EL2 without Python (`fast`: MSR, root and PTE fast paths; `fast_roots`,
        `fast_ptes` of them) and the round-trip ticks of the rest (`ticks`, at `cntfrq`)."""
        def total(off: int) -> int:
            return sum(c.counter(off) for c in self.cpus)

        return {"ntr": total(layout.MB_NTR), "fast": total(layout.MB_FAST),
                "fast_roots": total(layout.MB_FAST_ROOTS), "fast_ptes": total(layout.MB_FAST_PTES),
                "ticks": total(layout.MB_TOT), "cntfrq": self.cpus[0].counter(layout.MB_CNTFRQ)}

    def guard_stats(self, cntfrq: int) -> GuardStats | None:
        """The interrupt guard's counters, or None when no CPU armed it."""
        armed = [c for c in self.cpus if c.counter(layout.MB_GUARD_PERIOD)]
        if not armed:
            return None
        irqs = sum(c.counter(layout.MB_IRQS) for c in armed)
        ticks = sum(c.counter(layout.MB_IRQ_TICKS) for c in armed)
        return GuardStats(
            len(armed), irqs, sum(c.counter(layout.MB_TICKS) for c in armed),
            sum(c.counter(layout.MB_CHECKS) for c in armed), sum(c.trips for c in armed),
            sum(c.counter(layout.MB_SGIS) for c in armed),
            sum(c.counter(layout.MB_LR_OVF) for c in armed),
            sum(c.counter(layout.MB_PPI_FIX) for c in armed),
            ticks * 1e6 / cntfrq / irqs if irqs else 0.0,
            armed[0].counter(layout.MB_GUARD_PERIOD) * 1e6 / cntfrq,
            (self.cpus[0].counter(layout.MB_FEAT) >> 56) & 0xF)

    def release(self) -> None:
        """Drop the views on guest RAM so the mapping can be closed."""
        if self._qtest is not None:
            self._qtest.close()
            self._qtest = None
        self.pte_fast_path.keep()
        self.released = True
        self.q.release()
        self.u32.release()
