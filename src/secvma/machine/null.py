"""NullHypervisor: no policy at all, so that guests can run before (or without) KPCore.

Stage 2 is an identity map of all RAM outside the hypervisor region (2 MiB blocks, normal
memory, read/write/execute) and of the device space below RAM (one 1 GiB device block); every
hypercall is answered with 0 (success); PSCI calls go to the firmware; trapped register
writes (only with `trap_sysregs=True`, for measurements) are carried out unchanged. With
`guard_us` the interrupt guard is armed (interrupts through EL2, nothing pinned): the machine's
mechanism without a policy, for tests and measurements.
"""

from __future__ import annotations

from collections import defaultdict

from secvma.arch.descriptors import (
    AF,
    DESC_TABLE,
    DESC_VALID,
    MEMATTR_SHIFT,
    S2_XN,
    S2AP_R,
    S2AP_W,
    SH_SHIFT,
    S2MemAttr,
    Shareability,
)
from secvma.arch.el2 import (
    HCR_API,
    HCR_APK,
    HCR_BSU_IS,
    HCR_FB,
    HCR_RW,
    HCR_TSC,
    HCR_TVM,
    HCR_VM,
    VTCR_4G,
)
from secvma.machine import layout
from secvma.outside import OutsideMapGuard
from secvma.platform import (
    CpuStart,
    Event,
    Hvc,
    PhysAddr,
    Platform,
    Smc,
    Stage2Abort,
    SysregTrap,
    Vcpu,
)

S2_VALID_TABLE = DESC_VALID | DESC_TABLE
S2_BLOCK = DESC_VALID
S2AP_RW = S2AP_R | S2AP_W
S2_SH_INNER = int(Shareability.INNER) << SH_SHIFT
S2_MEMATTR_NORMAL_WB = int(S2MemAttr.NORMAL_WB) << MEMATTR_SHIFT
S2_MEMATTR_DEVICE_NGNRE = int(S2MemAttr.DEVICE_nGnRE) << MEMATTR_SHIFT

VMID = 1



def build_identity_stage2(platform: Platform, pool_base: int = layout.S2_POOL_BASE) -> int:
    """Write an identity stage-2 map into the hypervisor pool; return its root (L1) PA."""
    l1 = pool_base
    platform.write(PhysAddr(l1), bytes(4096))
    platform.write_u64(PhysAddr(l1), 0 | S2_BLOCK | AF | S2AP_RW | S2_MEMATTR_DEVICE_NGNRE | S2_XN)
    ram_end = platform.ram_base + platform.ram_size
    hyp_end = platform.hyp_base + platform.hyp_size
    next_table = pool_base + 0x1000
    for gib in range(1, 4):
        base = gib << 30
        if base >= ram_end:
            break
        l2 = next_table
        next_table += 0x1000
        entries = bytearray(4096)
        for i in range(512):
            pa = base + (i << 21)
            if pa < hyp_end or pa + (1 << 21) > ram_end:
                continue
            desc = pa | S2_BLOCK | AF | S2_SH_INNER | S2AP_RW | S2_MEMATTR_NORMAL_WB
            entries[i * 8:i * 8 + 8] = desc.to_bytes(8, "little")
        platform.write(PhysAddr(l2), bytes(entries))
        platform.write_u64(PhysAddr(l1 + gib * 8), l2 | S2_VALID_TABLE)
    return l1


class NullHypervisor:
    """A hypervisor that allows everything (identity stage 2, HVC -> 0, PSCI passed through)."""

    def __init__(self, trap_sysregs: bool = False, guard_us: int | None = None):
        self.trap_sysregs = trap_sysregs
        self.guard_us = guard_us  # arm the interrupt guard (no pins): the mechanism alone
        self.root: int | None = None
        self.events: defaultdict[str, int] = defaultdict(int)  # not Counter: 2x the cost per +=
        self.hvc_log: list[tuple[int, tuple[int, ...]]] = []
        self.outside = OutsideMapGuard()
        # API|APK: PAuth instructions and key registers stay at EL1 where the CPU has them
        # (-cpu max); without them Debian's first APIAKeyLo_EL1 write trapped and halted here
        self.hcr = (HCR_RW | HCR_VM | HCR_TSC | HCR_FB | HCR_BSU_IS | HCR_API | HCR_APK
                    | (HCR_TVM if trap_sysregs else 0))

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        self.events[type(event).__name__] += 1
        if isinstance(event, Hvc):  # most frequent first: one isinstance per trap
            if len(self.hvc_log) < 10_000:
                self.hvc_log.append((event.imm, event.x))
            cpu.set_x(0, 0)
        elif isinstance(event, SysregTrap):
            if event.reg is None:
                platform.halt(f"NullHypervisor: unhandled {event!r} at {cpu.elr:#x}")
            elif event.is_write:
                cpu.write_sysreg(event.reg, event.value)
                cpu.skip()
            else:
                cpu.set_x(event.rt, cpu.read_sysreg(event.reg))
                cpu.skip()
        elif isinstance(event, Stage2Abort):
            self.outside.abort(platform, cpu, event)
        elif isinstance(event, Smc):
            cpu.smc_passthrough()
        elif isinstance(event, CpuStart):
            if self.root is None:
                self.root = build_identity_stage2(platform)
            cpu.set_stage2(self.root | (VMID << 48), VTCR_4G, self.hcr)
            if self.guard_us is not None:
                cpu.arm_guard(self.guard_us)
        else:
            platform.halt(f"NullHypervisor: unhandled {event!r} at {cpu.elr:#x}")
