"""Transparent mode (TransparentKPCore): rules on a fake machine, and the Debian kernel on QEMU."""

from __future__ import annotations

import pytest
from fakes import ATTR_NORMAL, PTE_PAGE, PXN, TCR, UXN, FakePlatform, FakeVcpu

from secvma.arch.el2 import VTCR_4G
from secvma.arch.esr import DataAbort
from secvma.arch.walk import AccessType, Fault, translate_stage2
from secvma.kpcore.faults import ESR_UNKNOWN
from secvma.kpcore.pages import Usage
from secvma.kpcore.transparent import TransparentKPCore
from secvma.platform import CpuStart, PhysAddr, Stage2Abort, SysReg, SysregTrap

TTBR1_ENC = (3, 0, 2, 0, 1)
SCTLR_ENC = (3, 0, 1, 0, 0)
RESERVED = 0x4300_0000
INIT_PG = 0x4400_0000
SWAPPER = RESERVED + 0x1000
PUD, PMD, PTE = 0x4310_0000, 0x4310_1000, 0x4310_2000
TEXT_PA = 0x4280_0000
DATA_PA = 0x4290_0000
KVA = 0xFFFF_8000_0800_0000  # L0 256, L1 0, L2 64, L3 0
SCTLR_ON = 0x30D0_5805


def _trap(hv: TransparentKPCore, plat: FakePlatform, cpu: FakeVcpu, enc: tuple[int, ...],
          reg: SysReg, value: int) -> bool:
    """One trapped MSR; True if it was carried out (PC advanced, no injection)."""
    cpu.elr, n = 0xFFFF_8000_0801_0000, len(cpu.injected)
    cpu.regs[9] = value
    hv.handle(plat, cpu, SysregTrap(enc, reg, True, 9, value))  # type: ignore[arg-type]
    return cpu.elr == 0xFFFF_8000_0801_0004 and len(cpu.injected) == n


def _kernel(plat: FakePlatform) -> None:
    """swapper -> PUD -> PMD -> PTE; PTE[0] maps TEXT_PA executable (kernel text)."""
    plat.write_u64(PhysAddr(SWAPPER + 8 * 256), PUD | 3)
    plat.write_u64(PhysAddr(PUD), PMD | 3)
    plat.write_u64(PhysAddr(PMD + 8 * 64), PTE | 3)
    plat.write_u64(PhysAddr(PTE), TEXT_PA | ATTR_NORMAL | PTE_PAGE | UXN)
    plat.write_u64(PhysAddr(PTE + 8), DATA_PA | ATTR_NORMAL | PTE_PAGE | UXN | PXN)


def booted(protect: bool) -> tuple[TransparentKPCore, FakePlatform, FakeVcpu]:
    """reserved_pg_dir, init_pg_dir, swapper_pg_dir (= reserved + 4 KB) loaded in order."""
    hv, plat, cpu = TransparentKPCore(protect_tables=protect), FakePlatform(), FakeVcpu()
    _kernel(plat)
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    cpu.sysregs[SysReg.TCR_EL1] = TCR
    cpu.sysregs[SysReg.SCTLR_EL1] = SCTLR_ON
    for base in (RESERVED, INIT_PG, SWAPPER):
        assert _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, base)
    assert hv.learned.swapper == SWAPPER
    return hv, plat, cpu


def test_stage2_and_traps_set_up() -> None:
    hv, plat, cpu = TransparentKPCore(), FakePlatform(), FakeVcpu()
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    assert cpu.tvm and cpu.stage2 is not None
    vttbr = cpu.stage2[0]
    # guest RAM is mapped, the hypervisor's region is not
    assert not isinstance(translate_stage2(plat.read_u64, 0x4300_0000, AccessType.STORE, 1,
                                           vtcr=VTCR_4G, vttbr=vttbr), Fault)
    assert isinstance(translate_stage2(plat.read_u64, 0x4010_0000, AccessType.LOAD, 1,
                                       vtcr=VTCR_4G, vttbr=vttbr), Fault)


