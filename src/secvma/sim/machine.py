"""A pure-Python machine for KPCore logic tests: RAM in a bytearray, a recording vCPU, a tiny
"testbed kernel" (tables built like guest/testbed/kernel/pgtable.c) and an EL1 CPU model that
executes one store instruction at a time through the real stage-1 + stage-2 walk
(`secvma.arch.walk.translate`) and raises the same Stage2Abort events the mailbox would.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from secvma.arch.esr import DataAbort
from secvma.arch.insn import Access, AddrMode, StoreKind, StoreOp, decode_store
from secvma.arch.walk import AccessType, Fault, translate
from secvma.hvabi import BOOT_INFO_MAGIC, BOOT_INFO_VERSION, BootInfo
from secvma.kpcore import KPCore, make_policy
from secvma.kpcore.sysregs import TTBR_BADDR
from secvma.platform import (
    CpuStart,
    Event,
    GuardTrip,
    GuestMemoryError,
    Hvc,
    Hypervisor,
    PhysAddr,
    SmmuWindow,
    Stage2Abort,
    SysReg,
    SysregTrap,
    VirtAddr,
)

if TYPE_CHECKING:
    from secvma.sim.smmu import FakeSmmu

RAM_BASE = 0x4000_0000
HYP_SIZE = 0x200_0000
RAM_SIZE = 96 << 20
KERNEL_PA = RAM_BASE + HYP_SIZE
KIMAGE_VADDR = 0xFFFF_8000_0800_0000
PAGE_OFFSET = 0xFFFF_0000_0000_0000
MASK64 = (1 << 64) - 1
TVM_REGS = (SysReg.SCTLR_EL1, SysReg.TTBR0_EL1, SysReg.TTBR1_EL1, SysReg.TCR_EL1,
            SysReg.MAIR_EL1, SysReg.AMAIR_EL1, SysReg.CONTEXTIDR_EL1, SysReg.ESR_EL1,
            SysReg.FAR_EL1, SysReg.AFSR0_EL1, SysReg.AFSR1_EL1)
ENC = {SysReg.SCTLR_EL1: (3, 0, 1, 0, 0), SysReg.TTBR0_EL1: (3, 0, 2, 0, 0),
       SysReg.TTBR1_EL1: (3, 0, 2, 0, 1), SysReg.TCR_EL1: (3, 0, 2, 0, 2),
       SysReg.MAIR_EL1: (3, 0, 10, 2, 0), SysReg.AMAIR_EL1: (3, 0, 10, 3, 0),
       SysReg.CONTEXTIDR_EL1: (3, 0, 13, 0, 1), SysReg.ESR_EL1: (3, 0, 5, 2, 0),
       SysReg.FAR_EL1: (3, 0, 6, 0, 0), SysReg.AFSR0_EL1: (3, 0, 5, 1, 0),
       SysReg.AFSR1_EL1: (3, 0, 5, 1, 1), SysReg.VBAR_EL1: (3, 0, 12, 0, 0)}

# layout of the fake kernel image (2 MiB sections, as kernel.lds)
TEXT = KERNEL_PA
RODATA = TEXT + 0x20_0000
VDSO = RODATA + 0x10_0000
INIT = RODATA + 0x20_0000
DATA = INIT + 0x20_0000
BSS = DATA + 0x20_0000
PGDIR = BSS + 0x20_0000
ZERO_PAGE = PGDIR
SWAPPER = PGDIR + 0x1000
IDMAP = BSS
END = PGDIR + 0x20_0000
RESV = END
MOD_TEXT_POOL = RESV + 0x1000
MOD_RO_POOL = RESV + 0x40_1000
PT_POOL = RESV + 0xA0_0000
PT_POOL_END = PT_POOL + 0x80_0000
PT_EARLY = PT_POOL_END - 0x20_0000
RESV_END = RESV + 0x140_0000
RAM_END = RAM_BASE + RAM_SIZE

ATTR_NORMAL = (1 << 0) | (1 << 10) | (3 << 8) | (1 << 2)  # valid, AF, SH inner, attr 1
PTE_PAGE = 1 << 1
PTE_RDONLY = 1 << 7
PXN = 1 << 53
UXN = 1 << 54
TCR = 16 | (1 << 8) | (1 << 10) | (3 << 12) | (16 << 16) | (1 << 22) | (1 << 24) | (1 << 26) \
    | (3 << 28) | (2 << 30) | (1 << 36) | (2 << 32)
MAIR = 0x04FF00
SCTLR = 0x30D00800 | 1 | 4 | 8 | (1 << 12) | (1 << 16) | (1 << 18)


class FakePlatform:
    """`Platform` over a bytearray, recording flushes and halts."""

    def __init__(self, ram_size: int = RAM_SIZE, *, smmu: bool = False, ncpus: int = 2,
                 ram: bytearray | None = None) -> None:
        """`ram`: a buffer of `ram_size` bytes to reuse, zeroed here (a fresh 96 MB bytearray
        costs a third of a second; the fuzzer reboots often)."""
        from secvma.sim.smmu import FakeSmmu

        self._ncpus = ncpus
        if ram is not None and len(ram) == ram_size:
            ctypes.memset((ctypes.c_char * ram_size).from_buffer(ram), 0, ram_size)
            self.ram = ram
        else:
            self.ram = bytearray(ram_size)
        self._size = ram_size
        self.flushes: list[tuple[str, int]] = []
        self.halted: str | None = None
        self.code_flushes = 0
        self.code_ranges: list[tuple[int, int]] = []  # flush_code calls, in order
        self.posted = 0
        self.smmu_dev: FakeSmmu | None = FakeSmmu(self) if smmu else None
        self.vcpus: list[FakeVcpu] = []  # CPUs whose TTBR0 counts for roots_in_use
        self.allowed: dict[SysReg, set[int]] = {SysReg.TTBR0_EL1: set(), SysReg.TTBR1_EL1: set()}
        self.allowed_log: list[tuple[str, SysReg, int]] = []  # ("add"|"remove", reg, base)

    @property
    def ram_base(self) -> PhysAddr:
        return PhysAddr(RAM_BASE)

    @property
    def ram_size(self) -> int:
        return self._size

    @property
    def hyp_base(self) -> PhysAddr:
        return PhysAddr(RAM_BASE)

    @property
    def hyp_size(self) -> int:
        return HYP_SIZE

    @property
    def ncpus(self) -> int:
        return self._ncpus

    def _off(self, pa: int, n: int) -> int:
        off = pa - RAM_BASE
        if off < 0 or n < 0 or off + n > self._size:
            raise GuestMemoryError(f"{pa:#x}+{n} outside RAM")
        return off

    def read(self, pa: PhysAddr, size: int) -> bytes:
        o = self._off(pa, size)
        return bytes(self.ram[o:o + size])

    def write(self, pa: PhysAddr, data: bytes) -> None:
        o = self._off(pa, len(data))
        self.ram[o:o + len(data)] = data

    def read_u64(self, pa: PhysAddr) -> int:
        o = self._off(pa, 8)
        return int(struct.unpack_from("<Q", self.ram, o)[0])

    def write_u64(self, pa: PhysAddr, value: int) -> None:
        o = self._off(pa, 8)
        struct.pack_into("<Q", self.ram, o, value & MASK64)

    def flush_tlb_all(self, cpu: object) -> None:
        self.flushes.append(("all", 0))

    def flush_tlb_ipa(self, cpu: object, ipa: PhysAddr) -> None:
        self.flushes.append(("ipa", ipa))

    def flush_code(self, cpu: object, pa: PhysAddr, size: int) -> None:
        self._off(pa, size)
        self.code_flushes += 1
        self.code_ranges.append((pa, size))

    def write_code(self, cpu: object, pa: PhysAddr, data: bytes) -> None:
        self.write(pa, data)
        self.code_flushes += 1

    def set_allowed_roots(self, reg: SysReg, bases: Iterable[int]) -> None:
        new = {b & TTBR_BADDR for b in bases} - {0}
        old = self.allowed[reg]
        self.allowed_log += [("remove", reg, b) for b in sorted(old - new)]
        self.allowed_log += [("add", reg, b) for b in sorted(new - old)]
        self.allowed[reg] = new

    def roots_in_use(self, reg: SysReg) -> set[int]:
        assert reg is SysReg.TTBR0_EL1
        return {v.sysregs.get(reg, 0) & TTBR_BADDR for v in self.vcpus} - {0}

    def halt(self, reason: str) -> None:
        self.halted = reason

    @property
    def smmu(self) -> SmmuWindow | None:
        return None if self.smmu_dev is None else self.smmu_dev.window

    def mmio_read(self, pa: PhysAddr, size: int) -> int:
        if self.smmu_dev is None:
            raise GuestMemoryError(f"no device register at {pa:#x}")
        return self.smmu_dev.read(pa, size)

    def mmio_write(self, pa: PhysAddr, size: int, value: int) -> None:
        if self.smmu_dev is None:
            raise GuestMemoryError(f"no device register at {pa:#x}")
        self.smmu_dev.write(pa, size, value)

    def mmio_doorbell(self, cpu: object, pa: PhysAddr, value_pa: PhysAddr) -> None:
        self.posted += 1  # the fake rings at once (the trampoline would before ERET)
        self.mmio_write(pa, 4, int.from_bytes(self.read(value_pa, 4), "little"))


@dataclass
class FakeVcpu:
    """`Vcpu` recording what the hypervisor asked for."""

    index: int = 0
    regs: list[int] = field(default_factory=lambda: [0] * 31)
    elr: int = 0
    spsr: int = 0x3C5
    esr: int = 0
    sysregs: dict[SysReg, int] = field(default_factory=dict)
    stage2: tuple[int, int, int] | None = None
    injected: list[tuple[int, int]] = field(default_factory=list)
    skips: int = 0
    smcs: int = 0
    writes: list[tuple[SysReg, int]] = field(default_factory=list)
    guard_us: int | None = None  # armed interrupt guard (arm_guard)
    pins: dict[SysReg, tuple[int, int, int]] = field(default_factory=dict)  # reg -> (mask, value, alt)
    root_fast: frozenset[SysReg] = frozenset()  # enable_root_fast_path

    def x(self, n: int) -> int:
        if not 0 <= n <= 31:
            raise ValueError(n)
        return 0 if n == 31 else self.regs[n]

    def set_x(self, n: int, value: int) -> None:
        if n != 31:
            self.regs[n] = value & MASK64

    def set_elr(self, value: int) -> None:
        self.elr = value & MASK64

    def set_spsr(self, value: int) -> None:
        self.spsr = value

    def skip(self) -> None:
        self.elr = (self.elr + 4) & MASK64
        self.skips += 1

    def write_sysreg(self, reg: SysReg, value: int) -> None:
        self.sysregs[reg] = value & MASK64
        self.writes.append((reg, value & MASK64))

    def read_sysreg(self, reg: SysReg) -> int:
        return self.sysregs.get(reg, 0)

    def set_stage2(self, vttbr: int, vtcr: int, hcr: int) -> None:
        self.stage2 = (vttbr, vtcr, hcr)

    def inject_abort(self, esr: int, far: int) -> None:
        self.injected.append((esr, far))

    def smc_passthrough(self) -> None:
        self.smcs += 1
        self.skip()

    def arm_guard(self, interval_us: int) -> None:
        self.guard_us = interval_us

    def pin_sysreg(self, reg: SysReg, value: int, mask: int = MASK64, alt: int | None = None) -> None:
        self.pins[reg] = (mask, value & mask, (value if alt is None else alt) & mask)

    def unpin_sysreg(self, reg: SysReg) -> None:
        self.pins.pop(reg, None)

    def enable_root_fast_path(self, regs: frozenset[SysReg]) -> None:
        self.root_fast = regs

    def fast_root(self, plat: FakePlatform, reg: SysReg, value: int) -> bool:
        """What the trampoline's root fast path would do with MSR reg, value: True if it
        loads it at EL2 (no trap)."""
        if reg not in self.root_fast or value & TTBR_BADDR not in plat.allowed[reg]:
            return False
        self.sysregs[reg] = value & MASK64
        return True

    def guard_check(self) -> GuardTrip | None:
        """What the machine's guard would report at an interrupt exit now (first mismatch)."""
        for reg, (mask, value, alt) in self.pins.items():
            seen = self.sysregs.get(reg, 0)
            if seen & mask not in (value, alt):
                return GuardTrip(reg, seen, value, mask, alt)
        return None

    @property
    def tvm(self) -> bool:
        return self.stage2 is not None and bool(self.stage2[2] & (1 << 26))


