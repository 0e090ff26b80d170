"""System registers (TVM), the hypercall dispatcher, user PGDs and VBAR_EL1."""

from __future__ import annotations

from fakes import DATA, IDMAP, MAIR, PT_POOL, SCTLR, SWAPPER, TEXT, ZERO_PAGE, FakeMachine, booted, kva, lva

from secvma.hvabi import HVC_INVALID
from secvma.kpcore import make_policy
from secvma.kpcore.pages import Usage
from secvma.kpcore.refusal import Errno, Outcome
from secvma.platform import PhysAddr, SysReg

NEG = {c: (-int(c)) & ((1 << 64) - 1) for c in Errno}
PGD = PT_POOL + 0x10_000


def _user_root(m: FakeMachine) -> int:
    assert m.hvc(33, PGD) in (0, 33)
    assert m.hvc(35, PGD, 7) == 0
    return PGD


def test_boot_sequence_accepted_once(any_policy: str) -> None:
    """head.S's MAIR/TCR/TTBR0/TTBR1/SCTLR writes after HVC 6 are emulated, then TVM stays."""
    m, hv = booted(any_policy)
    assert not hv.refusals and m.cpu.tvm
    assert m.cpu.sysregs[SysReg.TTBR1_EL1] == SWAPPER


def test_ttbr0_write_after_boot_is_refused() -> None:
    """hardened: TTBR0 moves only through HVC 35 once the MMU is on."""
    m, hv = booted("hardened")
    assert not m.msr(SysReg.TTBR0_EL1, IDMAP)
    assert hv.refusals[-1].rule == "ttbr0" and m.cpu.injected[-1][0] >> 26 == 0


def test_ttbr0_write_after_boot_panics_quirk() -> None:
    """secvma2024: any direct TTBR0 write panics (handle_ttbr0)."""
    m, hv = booted("secvma2024")
    m.msr(SysReg.TTBR0_EL1, IDMAP)
    assert m.plat.halted and hv.refusals[-1].outcome is Outcome.PANIC


def test_ttbr1_only_swapper(any_policy: str) -> None:
    """TTBR1 may be reloaded with swapper, never with another table."""
    m, hv = booted(any_policy)
    assert m.msr(SysReg.TTBR1_EL1, SWAPPER)
    assert not m.msr(SysReg.TTBR1_EL1, DATA)
    assert hv.refusals[-1].rule == "ttbr1"


def test_pinned_registers_accept_only_their_value() -> None:
    """SCTLR/MAIR keep their install values; AMAIR/CONTEXTIDR stay 0."""
    m, hv = booted("hardened")
    assert m.msr(SysReg.SCTLR_EL1, SCTLR)
    assert not m.msr(SysReg.SCTLR_EL1, SCTLR & ~1)
    assert not m.msr(SysReg.MAIR_EL1, MAIR ^ 0xFF)
    assert not m.msr(SysReg.CONTEXTIDR_EL1, 5)
    assert [r.rule for r in hv.refusals] == ["pinned-sysreg"] * 3


def test_esr_write_emulated_hardened_panics_quirk() -> None:
    """ESR_EL1 writes: emulated by hardened, fatal in secvma2024."""
    m, hv = booted("hardened")
    assert m.msr(SysReg.ESR_EL1, 1) and not hv.refusals
    m2, _hv2 = booted("secvma2024")
    m2.msr(SysReg.ESR_EL1, 1)
    assert m2.plat.halted


def test_user_pgd_register_switch_free(any_policy: str) -> None:
    """HVC 33 claims a zeroed EL0_PGD, HVC 35 loads it, HVC 34 releases it."""
    m, hv = booted(any_policy)
    m.plat.write(PhysAddr(PGD), b"\x11" * 4096)
    _user_root(m)
    assert hv.state.pages.usage_of(PGD >> 12) is Usage.EL0_PGD
    assert m.plat.read(PhysAddr(PGD), 4096) == bytes(4096)
    assert m.cpu.sysregs[SysReg.TTBR0_EL1] == PGD
    assert m.cpu.sysregs[SysReg.TTBR1_EL1] == SWAPPER | 7 << 48
    assert [w[0] for w in m.cpu.writes[-3:]] == [SysReg.TTBR0_EL1, SysReg.TTBR1_EL1,
                                                 SysReg.TTBR0_EL1]
    assert m.cpu.writes[-3][1] == ZERO_PAGE
    assert not hv.check_invariants(m.plat, full=True)


def test_free_of_live_user_pgd_is_busy() -> None:
    """hardened: HVC 34 on the PGD a CPU runs on is EBUSY."""
    m, hv = booted("hardened")
    _user_root(m)
    assert m.hvc(34, PGD) == NEG[Errno.EBUSY]
    assert hv.state.pages.usage_of(PGD >> 12) is Usage.EL0_PGD


def test_switch_to_unregistered_root_is_refused() -> None:
    """hardened: HVC 35 with a page that is not an EL0_PGD returns -EPERM."""
    m, _hv = booted("hardened")
    assert m.hvc(35, DATA, 1) == NEG[Errno.EPERM]


