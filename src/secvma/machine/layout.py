"""Physical memory layout of the emulated board and the trampoline's mailbox protocol.

This module is the single source of these numbers: the build writes them into
`layout.inc` for the trampoline's assembly, so Python and EL2 can never disagree.

Guest physical memory (QEMU `virt`, highmem=off: all devices and RAM below 4 GiB)::

    0x0000_0000 .. 0x4000_0000   devices (GIC, PL011, virtio-mmio, PCIe ECAM ...)
    RAM_BASE     = 0x4000_0000   hypervisor region, HYP_SIZE bytes, `no-map` in the DTB:
      +0x08_0000  trampoline (QEMU loads the raw -kernel file here and enters it at EL2)
      +0x10_0000  mailbox page of CPU n at +n*0x1000 (also that CPU's EL2 stack)
      +0x18_0000  root fast-path tables (see ROOTTAB_BASE), 2 x ROOT_TABLE_SIZE
      +0x18_8000  PTE fast path: table and target bitmaps, per-CPU logs (see PTE_TABLE_MAP)
      +0x20_0000  page pool for the hypervisor's stage-2 tables, up to HYP_BASE + HYP_SIZE
    KERNEL_BASE  = RAM_BASE + HYP_SIZE   the EL1 kernel / payload (2 MiB aligned)
    RAM_BASE + 128 MiB             QEMU puts the initrd here, then the DTB
"""

from __future__ import annotations

RAM_BASE = 0x4000_0000
HYP_BASE = RAM_BASE
HYP_SIZE = 0x0200_0000  # 32 MiB: 4 KB stage-2 tables for 3 GiB of RAM need ~6 MiB
TRAMPOLINE_BASE = HYP_BASE + 0x8_0000
MBOX_BASE = HYP_BASE + 0x10_0000
MBOX_STRIDE = 0x1000
MAX_CPUS = 8
S2_POOL_BASE = HYP_BASE + 0x20_0000
S2_POOL_END = HYP_BASE + HYP_SIZE
KERNEL_BASE = RAM_BASE + HYP_SIZE
DTB_BASE_HINT = RAM_BASE + 0x0800_0000

# SMMUv3 of the virt board with `iommu=smmuv3` (PCIe devices only, StreamID = requester ID).
# Owned by the hypervisor: never in the kernel's DTB, never mapped at stage 2 for the kernel.
SMMU_BASE = 0x0905_0000
SMMU_SIZE = 0x2_0000
# The SMMU's stream table, queues and IO page tables: the last SMMU_POOL_SIZE bytes of the
# hypervisor region (the stage-2 pool ends below them).
SMMU_POOL_SIZE = 0x80_0000  # the transparent identity map of 3 GiB needs ~6 MiB of tables
SMMU_POOL_BASE = HYP_BASE + HYP_SIZE - SMMU_POOL_SIZE
GIC_V2M_BASE = 0x0802_0000  # the GICv2m MSI frame (virt with GICv2): PCI MSI-X doorbells
GIC_V2M_SIZE = 0x1000
GIC_ITS_TRANSLATER_BASE = 0x0809_0000  # GICv3 ITS translation frame (GITS_TRANSLATER at +0x40)
GIC_ITS_TRANSLATER_SIZE = 0x1_0000

MAX_RAM = 3 << 30  # highmem=off puts RAM in [1 GiB, 4 GiB)
DEVICE_LIMIT = RAM_BASE