# --- the fake kernel: tables and boot info ----------------------------------------------------


class FakeKernel:
    """Builds swapper_pg_dir like the testbed's early_map_kernel (boot tables top-down)."""

    def __init__(self, plat: FakePlatform) -> None:
        self.plat = plat
        self.early_next = PT_POOL_END
        self.pool_next = PT_POOL
        self.page_next = RESV_END + 0x20_0000

    def alloc_early(self) -> int:
        self.early_next -= 0x1000
        self.plat.write(PhysAddr(self.early_next), bytes(4096))
        return self.early_next

    def alloc_pool(self) -> int:
        pa = self.pool_next
        self.pool_next += 0x1000
        return pa

    def alloc_page(self) -> int:
        pa = self.page_next
        self.page_next += 0x1000
        return pa

    def _next(self, table: int, idx: int) -> int:
        e = self.plat.read_u64(PhysAddr(table + 8 * idx))
        if e & 1:
            return e & 0xFFFF_FFFF_F000
        pa = self.alloc_early()
        self.plat.write_u64(PhysAddr(table + 8 * idx), pa | 3)
        return pa

    def pte_slot(self, va: int) -> int:
        pud = self._next(SWAPPER, (va >> 39) & 511)
        pmd = self._next(pud, (va >> 30) & 511)
        pte = self._next(pmd, (va >> 21) & 511)
        return pte + 8 * ((va >> 12) & 511)

    def pmd_slot(self, va: int) -> int:
        pud = self._next(SWAPPER, (va >> 39) & 511)
        pmd = self._next(pud, (va >> 30) & 511)
        return pmd + 8 * ((va >> 21) & 511)

    def map_page(self, va: int, pa: int, attrs: int) -> None:
        self.plat.write_u64(PhysAddr(self.pte_slot(va)), pa | attrs | PTE_PAGE)

    def build(self) -> None:
        rx = ATTR_NORMAL | PTE_RDONLY | UXN
        ro = ATTR_NORMAL | PTE_RDONLY | PXN | UXN
        rw = ATTR_NORMAL | PXN | UXN
        for lo, hi, attrs in ((TEXT, TEXT + 0x4000, rx), (RODATA, RODATA + 0x2000, ro),
                              (VDSO, VDSO + 0x1000, ro), (INIT, INIT + 0x2000, rx),
                              (DATA, DATA + 0x4000, rw), (PGDIR, PGDIR + 0x2000, rw)):
            for pa in range(lo, hi, 0x1000):
                self.map_page(pa - KERNEL_PA + KIMAGE_VADDR, pa, attrs)
        for pa in range(KERNEL_PA, RAM_END, 0x20_0000):
            slot = self.pmd_slot(pa - RAM_BASE + PAGE_OFFSET)
            self.plat.write_u64(PhysAddr(slot), pa | ATTR_NORMAL | PXN | UXN)
        self.plat.write_u64(PhysAddr(IDMAP), (IDMAP + 0x1000) | 3)
        self.plat.write_u64(PhysAddr(IDMAP + 0x1000 + 8), 0x4000_0000 | ATTR_NORMAL)

    def boot_info(self) -> BootInfo:
        return BootInfo(
            magic=BOOT_INFO_MAGIC, version=BOOT_INFO_VERSION, size=BootInfo.SIZE,
            text=TEXT, etext=RODATA, rodata=RODATA, erodata=INIT, vdso=VDSO,
            evdso=VDSO + 0x1000, inittext=INIT, einittext=INIT + 0x2000, data=DATA,
            edata=DATA + 0x4000, bss=BSS, ebss=BSS + 0x1000, end=END,
            swapper_pg_dir=SWAPPER, empty_zero_page=ZERO_PAGE,
            kimage_voffset=(KIMAGE_VADDR - KERNEL_PA) & MASK64,
            linear_offset=(PAGE_OFFSET - RAM_BASE) & MASK64, text_va=KIMAGE_VADDR,
            pgtable_pool=PT_POOL, pgtable_pool_end=PT_POOL_END, pgtable_early=PT_EARLY,
            mod_text_pool=MOD_TEXT_POOL, mod_text_pool_end=RESV + 0x40_0000 - 0x1000,
            mod_ro_pool=MOD_RO_POOL, mod_ro_pool_end=RESV + 0x80_0000 - 0x1000,
            reserved=RESV, reserved_end=RESV_END, ksymtab=0, ksymtab_end=0, ksymtab_gpl=0,
            ksymtab_gpl_end=0, ram=KERNEL_PA, ram_end=RAM_END, dtb=0, modules_va=0,
            modules_va_end=0, vmalloc_va=0, vmalloc_va_end=0, tcr=TCR, mair=MAIR,
            sctlr=SCTLR, cmd_mailbox=0)