def test_ttbr1_learned_root_allowed_other_root_refused() -> None:
    hv, plat, cpu = booted(protect=False)
    assert _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, SWAPPER | (5 << 48))  # ASID
    assert _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, RESERVED - 0x1000)  # tramp
    assert not _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, INIT_PG)
    assert cpu.injected[-1] == (ESR_UNKNOWN, 0)
    assert [r.rule for r in hv.refusals] == ["ttbr1-root"]


def test_sctlr_pinned_once_on_swapper() -> None:
    hv, plat, cpu = booted(protect=False)
    assert _trap(hv, plat, cpu, SCTLR_ENC, SysReg.SCTLR_EL1, SCTLR_ON)  # same value
    assert not _trap(hv, plat, cpu, SCTLR_ENC, SysReg.SCTLR_EL1, SCTLR_ON & ~1)  # MMU off
    assert [r.rule for r in hv.refusals] == ["pinned-sysreg"]


def test_sctlr_free_before_swapper() -> None:
    hv, plat, cpu = TransparentKPCore(), FakePlatform(), FakeVcpu()
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    assert _trap(hv, plat, cpu, SCTLR_ENC, SysReg.SCTLR_EL1, 0x30D0_0800)
    assert _trap(hv, plat, cpu, SCTLR_ENC, SysReg.SCTLR_EL1, SCTLR_ON)
    assert not hv.refusals


def _s2_writable(hv: TransparentKPCore, plat: FakePlatform, pa: int) -> bool:
    res = translate_stage2(plat.read_u64, pa, AccessType.STORE, 1, vtcr=VTCR_4G,
                           vttbr=hv.state.s2.vttbr())
    return not isinstance(res, Fault)


def _store(hv: TransparentKPCore, plat: FakePlatform, cpu: FakeVcpu, pa: int, value: int) -> None:
    esr = DataAbort(lower_el=True, il=True, isv=True, sas=3, sse=False, srt=2, sf=True,
                    ar=False, vncr=False, fnv=False, ea=False, cm=False, s1ptw=False, wnr=True,
                    dfsc=0x0F).encode()
    cpu.regs[2] = value
    cpu.elr = 0xFFFF_8000_0801_0000
    hv.handle(plat, cpu, Stage2Abort(esr, 0xFFFF_0000_0000_0000 | (pa & 0xFFF), PhysAddr(pa),
                                     False, True, False, False))


def test_tables_learned_and_write_protected() -> None:
    hv, plat, _cpu = booted(protect=True)
    st = hv.state
    assert st.pages.usage_of(SWAPPER >> 12) is Usage.EL1_PGD
    assert [st.pages.usage_of(p >> 12) for p in (PUD, PMD, PTE)] == \
        [Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE]
    assert st.pages.usage_of(TEXT_PA >> 12) is Usage.EL1_KCODE
    assert st.pages.usage_of(DATA_PA >> 12) is Usage.NONE
    for pa in (SWAPPER, PUD, PMD, PTE, RESERVED):
        assert not _s2_writable(hv, plat, pa), hex(pa)
    assert _s2_writable(hv, plat, DATA_PA)
    hv.lock_text(st)
    assert not _s2_writable(hv, plat, TEXT_PA)


def test_pxn_forced_on_executable_leaf_to_non_text() -> None:
    hv, plat, cpu = booted(protect=True)
    cpu.skips = 0
    _store(hv, plat, cpu, PTE + 16, DATA_PA | ATTR_NORMAL | PTE_PAGE | UXN)  # PXN clear
    assert plat.read_u64(PhysAddr(PTE + 16)) & PXN
    _store(hv, plat, cpu, PTE + 24, TEXT_PA | ATTR_NORMAL | PTE_PAGE | UXN)  # text: kept
    assert not plat.read_u64(PhysAddr(PTE + 24)) & PXN
    assert cpu.skips == 2 and not hv.refusals and hv.stats["pxn_fixups"] == 1


def test_reserved_pg_dir_stays_empty() -> None:
    hv, plat, cpu = booted(protect=True)
    _store(hv, plat, cpu, RESERVED, PUD | 3)
    assert plat.read_u64(PhysAddr(RESERVED)) == 0
    assert [r.rule for r in hv.refusals] == ["reserved-pgd"]