# ---- mailbox page ------------------------------------------------------------------------
# The first line (64 bytes) holds what Python reads on every trap; the state word has a line of
# its own (MB_STATE), so that the stores the trampoline makes while it fills the frame (and the
# fast paths' ELR updates) do not bounce the line Python is polling between the two cores.
MB_LAST = 0x000  # last round trip, ticks
MB_KIND = 0x008  # u32, see KIND_*
MB_ESR = 0x010
MB_FAR = 0x018
MB_HPFAR = 0x020
MB_ELR = 0x028
MB_SPSR = 0x030
MB_TENT = 0x038  # CNTPCT when a trap goes to Python (the fast paths do not read the counter)
MB_TOT = 0x040  # sum of round-trip ticks
MB_NTR = 0x048  # traps counted by the trampoline
MB_SEQ = 0x050  # requests posted
MB_VEC = 0x058  # vector offset for KIND_UNEXPECTED
MB_MPIDR = 0x060
MB_CNTFRQ = 0x068
MB_FAST = 0x070  # traps answered by the fast path (no Python)
MB_ROOT_EN = 0x078  # root fast paths this CPU may take: bit 0 TTBR0_EL1, bit 1 TTBR1_EL1
# EL1 state saved at every trap (read-only for Python; used for walks and decode)
MB_SCTLR = 0x080
MB_TTBR0 = 0x088
MB_TTBR1 = 0x090
MB_TCR = 0x098
MB_MAIR = 0x0A0
MB_VBAR = 0x0A8
MB_SP_EL0 = 0x0B0
MB_SP_EL1 = 0x0B8
# interrupt guard (see "interrupt guard" below); counters written by EL2, read by Python
MB_IRQS = 0x0C0  # physical interrupts taken at EL2
MB_TICKS = 0x0C8  # guard timer (CNTHP) expiries
MB_GUARD_PERIOD = 0x0D0  # CNTHP period in counter ticks (0: guard not armed)
MB_GUARD_HIT = 0x0D8  # index of the guard-table entry that did not match (KIND_GUARD)
MB_IRQ_TICKS = 0x0E0  # counter ticks spent in the EL2 interrupt path (entry to ERET)
MB_HCR_OR = 0x0E8  # bits OR-ed into every HCR_EL2 write (IMO|FMO while the guard is armed)
MB_FEAT = 0x0F0  # ID_AA64MMFR0_EL1 read at EL2 at start (FGT = bits 59:56)
MB_CHECKS = 0x0F8  # guard-table checks run
MB_X = 0x100  # x0..x30
MB_FEAT1 = 0x1F8  # ID_AA64MMFR1_EL1 read at EL2 at start (XNX = bits 31:28: stage-2 XN[1:0])
MB_CMDS = 0x200  # commands: {op, a, b, pad} u64 each; op 0 ends the list
CMD_SIZE = 32
MAX_CMDS = 64
MB_FASTTAB = 0xA00  # fast-path table (see FAST_*), up to MB_FASTTAB_END
MB_FASTTAB_END = 0xD00
MB_STATE = 0xD00  # u32: 0 idle, 1 request (EL2 -> Python), 2 response (Python -> EL2); alone
# in its cache line: both sides spin on it
MB_PTE_EN = 0xD60  # PTE fast path on for this CPU (non-zero); see PTE_TABLE_MAP
MB_FAST_PTES = 0xD68  # of MB_FAST: kernel PTE stores carried out by the PTE fast path
MB_NEXT_TTBR0 = 0xD70  # TTBR0_EL1 value being loaded (0: none): by the root fast path, or
# queued by Python (OP_MSR) and not yet done; see ROOTTAB
MB_FAST_ROOTS = 0xD78  # of MB_FAST: TTBR writes answered by the root fast path
MB_IRQQ = 0xD80  # interrupts waiting for a free list register: IRQQ_MAX u32 INTIDs
IRQQ_MAX = 16
MB_IRQQ_N = 0xDC0  # how many are queued
MB_LR_OVF = 0xDC8  # interrupts lost because the queue was full too
MB_SGIS = 0xDD0  # ICC_SGI1R_EL1 writes (IPIs) sent by EL2 for EL1
MB_GICR = 0xDD8  # this CPU's redistributor (RD frame) physical address
MB_LAST_TICK = 0xDE0  # CNTPCT at the last guard timer tick (a late tick re-enables its PPI)
MB_PPI_FIX = 0xDE8  # times the guard's PPIs were re-enabled because ticks stopped coming
MB_NLR_MASK = 0xDF0  # (1 << number of list registers) - 1, read once from ICH_VTR_EL2
MB_CUR_TTBR0 = 0xDF8  # TTBR0_EL1 value this CPU last loaded (fast path or OP_MSR); see ROOTTAB
MB_GUARDTAB = 0xE00  # guard table (see GUARD_*), up to MB_GUARDTAB_END
MB_GUARDTAB_END = 0x1000

KIND_HELLO = 1
KIND_TRAP = 2
KIND_UNEXPECTED = 3
KIND_GUARD = 4  # an interrupt exit found a guarded EL1 register off its pinned value

