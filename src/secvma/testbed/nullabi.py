"""Policy "none" for the testbed kernel: no protection, but the SECvma hypercalls it needs work.

The testbed kernel never writes TTBR0_EL1 after boot; it switches user address spaces through
HVC 35 only. A hypervisor that answers every HVC with 0 and does nothing (`NullHypervisor`)
would therefore leave every process running on the wrong page tables; this subclass carries the
switch out, exactly as KPCore's `el2_do_switch_mm` does (docs/kpcore-spec.md §5.3) minus its checks.
"""

from __future__ import annotations

from secvma.hvabi import HVC_ENOSYS, BootInfo, Hvc
from secvma.machine.null import NullHypervisor
from secvma.platform import Event, PhysAddr, Platform, SysReg, Vcpu
from secvma.platform import Hvc as HvcEvent

ASID_SHIFT = 48
BADDR_MASK = (1 << 48) - 1


class TestbedNullHypervisor(NullHypervisor):
    """NullHypervisor plus the minimal SECvma ABI of the testbed kernel.

    HVC 6 -> 0 (the boot-info block is parsed and kept in `boot_info`); HVC 33/34 -> accepted;
    HVC 35 (x1 = TTBR0 PA, x2 = ASID) -> TTBR0 := empty_zero_page, TTBR1 := TTBR1 base with
    ASID, TTBR0 := x1 (the kernel runs with TCR_EL1.A1 = 1, as Linux does), x0 = 0;
    HVC 30/31/32 -> HVC_ENOSYS, so the kernel loads modules itself; HVC 23-27 (SMMU
    contexts) -> HVC_ENOSYS: the SMMU stays off and the device reaches physical memory
    directly; any other HVC -> 0.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, guard_us: int | None = None) -> None:
        super().__init__(trap_sysregs=False, guard_us=guard_us)
        self.boot_info: BootInfo | None = None
        self.hvc_counts: dict[int, int] = {}
        self.refusals: list[str] = []
        self.invariant_violations: list[str] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if not isinstance(event, HvcEvent):
            super().handle(platform, cpu, event)
            return
        self.events["Hvc"] += 1
        nr = event.x[0]
        self.hvc_counts[nr] = self.hvc_counts.get(nr, 0) + 1
        if nr == Hvc.ENABLE_S2_TRANS:
            self._enable(platform, event.x[1])
            cpu.set_x(0, 0)
        elif nr == Hvc.DO_SWITCH_MM:
            self._switch_mm(cpu, event.x[1], event.x[2])
        elif nr in (Hvc.ALLOC_EL0_PGD, Hvc.FREE_EL0_PGD):
            pass  # x0 not written (docs/kpcore-spec.md §8.2)
        elif nr in (Hvc.MLOAD, Hvc.MFREE, Hvc.MOD_INIT_FREE) or \
                Hvc.SMMU_FREE_PGD <= nr <= Hvc.SMMU_CLEAR:
            cpu.set_x(0, HVC_ENOSYS)
        else:
            cpu.set_x(0, 0)

    def _enable(self, platform: Platform, pa: int) -> None:
        try:
            self.boot_info = BootInfo.from_bytes(platform.read(PhysAddr(pa), BootInfo.SIZE))
        except ValueError as exc:
            self.refusals.append(f"HVC 6: unusable boot info at {pa:#x}: {exc}")

    def _switch_mm(self, cpu: Vcpu, ttbr0: int, asid: int) -> None:
        zero = self.boot_info.empty_zero_page if self.boot_info else 0
        base1 = cpu.read_sysreg(SysReg.TTBR1_EL1) & BADDR_MASK
        cpu.write_sysreg(SysReg.TTBR0_EL1, zero)
        cpu.write_sysreg(SysReg.TTBR1_EL1, base1 | ((asid & 0xFFFF) << ASID_SHIFT))
        cpu.write_sysreg(SysReg.TTBR0_EL1, ttbr0)
        cpu.set_x(0, 0)