def kva(pa: int) -> int:
    """Kernel-image VA of an image PA."""
    return pa - KERNEL_PA + KIMAGE_VADDR


def lva(pa: int) -> int:
    """Linear-map VA of a RAM PA."""
    return pa - RAM_BASE + PAGE_OFFSET


# --- instruction encoders (the forms of hvabi.Form) -------------------------------------------

_SIZE_BITS = {1: 0, 2: 1, 4: 2, 8: 3}


def enc_store(form: str, width: int, t: int = 2, n: int = 1, t2: int = 3, s: int = 4,
              m: int = 5) -> int:
    """One store instruction: Xt (value), [Xn] (address), Xt2 (pair), Ws (status), Xm (index)."""
    sz = _SIZE_BITS.get(width, 0) << 30
    if form == "str":
        return sz | 0x39000000 | n << 5 | t
    if form == "stur":
        return sz | 0x38000000 | n << 5 | t
    if form == "str_reg":
        return sz | 0x38206800 | m << 16 | n << 5 | t
    if form == "str_pre":
        return sz | 0x38000C00 | n << 5 | t
    if form == "str_post":
        return sz | 0x38000400 | n << 5 | t
    if form == "sttr":
        return sz | 0x38000800 | n << 5 | t
    if form == "stp":
        return (0xA9000000 if width == 8 else 0x29000000) | t2 << 10 | n << 5 | t
    if form == "stp_xzr":
        return 0xA9000000 | 31 << 10 | n << 5 | 31
    if form == "stnp":
        return (0xA8000000 if width == 8 else 0x28000000) | t2 << 10 | n << 5 | t
    if form == "stxr":
        return sz | 0x08007C00 | s << 16 | n << 5 | t
    if form == "stlr":
        return sz | 0x089FFC00 | n << 5 | t
    if form == "dc_zva":
        return 0xD50B7420 | n
    if form == "stlxr":
        return sz | 0x0800FC00 | s << 16 | n << 5 | t
    if form == "cas":  # CAS Ws/Xs (expected), Wt/Xt (new), [Xn]
        return sz | 0x08A07C00 | s << 16 | n << 5 | t
    if form == "swp":  # SWP Xs (stored), Xt (old value), [Xn]
        return sz | 0x38208000 | s << 16 | n << 5 | t
    if form == "ldadd":  # LDADD Xs (addend), Xt (old value), [Xn]
        return sz | 0x38200000 | s << 16 | n << 5 | t
    if form == "str_q":  # STR Qt, [Xn]
        return 0x3D800000 | n << 5 | t
    if form == "st1":  # ST1 {Vt.16B}, [Xn]
        return 0x4C007000 | n << 5 | t
    raise ValueError(form)