STATE_IDLE = 0
STATE_REQUEST = 1
STATE_RESPONSE = 2

# ---- commands the trampoline executes for Python ------------------------------------------
OP_END = 0
OP_MSR = 1  # EL1 register #a := b (index = platform.SysReg)
OP_TLBI_ALL = 2  # TLBI VMALLS12E1IS
OP_VTTBR = 3
OP_HCR = 4
OP_VTCR = 5
OP_TLBI_IPA = 6  # TLBI IPAS2E1IS a>>12; TLBI VMALLE1IS
OP_CPTR = 7
OP_SMC = 8  # SMC #0 with the frame's x0..x3, result into frame x0..x3
OP_CODE_SYNC = 9  # a = PA of this CPU's CODE_SYNC list, b = ranges in it: see below
OP_INJECT = 10  # ESR_EL1 := a, FAR_EL1 := b, exception entry to VBAR_EL1
OP_HALT = 11  # park this CPU forever (WFI loop) after a fatal hypervisor decision
OP_GUARD = 12  # arm the interrupt guard: a = CNTHP period in counter ticks (see below)
OP_STR32 = 13  # 32-bit store of b at PA a from EL2 (MMU off): QEMU sees code it rewrites
OP_DOORBELL = 14  # device register a := the u32 at PA b (read at execution time), at EL2

# ---- code sync: code Python wrote into guest RAM becomes what every CPU fetches ------------
# QEMU translates guest code into host code and notices a change only when a CPU stores to it;
# Python's own writes go straight to RAM, so a page that held code already run would go on
# running the old translation. OP_CODE_SYNC: for each {pa u64, size u64} of CPU n's list (at
# CODE_SYNC_BASE + n * CODE_SYNC_STRIDE, pa and size multiples of 8) EL2 loads and stores back
# every u64 (its stores drop the translations they overlap), then DSB, IC IALLUIS, DSB, ISB,
# as the architecture asks of code written by another agent.
CODE_SYNC_BASE = HYP_BASE + 0x1E_0000
CODE_SYNC_STRIDE = 0x2000
CODE_SYNC_MAX = CODE_SYNC_STRIDE // 16  # ranges per CPU per trap (platform.CODE_RANGES_MAX)

# ---- fast path: MSR traps answered in EL2 without Python --------------------------------
# Table of {iss_key u32, action u32, value u64}: a trapped MSR whose ISS (with Rt masked out)
# equals iss_key is performed directly (action FAST_ALLOW) and counted in MB_FAST. Python fills
# the table for harmless, hot registers (e.g. CONTEXTIDR_EL1 on every context switch).
FAST_ENTRY_SIZE = 16
FAST_MAX = (MB_FASTTAB_END - MB_FASTTAB) // FAST_ENTRY_SIZE - 1
FAST_ALLOW = 1

# ---- root fast path: TTBR writes of roots the hypervisor has validated ----------------------
# One table per machine (shared by all CPUs: a validated root is valid on every CPU, and Python
# writes an entry once, not once per CPU) for each of TTBR0_EL1 (at ROOTTAB_BASE) and TTBR1_EL1
# (ROOTTAB_BASE + ROOT_TABLE_SIZE): ROOT_BUCKETS buckets of ROOT_WAYS u64 BADDRs, bucket
# (BADDR >> 12) % ROOT_BUCKETS, 0 = free slot. A trapped MSR TTBRx (ISS key TTBRx_ISS_KEY) on a
# CPU whose MB_ROOT_EN has the register's bit, with value & ROOT_BADDR (ASID and CnP masked) in
# the table, is performed at EL2. Removal protocol (Dekker): for TTBR0 the trampoline writes
# the value to MB_NEXT_TTBR0, DMB, reads the table, loads the root, records MB_CUR_TTBR0 and
# clears MB_NEXT_TTBR0; Python removes the entry, fences, then reads every CPU's CUR/NEXT: either
# the CPU sees the removal (and traps) or Python sees the root as in use (and keeps it). A TTBR0
# write Python queues sets NEXT at once (OP_MSR sets CUR, then clears NEXT): a root another CPU's
# trap is about to load counts as in use before that CPU has resumed.
ROOTTAB_BASE = HYP_BASE + 0x18_0000
ROOT_BUCKET_BITS = 8  # the trampoline indexes buckets with these BADDR bits above bit 12
ROOT_BUCKETS = 1 << ROOT_BUCKET_BITS
ROOT_WAYS = 4  # the trampoline compares exactly four slots (two LDPs)
ROOT_TABLE_SIZE = ROOT_BUCKETS * ROOT_WAYS * 8
ROOT_BADDR = 0x0000_FFFF_FFFF_FFFE