def test_user_pgd_entries_get_pxntable(any_policy: str) -> None:
    """A store into a user PGD gets PXNTable forced."""
    m, hv = booted(any_policy)
    _user_root(m)
    pud = 0x4500_0000
    r = m.store(lva(PGD), pud | 3)
    assert r.done
    assert m.plat.read_u64(PhysAddr(PGD)) == pud | 3 | 1 << 59
    assert not hv.check_invariants(m.plat)


def test_user_pgd_entry_to_kernel_table_refused() -> None:
    """hardened: a user PGD entry may not point at a kernel table page."""
    m, hv = booted("hardened")
    _user_root(m)
    r = m.store(lva(PGD), SWAPPER | 3)
    assert r.injected is not None and hv.refusals[-1].rule == "user-pgd"


def test_unknown_hypercall_refused_hardened_panics_quirk() -> None:
    """Unknown numbers: -EINVAL in hardened, a panic in secvma2024."""
    m, _hv = booted("hardened")
    assert m.hvc(99) == NEG[Errno.EINVAL]
    m2, _ = booted("secvma2024")
    m2.hvc(99)
    assert m2.plat.halted


def test_stub_hypercalls_refused() -> None:
    """hardened (gap 14): HVC 1/2 after install are refused and change nothing."""
    m, _hv = booted("hardened")
    assert m.hvc(2) == NEG[Errno.EINVAL] and m.cpu.tvm


def test_stub_hypercalls_escape_quirk() -> None:
    """secvma2024 (gap 14): HVC 2 (reset vectors) gives the CPU back without stage 2/TVM."""
    m, hv = booted("secvma2024")
    m.hvc(2)
    assert not m.cpu.tvm and m.cpu.stage2 is not None and not m.cpu.stage2[2] & 1
    assert any(v.inv == "INV-ROOTS" for v in hv.check_invariants(m.plat))


def test_module_hypercalls_refused_without_a_module() -> None:
    """HVC 30-32 with nothing to load / free answer HVC_INVALID with a logged refusal."""
    m, hv = booted("hardened")
    assert m.hvc(30, 0, 0, 0, 0, 0) == HVC_INVALID and hv.refusals[-1].rule == "mload-args"
    assert m.hvc(31, 5) == HVC_INVALID and hv.refusals[-1].rule == "mfree-id"


def test_second_hvc6_does_not_reopen_boot_window() -> None:
    """A repeated HVC 6 succeeds but TTBR0 stays closed to direct writes."""
    m, _hv = booted("hardened")
    assert m.hvc(6, 0) == 0
    assert not m.msr(SysReg.TTBR0_EL1, IDMAP)


def test_bad_boot_info_refused() -> None:
    """HVC 6 with a block outside RAM or with a bad magic is -EINVAL and installs nothing."""
    hv = make_policy("hardened")
    m = FakeMachine(hv, boot=False)
    assert m.hvc(6, 0x10) == NEG[Errno.EINVAL]
    assert m.hvc(6, DATA + 0x3000) == NEG[Errno.EINVAL]
    assert not hv.state.installed


def test_vbar_pinned_and_restored() -> None:
    """hardened: VBAR_EL1 moved off the kernel vectors is restored at the next trap."""
    m, hv = booted("hardened")
    m.load(lva(0x4500_0000))
    assert hv.state.vbar == kva(TEXT + 0x800)
    m.cpu.sysregs[SysReg.VBAR_EL1] = lva(DATA)
    m.hvc(5)
    assert m.cpu.sysregs[SysReg.VBAR_EL1] == kva(TEXT + 0x800)
    assert hv.refusals[-1].rule == "vbar"


def test_user_pgd_free_keeps_kernel_pte_references() -> None:
    """hardened: HVC 34 keeps the subcount a kernel PTE holds on the PGD, so unmapping it later is clean."""
    from fakes import VMALLOC, map_vmalloc

    m, hv = booted("hardened")
    _t, slot = map_vmalloc(m, VMALLOC, PGD)  # a vmalloc alias of the future user PGD
    assert m.hvc(33, PGD) == 0
    assert m.hvc(34, PGD) == 0
    assert hv.state.pages.subcount_of(PGD >> 12) == 1
    r = m.store(lva(slot), 0)
    assert r.done, r
    assert not hv.internal_errors, hv.internal_errors
    assert m.plat.halted is None
    assert not hv.check_invariants(m.plat, full=True)


def test_cpu_restarted_after_install_comes_up_with_tvm() -> None:
    """hardened: a CPU (re)started by PSCI CPU_ON after install traps TTBR1 writes from the start."""
    from secvma.platform import CpuStart

    m, hv = booted("hardened")
    m.event(CpuStart(TEXT, 0))  # CPU_OFF + CPU_ON of cpu0: it runs head.S again
    assert m.cpu.tvm
    assert not m.msr(SysReg.TTBR1_EL1, DATA)
    assert hv.refusals[-1].rule == "ttbr1"
    for reg, v in ((SysReg.TTBR0_EL1, IDMAP), (SysReg.TTBR1_EL1, SWAPPER),
                   (SysReg.SCTLR_EL1, SCTLR)):
        assert m.msr(reg, v), reg
    assert not m.msr(SysReg.TTBR0_EL1, IDMAP)  # boot window closed again
    assert not hv.internal_errors and not hv.check_invariants(m.plat, full=True)