ISV_FORMS = {"str", "stur", "str_reg", "sttr", "stlr"}
FORMS = ("str", "stur", "str_reg", "str_pre", "str_post", "sttr", "stp", "stp_xzr", "stnp",
         "stxr", "stlr", "dc_zva")
# forms `decode_store` does not emulate (FEAT_LSE atomics; SIMD stores without V registers):
# the CPU model executes them itself (`_unemulated`), KPCore must refuse them when they trap
RMW_FORMS = ("cas", "swp", "ldadd")
SIMD_FORMS = ("str_q", "st1")
EXTRA_FORMS = ("stlxr", *RMW_FORMS, *SIMD_FORMS)
INSN_SLOT = TEXT + 0x3000  # a text page where the CPU model "executes" its instruction
HVC_SLOT = TEXT + 0x3100  # where the CPU model's HVC sits (ELR = the next instruction)
HVC_REEXEC_MAX = 4  # a hypercall re-executed more often than this is a hypervisor bug


# --- the machine ------------------------------------------------------------------------------


def _page_chunks(va: int, data: bytes) -> list[tuple[int, bytes]]:
    """One access split at 4 KB boundaries: each part is translated (and may fault) alone, as
    the MMU does for an unaligned access that crosses a page."""
    out = []
    pos = 0
    while pos < len(data):
        here = (va + pos) & MASK64
        n = min(len(data) - pos, 0x1000 - (here & 0xFFF))
        out.append((here, data[pos:pos + n]))
        pos += n
    return out