def test_new_table_claimed_before_link() -> None:
    hv, plat, cpu = booted(protect=True)
    cpu.skips = 0
    new_pte = 0x4320_0000
    _store(hv, plat, cpu, PMD + 8 * 65, new_pte | 3)
    assert hv.state.pages.usage_of(new_pte >> 12) is Usage.EL1_PTE  # claimed, store retried
    assert plat.read_u64(PhysAddr(PMD + 8 * 65)) == 0 and cpu.skips == 0
    _store(hv, plat, cpu, PMD + 8 * 65, new_pte | 3)
    assert plat.read_u64(PhysAddr(PMD + 8 * 65)) == new_pte | 3
    assert not _s2_writable(hv, plat, new_pte)


def test_hostile_values_never_raise() -> None:
    hv, plat, cpu = booted(protect=True)
    for value in (0, (1 << 64) - 1, 0xFFFF_FFFF_F003, 0x4010_0003):
        _store(hv, plat, cpu, PMD + 8 * 70, value)
        _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, value)
    assert not hv.internal_errors and plat.halted is None


# --- the Debian kernel on QEMU ------------------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
@pytest.mark.parametrize("smp", [1, 2])
def test_debian_boots_under_transparent(debian: object, smp: int) -> None:
    """Roots learned and checked, registers pinned, zero refusals, /init runs, power-off."""
    from secvma.machine.initramfs import INIT_BANNER, build_initramfs
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    hv = TransparentKPCore()
    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(),  # type: ignore[attr-defined]
                             ncpus=smp, timeout_s=120), hv, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.console[-2000:]
    assert INIT_BANNER.decode() in res.first_seen
    assert not hv.refusals and not hv.internal_errors, hv.summary()
    ln = hv.learned
    assert ln.reserved is not None and ln.swapper == ln.reserved + 0x1000
    assert ln.tramp == ln.reserved - 0x1000  # KPTI
    assert hv.stats["ttbr1_checked"] > 0
    assert hv.stats["cpus_locked"] == smp


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
def test_debian_kernel_tables_protected_through_boot(debian: object) -> None:
    """With table protection the kernel boots to `Run /init` with its tables read-only."""
    from secvma.machine.initramfs import build_initramfs
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    hv = TransparentKPCore(protect_tables=True)
    checked: dict[str, list[int]] = {}

    def at_init(console: object) -> bool:
        """At `Run /init` (guest RAM still mapped): which protected pages are writable."""
        if b"Run /init" not in console.first_seen:  # type: ignore[attr-defined]
            return False
        st = hv.state
        pgd = st.pages.pages_of(Usage.EL1_PGD)
        pte = st.pages.pages_of(Usage.EL1_PTE)
        text = st.pages.pages_of(Usage.EL1_KCODE)
        checked["pgd"], checked["pte"], checked["text"] = pgd, pte, text
        checked["writable"] = [p for p in [*pgd, *pte, *text[::16]]
                               if _s2_writable(hv, st.s2.mem, p << 12)]  # type: ignore[arg-type]
        return True

    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(),  # type: ignore[attr-defined]
                             ncpus=1, timeout_s=120), hv, watch=(b"Run /init",), until=at_init)
    assert res.exit == "until", res.console[-2000:]
    assert not hv.refusals and not hv.internal_errors, hv.summary()
    assert hv.learned.swapper is not None and hv.learned.swapper >> 12 in checked["pgd"]
    assert len(checked["pte"]) >= 100 and len(checked["text"]) >= 1000
    assert checked["writable"] == []
    assert hv.stats["table_stores"] > 0 and hv.stats["tables_claimed"] > 0
    # the stock kernel asks for EL1-executable mappings of pages that are not kernel text
    # while it boots (7 on 6.1.0-50); each gets PXN forced on instead of being refused, and the
    # boot still reaches /init
    assert hv.text_locked and hv.stats["pxn_fixups"] > 0
