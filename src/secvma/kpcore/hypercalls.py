"""The hypercall dispatcher (spec §8.1, §8.2): `hvc #0`, x0 = number, x1..x5 = arguments.

C: arch/arm64/kvm/hyp/hyp-entry.S, sekvm/TrapDispatcher.c:handle_host_hvc.

    #       name               here
    0       stub: set vectors  x0 = HVC_STUB_ERR (both)
    1, 2    stub: soft restart / reset vectors
                               secvma2024 (gap 14): EL2 gives the CPU back to the host (stage 2
                               and TVM off on it; HVC 1 jumps to x1); hardened: refused EINVAL
    5       GET_VECTORS        x0 = the EL2 vector base (the trampoline)
    6       ENABLE_S2_TRANS    first call: boot classification + protected stage 2; every CPU's
                               first call: HCR.TVM and its boot window; x0 = 0 / -EINVAL
    23-27   SMMU contexts (dma.py)  with an SMMU on the board: stream contexts, map, look up,
                               clear; without one: as 7-29
    7-29    SeKVM VM interface not modelled here (no VMs): refused, x0 = HVC_ENOSYS
    30-32   module loader      modload.py: x0 = module id / 0; refused: x0 = HVC_INVALID
    33, 34  user PGD registry  userpgd.py
    35      DO_SWITCH_MM       userpgd.py
    other   unknown            secvma2024: panic; hardened: refused, x0 = -EINVAL
"""

from __future__ import annotations

from secvma.arch.el2 import HCR_BSU_IS, HCR_FB, HCR_RW, HCR_TSC, HCR_TVM, HCR_VM, VTCR_4G
from secvma.kpcore import dma, modload, userpgd
from secvma.kpcore.boot import commit_boot, plan_boot
from secvma.kpcore.bootinfo import read_boot_info
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome
from secvma.kpcore.state import KState
from secvma.platform import Hvc, Platform, SysReg, Vcpu

HCR_HOST = HCR_RW | HCR_VM | HCR_TSC | HCR_FB | HCR_BSU_IS
"""Before a CPU's HVC 6: stage 2 on, PSCI trapped, no TVM (spec §5.1 sets TVM at HVC 6)."""
HCR_STUB_ESCAPED = HCR_RW | HCR_TSC
HVC_STUB_ERR = 0xBADCA11
TRAMPOLINE_OFFSET = 0x8_0000
MASK64 = (1 << 64) - 1


def neg(code: Errno) -> int:
    return (-int(code)) & MASK64


def enable_s2_trans(st: KState, plat: Platform, cpu: Vcpu, info_pa: int) -> int:
    """HVC 6. C: sekvm/TrapDispatcher.c:hvc_enable_s2_trans (+ kint/el1_kpt.c:init_el1_pts).

        first call:  pages: sections/tables classified (boot.py); stage 2: all -> unmapped
                     (refilled lazily by class); registers pinned from the boot info
        each CPU:    HCR.TVM 0 -> 1; boot window opened once
    """
    c = st.cpu(cpu.index)
    if not st.installed:
        info = read_boot_info(plat, info_pa, st.pages.ram_base, st.pages.ram_end)
        st.boot = info
        try:
            plan = plan_boot(st, plat, info)
        except HypRefusal:
            st.boot = None
            raise
        commit_boot(st, plat, plan)
        st.pinned = {SysReg.SCTLR_EL1: info.sctlr, SysReg.TCR_EL1: info.tcr,
                     SysReg.MAIR_EL1: info.mair, SysReg.AMAIR_EL1: 0,
                     SysReg.CONTEXTIDR_EL1: 0}
        st.installed = True
        st.s2.reset()
    if not c.enabled_once:
        c.enabled_once = True
        c.boot_window = True
    c.tvm = True
    cpu.set_stage2(st.s2.vttbr(), VTCR_4G, HCR_HOST | HCR_TVM)
    return 0


def _stub(st: KState, plat: Platform, cpu: Vcpu, nr: int, x1: int) -> int:
    if nr == 0:
        return HVC_STUB_ERR
    if not st.policy.quirks.stub_hvcs:
        raise HypRefusal(Errno.EINVAL, "hvc-stub", "hyp-stub calls are retired after install",
                         nr=nr)
    c = st.cpu(cpu.index)
    c.stub_escaped = True
    c.tvm = False
    cpu.set_stage2(st.s2.vttbr(), VTCR_4G, HCR_STUB_ESCAPED)
    st.events["stub-escape"] += 1
    if nr == 1:
        cpu.set_elr(x1)
    return 0


def handle_hvc(st: KState, plat: Platform, cpu: Vcpu, ev: Hvc) -> Outcome:
    """Dispatch one HVC; the result goes to x0. Refusals are raised to the core."""
    nr, x = ev.x[0], ev.x
    if ev.imm != 0 and st.policy.hardened:
        raise HypRefusal(Errno.EINVAL, "hvc-imm", "hypercalls use hvc #0", imm=ev.imm)
    result: int | None
    if nr <= 2:
        result = _stub(st, plat, cpu, nr, x[1])
    elif nr == 5:
        result = plat.hyp_base + TRAMPOLINE_OFFSET
    elif nr == 6:
        result = enable_s2_trans(st, plat, cpu, x[1])
    elif dma.HVC_SMMU_FIRST <= nr <= dma.HVC_SMMU_LAST and st.dma is not None:
        result = dma.handle_smmu_hvc(st, plat, cpu, x)
    elif 7 <= nr <= 29:
        raise HypRefusal(Errno.EINVAL, "hvc-vm", "SeKVM VM hypercalls are not modelled", nr=nr)
    elif 30 <= nr <= 32:
        result = modload.handle_module_hvc(st, plat, cpu, x)
    elif nr == 33 and st.installed:
        done = userpgd.alloc_el0_pgd(st, plat, cpu, x[1])
        result = 0 if st.policy.hardened and done else None
    elif nr == 34 and st.installed:
        userpgd.free_el0_pgd(st, plat, x[1])
        result = 0 if st.policy.hardened else None
    elif nr == 35:
        result = userpgd.do_switch_mm(st, cpu, x[1], x[2])
    elif nr in (33, 34):
        raise HypRefusal(Errno.EINVAL, "hvc-order", "HVC 6 has not run yet", nr=nr)
    else:
        if not st.policy.hardened:
            raise HypPanic(Errno.EINVAL, "hvc-unknown", "unknown hypercall", nr=nr)
        raise HypRefusal(Errno.EINVAL, "hvc-unknown", "unknown hypercall", nr=nr)
    if result is not None:
        cpu.set_x(0, result & MASK64)
    return Outcome.EMULATED