def _unemulated(insn: int, form: str, width: int, c: FakeVcpu) -> StoreOp:
    """The memory write of a form `decode_store` refuses, as the CPU performs it: an atomic
    writes Xs-derived data of `width` bytes at [X1] (the model ignores the value read); a
    128-bit SIMD store writes Q2 (here X2 in both halves) at [X1]."""
    addr = c.regs[1]
    if form in SIMD_FORMS:
        v = c.regs[2] | (c.regs[2] << 64)
        acc = Access(VirtAddr(addr), 16, v)
    else:
        acc = Access(VirtAddr(addr), width, c.regs[2] & ((1 << (8 * width)) - 1))
    return StoreOp(StoreKind.PLAIN, form, AddrMode.BASE, (acc,))


class KernelFault(Exception):
    """The fake kernel's own access was refused (earlier guest actions broke its premise)."""


@dataclass
class StoreResult:
    """How one executed store ended."""

    done: bool
    traps: int
    injected: tuple[int, int] | None = None
    s1_fault: Fault | None = None
    stalled: bool = False


class FakeMachine:
    """A booted fake testbed under a hypervisor, with an EL1 CPU model."""

    def __init__(self, hv: Hypervisor, *, boot: bool = True, smmu: bool = False,
                 ncpus: int = 2, ram: bytearray | None = None) -> None:
        self.hv = hv
        self.plat = FakePlatform(smmu=smmu, ncpus=ncpus, ram=ram)
        self.kernel = FakeKernel(self.plat)
        self.kernel.build()
        self.cpu = FakeVcpu()
        self.plat.vcpus.append(self.cpu)
        self.traps = 0
        self.hvc_hook: Callable[[FakeVcpu], None] | None = None
        """Called between a hypercall and its re-execution (ELR rewound): what the other CPUs
        do while the calling CPU runs the TLB invalidation its trampoline was told to."""
        self.hv.handle(self.plat, self.cpu, CpuStart(KERNEL_PA, 0))
        if boot:
            self.boot()

    def event(self, ev: Event, cpu: FakeVcpu | None = None) -> None:
        self.traps += 1
        self.hv.handle(self.plat, cpu or self.cpu, ev)

    def hvc(self, nr: int, *args: int, imm: int = 0, cpu: FakeVcpu | None = None) -> int:
        c = cpu or self.cpu
        regs = [nr, *args] + [0] * (8 - 1 - len(args))
        for i, v in enumerate(regs[:8]):
            c.regs[i] = v & MASK64
        for _ in range(HVC_REEXEC_MAX):  # ELR rewound onto the HVC: the CPU runs it again
            c.elr = kva(HVC_SLOT) + 4
            self.event(Hvc(imm, tuple(c.regs[:8])), c)  # type: ignore[arg-type]
            if c.elr != kva(HVC_SLOT):
                break
            if self.hvc_hook is not None:
                self.hvc_hook(c)
        return c.regs[0]

    def msr(self, reg: SysReg, value: int, cpu: FakeVcpu | None = None) -> bool:
        """MSR from EL1: trapped when TVM covers it; True if the value was written."""
        c = cpu or self.cpu
        if c.tvm and reg in TVM_REGS:
            c.regs[9] = value & MASK64
            c.elr = INSN_SLOT
            before = c.elr
            self.event(SysregTrap(ENC[reg], reg, True, 9, value & MASK64), c)
            return c.elr == before + 4
        c.sysregs[reg] = value & MASK64
        return True

    def boot(self) -> None:
        """head.S: HVC 6 then MAIR, TCR, TTBR0 = idmap, TTBR1 = swapper, SCTLR; VBAR."""
        info = self.kernel.boot_info()
        bi_pa = DATA + 0x3000
        self.plat.write(PhysAddr(bi_pa), info.to_bytes())
        r = self.hvc(6, bi_pa)
        assert r == 0, hex(r)
        self.cpu.sysregs[SysReg.VBAR_EL1] = kva(TEXT + 0x800)
        for reg, v in ((SysReg.MAIR_EL1, MAIR), (SysReg.TCR_EL1, TCR),
                       (SysReg.TTBR0_EL1, IDMAP), (SysReg.TTBR1_EL1, SWAPPER),
                       (SysReg.SCTLR_EL1, SCTLR)):
            assert self.msr(reg, v), reg

    def translate(self, va: int, access: AccessType, cpu: FakeVcpu | None = None) -> object:
        c = cpu or self.cpu
        assert c.stage2 is not None
        vttbr, vtcr, hcr = c.stage2
        return translate(self.plat.read_u64, va, access, 1,
                         sctlr=c.sysregs.get(SysReg.SCTLR_EL1, 0),
                         tcr=c.sysregs.get(SysReg.TCR_EL1, 0),
                         ttbr0=c.sysregs.get(SysReg.TTBR0_EL1, 0),
                         ttbr1=c.sysregs.get(SysReg.TTBR1_EL1, 0),
                         vtcr=vtcr, vttbr=vttbr, stage2_enabled=bool(hcr & 1))

    def store(self, va: int, value: int, width: int = 8, form: str = "str", *,
              value2: int = 0, max_traps: int = 8, cpu: FakeVcpu | None = None) -> StoreResult:
        """Execute one store at EL1 through both stages; trap to the hypervisor on stage 2."""
        c = cpu or self.cpu
        insn = enc_store(form, width)
        self.plat.write(PhysAddr(INSN_SLOT), insn.to_bytes(4, "little"))
        c.regs[1], c.regs[2], c.regs[3], c.regs[5] = va & MASK64, value, value2, 0
        c.regs[4] = 0xDEAD
        c.elr = kva(INSN_SLOT)
        start = c.elr
        traps = 0
        for _ in range(max_traps):
            n_inj = len(c.injected)
            op = _unemulated(insn, form, width, c) if form in RMW_FORMS + SIMD_FORMS \
                else decode_store(insn, lambda r: c.regs[r] if r < 31 else 0)
            fault = None
            chunks: list[tuple[int, bytes]] = []
            for acc in op.accesses:
                for va_part, data in _page_chunks(acc.address, acc.data):
                    res = self.translate(va_part, AccessType.STORE, c)
                    if isinstance(res, Fault):
                        fault = res
                        break
                    chunks.append((res.pa, data))  # type: ignore[attr-defined]
                if fault is not None:
                    break
            if fault is None:
                for pa, data in chunks:  # every part of every access translated: now write
                    self.plat.write(PhysAddr(pa), data)
                if op.writeback is not None:
                    c.set_x(op.writeback.reg, op.writeback.value)
                if op.status_reg is not None:
                    c.set_x(op.status_reg, 0)
                c.elr += 4
                return StoreResult(True, traps)
            if fault.stage == 1:
                return StoreResult(False, traps, s1_fault=fault)
            traps += 1
            self.event(self._abort(fault, insn, form, width), c)
            if len(c.injected) > n_inj:
                return StoreResult(False, traps, injected=c.injected[-1])
            if c.elr == start + 4:
                return StoreResult(True, traps)
            if self.plat.halted:
                return StoreResult(False, traps)
        return StoreResult(False, traps, stalled=True)

    def _abort(self, fault: Fault, insn: int, form: str, width: int) -> Stage2Abort:
        """The stage-2 data abort the trampoline would report (ISV only for single-register
        forms without writeback, as the architecture gives it)."""
        isv = form in ISV_FORMS and not fault.s1ptw
        esr = DataAbort(lower_el=True, il=True, isv=isv, sas=_SIZE_BITS.get(width, 3) if isv else 0,
                        sse=False, srt=2 if isv else 0, sf=isv and width == 8,
                        ar=isv and form == "stlr", vncr=False, fnv=False, ea=False, cm=False,
                        s1ptw=fault.s1ptw, wnr=True, dfsc=fault.fsc).encode()
        assert fault.ipa is not None
        return Stage2Abort(esr, fault.va, PhysAddr(fault.ipa), False, True, False, fault.s1ptw)

    def load(self, va: int, cpu: FakeVcpu | None = None, max_traps: int = 8) -> bool:
        """A read at EL1 (lazily fills stage 2); True if it succeeded."""
        c = cpu or self.cpu
        for _ in range(max_traps):
            res = self.translate(va, AccessType.LOAD, c)
            if not isinstance(res, Fault):
                return True
            if res.stage == 1 or res.ipa is None:
                return False
            esr = DataAbort(lower_el=True, il=True, isv=False, sas=0, sse=False, srt=0,
                            sf=False, ar=False, vncr=False, fnv=False, ea=False, cm=False,
                            s1ptw=res.s1ptw, wnr=False, dfsc=res.fsc).encode()
            self.event(Stage2Abort(esr, va, PhysAddr(res.ipa), False, False, False,
                                   res.s1ptw), c)
        return False

    def kernel_write(self, pa: int, data: bytes, cpu: FakeVcpu | None = None) -> None:
        """The kernel's memcpy to `pa` through the linear map. A page stage 2 lets the CPU write
        is written at once; any other part is written by 8-byte (or byte) stores, each trap
        judged by the hypervisor: the kernel cannot write what a CPU could not. Raises
        `KernelFault` at the first store that does not complete."""
        for va, chunk in _page_chunks(lva(pa), data):
            res = self.translate(va, AccessType.STORE, cpu)
            if not isinstance(res, Fault):
                self.plat.write(PhysAddr(res.pa), chunk)  # type: ignore[attr-defined]
                continue
            pos = 0
            while pos < len(chunk):
                w = 8 if (va + pos) % 8 == 0 and len(chunk) - pos >= 8 else 1
                r = self.store(va + pos, int.from_bytes(chunk[pos:pos + w], "little"), w, cpu=cpu)
                if not r.done:
                    raise KernelFault(f"kernel store to {va + pos:#x} did not complete: {r}")
                pos += w

    def entry(self, table_pa: int, idx: int) -> int:
        return self.plat.read_u64(PhysAddr(table_pa + 8 * idx))