# ---- PTE fast path: harmless kernel PTE stores carried out at EL2, replayed by Python ----------
# Two bitmaps over RAM, bit n = page RAM_BASE + n * 4 KB, written by Python only: PTE_TABLE_MAP
# marks the level-3 kernel table pages (hardened, host EL1_PTE), PTE_TARGET_MAP the ordinary
# host pages (host NONE: a leaf mapping one gets PXN, nothing else). On a CPU whose MB_PTE_EN is
# set, a stage-2 write-permission abort from EL1 with a syndrome (ISV, 64-bit, no S1PTW, no
# cache maintenance) at an 8-byte slot of a marked table page is carried out at EL2 when it is
#   map:   old slot 0, new bits[1:0] = 0b11, output page marked in PTE_TARGET_MAP: new | PXN
#          is stored (PXN: what Python forces on a leaf of a NONE page);
#   unmap: old bits[1:0] = 0b11 with its output page marked in PTE_TARGET_MAP, new 0: 0 is
#          stored, then TLBI IPAS2E1IS (table page) + TLBI VMALLE1IS (what Python queues);
# and appended to the CPU's log, a ring {head u64 (EL2 writes), tail u64 (Python writes), then
# PTE_LOG_MAX x (slot PA, old, stored) u64}, entry k at k % PTE_LOG_MAX: EL2 writes the entry,
# DMB, then head + 1; Python reads head, the entries from tail, then sets tail = head, so it
# can drain while the CPU runs. Anything else, or a full ring, goes to Python, which replays
# every log through its own rules before it decides anything (kpcore/ptefast.py). Counted in
# MB_FAST and MB_FAST_PTES.
PTE_TABLE_MAP = HYP_BASE + 0x18_8000
PTE_MAP_SIZE = MAX_RAM >> 15  # one bit per 4 KB page: 96 KB
PTE_TARGET_MAP = PTE_TABLE_MAP + PTE_MAP_SIZE
PTE_LOG_BASE = PTE_TARGET_MAP + PTE_MAP_SIZE  # CPU n's log at + n * PTE_LOG_STRIDE
PTE_LOG_STRIDE = 0x4000  # 681 entries: an xfs load stores ~1 850 PTEs between 13 traps
PTE_LOG_SHIFT = 2  # PTE_LOG_STRIDE = MBOX_STRIDE << PTE_LOG_SHIFT
PTE_LOG_ENTRY = 24
PTE_LOG_MAX = (PTE_LOG_STRIDE - 16) // PTE_LOG_ENTRY
PTE_OA_MASK = 0x0000_FFFF_FFFF_F000  # output address bits 47:12 of a page descriptor
PTE_PXN_BIT = 53
# ESR_EL2 of the aborts the PTE fast path takes: ISV, SAS = 64 bit, SF, WnR, and S1PTW, CM, EA,
# FnV clear, DFSC a permission fault (0b0011xx)
PTE_ESR_MASK = (1 << 24) | (3 << 22) | (1 << 15) | (0xF << 7) | (1 << 6) | (0xF << 2)
PTE_ESR_WANT = (1 << 24) | (3 << 22) | (1 << 15) | (1 << 6) | (0x3 << 2)

# ---- interrupt guard: EL2 takes control at a bounded interval, whatever EL1 does ----------
# OP_GUARD sets HCR_EL2.IMO|FMO (kept in every later HCR write through MB_HCR_OR), enables the
# GICv3 virtual CPU interface (ICH_HCR_EL2.En) and the EL2 physical timer (CNTHP, PPI
# GUARD_PPI) with the given period. Every physical interrupt then enters EL2: the trampoline
# acknowledges it, hands it to EL1 as a virtual interrupt through a list register (HW=1, so
# the kernel's EOI deactivates the physical one; SGIs HW=0), re-arms the timer, and compares
# each guarded register with the table below. Only a mismatch goes to Python (KIND_GUARD).
# Table of {reg u32 (SysReg index), state u32, mask u64, value u64, alt u64, seen u64}: an
# entry with state GUARD_ON matches when (reg & mask) is value or alt; state 0 ends the table.
GUARD_ENTRY_SIZE = 40
GUARD_MAX = (MB_GUARDTAB_END - MB_GUARDTAB) // GUARD_ENTRY_SIZE - 1
GUARD_ON = 1
TTBR0_ISS_KEY = (3 << 20) | (0 << 17) | (0 << 14) | (2 << 10) | (0 << 1)  # MSR TTBR0_EL1, Rt masked
TTBR1_ISS_KEY = (3 << 20) | (1 << 17) | (0 << 14) | (2 << 10) | (0 << 1)  # MSR TTBR1_EL1
SGI1R_ISS_KEY = (3 << 20) | (5 << 17) | (12 << 10) | (11 << 1)  # MSR ICC_SGI1R_EL1, Rt masked
CONTEXTIDR_ISS_KEY = (3 << 20) | (1 << 17) | (13 << 10)  # MSR CONTEXTIDR_EL1 (the TRAP_FLOOR build)
GUARD_PPI = 26  # virt board: EL2 physical timer (CNTHP) PPI 10
MAINT_PPI = 25  # GICv3 maintenance interrupt (list-register underflow)
HCR_GUARD = 0x18  # HCR_EL2.IMO | FMO
GIC_PRIO = 0xA0  # priority of the virtual interrupts (Linux's and the testbed's default)
GIC_VERSION = 3  # the board's GIC: v3 has the virtual CPU interface (list registers) used here
# The board has no ITS: an LPI cannot be handed to EL1 through a list register with HW=1 as
# the interrupt guard does for SPIs/PPIs, so PCI devices use their INTx lines (SPIs) instead of
# MSI-X, and no MSI doorbell frame needs to be reachable through the SMMU.
GIC_BOARD = f"gic-version={GIC_VERSION},its=off"
GIC_MSI_FRAME: tuple[int, int] | None = None if GIC_VERSION == 3 else (GIC_V2M_BASE, GIC_V2M_SIZE)
GICD_BASE = 0x0800_0000
GICR_BASE = 0x080A_0000  # virt, gic-version=3: one 128 KB redistributor per CPU
GICR_STRIDE = 0x2_0000

# SPSR for entering EL1h with DAIF masked
SPSR_EL1H_MASKED = 0x3C5


def mailbox_pa(cpu: int) -> int:
    """Physical address of CPU `cpu`'s mailbox page."""
    if not 0 <= cpu < MAX_CPUS:
        raise ValueError(f"cpu index {cpu} outside 0..{MAX_CPUS - 1}")
    return MBOX_BASE + cpu * MBOX_STRIDE


assert PTE_LOG_BASE + MAX_CPUS * PTE_LOG_STRIDE <= CODE_SYNC_BASE, "PTE logs overlap code sync"
assert CODE_SYNC_BASE + MAX_CPUS * CODE_SYNC_STRIDE <= S2_POOL_BASE, "code sync overlaps the pool"
assert PTE_LOG_STRIDE == MBOX_STRIDE << PTE_LOG_SHIFT, "the trampoline scales a mailbox offset"
assert ROOTTAB_BASE + 2 * ROOT_TABLE_SIZE <= PTE_TABLE_MAP, "root tables overlap the PTE maps"


def pte_log_pa(cpu: int) -> int:
    """Physical address of CPU `cpu`'s PTE fast-path log."""
    if not 0 <= cpu < MAX_CPUS:
        raise ValueError(f"cpu index {cpu} outside 0..{MAX_CPUS - 1}")
    return PTE_LOG_BASE + cpu * PTE_LOG_STRIDE


def asm_include() -> str:
    """The `.equ` lines the trampoline assembles with (generated, never edited by hand)."""
    names = [n for n in globals() if n.isupper() and isinstance(globals()[n], int)]
    lines = ["// generated by secvma.machine.layout -- do not edit"]
    lines += [f"    .equ {n}, {globals()[n]:#x}" for n in sorted(names)]
    return "\n".join(lines) + "\n"