VMALLOC = 0xFFFF_8000_1000_0000


def slot_of(m: FakeMachine, va: int, level: int) -> int:
    """PA of the entry for `va` at `level` of swapper (tables must exist above it)."""
    table = SWAPPER
    for lvl in range(level):
        e = m.plat.read_u64(PhysAddr(table + 8 * ((va >> (39 - 9 * lvl)) & 511)))
        assert e & 3 == 3, f"no table at L{lvl} for {va:#x}"
        table = e & 0xFFFF_FFFF_F000
    return table + 8 * ((va >> (39 - 9 * level)) & 511)


def table_desc(pa: int) -> int:
    return pa | 3


def page_desc(pa: int, *, pxn: bool = False) -> int:
    return pa | ATTR_NORMAL | PTE_PAGE | UXN | (PXN if pxn else 0)


def block_desc(pa: int, *, pxn: bool = False) -> int:
    return pa | ATTR_NORMAL | UXN | (PXN if pxn else 0)


def map_vmalloc(m: FakeMachine, va: int, pa: int, *, pxn: bool = True) -> tuple[int, int]:
    """Link a new PTE table for `va` (from the pool) and map `pa` there, as vmap does.

    Returns (pte table PA, slot PA of the PTE)."""
    pmd_slot = slot_of(m, va, 2)
    pte_table = m.plat.read_u64(PhysAddr(pmd_slot)) & 0xFFFF_FFFF_F000
    if not pte_table:
        pte_table = m.kernel.alloc_pool()
        r = m.store(lva(pmd_slot), table_desc(pte_table))
        assert r.done, r
    slot = pte_table + 8 * ((va >> 12) & 511)
    r = m.store(lva(slot), page_desc(pa, pxn=pxn))
    assert r.done, r
    return pte_table, slot


def booted(policy: str = "hardened", s2: str = "huge", *,
           smmu: bool = False) -> tuple[FakeMachine, KPCore]:
    """A fresh KPCore of `policy` on a fake machine (booted by the fake kernel)."""
    hv = make_policy(policy, s2=s2)
    return FakeMachine(hv, smmu=smmu), hv
