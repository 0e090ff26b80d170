"""Per-bit pins of SCTLR/TCR/MAIR for the stock kernel (`kpcore.pins`), alone and through
`TransparentKPCore` on the fake platform. The values are the ones Debian's 6.1 kernel wrote on
QEMU's `-cpu max` after its CPU was locked (each was refused before the masks)."""

from __future__ import annotations

import pytest
from test_transparent import SCTLR_ENC, SCTLR_ON, _trap, booted

from secvma.kpcore import pins
from secvma.platform import SysReg

PIN_SCTLR = 0x0200_0000_34F4_D91D  # what Debian's kernel had when it was locked on max
PIN_TCR = 0x0150_00F5_B550_3510
TCR_ENC = (3, 0, 2, 0, 2)


def _bit(*ns: int) -> int:
    return sum(1 << n for n in ns)


@pytest.mark.parametrize(("value", "why"), [
    (PIN_SCTLR | _bit(31, 30, 27, 13), "PAuth key enables (EnIA/EnIB/EnDA/EnDB)"),
    (PIN_SCTLR | _bit(35, 36), "BT0/BT1 set late"),
    (PIN_SCTLR & ~_bit(15), "UCT cleared (CTR_EL0 emulated)"),
    (PIN_SCTLR & ~_bit(23), "SPAN cleared (FEAT_PAN)"),
    (PIN_SCTLR | _bit(38), "TCF0 (EL0 MTE checks, per task)"),
])
def test_sctlr_feature_bits_are_let_through(value: int, why: str) -> None:
    assert pins.pinned_ok(SysReg.SCTLR_EL1, value, PIN_SCTLR), why


@pytest.mark.parametrize(("bit", "name"), [(0, "M"), (19, "WXN"), (25, "EE"), (24, "E0E"),
                                           (2, "C"), (12, "I"), (1, "A"), (9, "UMA"),
                                           (14, "DZE"), (26, "UCI")])
def test_sctlr_security_bits_stay_pinned(bit: int, name: str) -> None:
    value = PIN_SCTLR ^ (1 << bit)
    assert pins.changed_pinned(SysReg.SCTLR_EL1, value, PIN_SCTLR) == 1 << bit, name


def test_secondary_cpu_pinned_with_itfsb_accepts_the_read_back_value() -> None:
    """Debian -smp 2 on max: CPU 1 was locked on the INIT_SCTLR_EL1_MMU_ON it wrote (ITFSB,
    bit 37, set: RES0 without MTE), then wrote back the hardware's value: refused before."""
    pinned, value = 0x0200_0020_34F4_D91D, 0x0200_0000_FCF4_F91D
    assert pins.pinned_ok(SysReg.SCTLR_EL1, value, pinned)


def test_set_only_and_clear_only_bits_never_go_back() -> None:
    """BT1 may be set, then not cleared; SPAN may be cleared, then not set again."""
    reg = SysReg.SCTLR_EL1
    with_bti = PIN_SCTLR | _bit(35, 36)
    pin = pins.next_pin(reg, with_bti, PIN_SCTLR)
    assert pin & _bit(36)
    assert not pins.pinned_ok(reg, PIN_SCTLR, pin)  # BTI off again: refused
    no_span = pin & ~_bit(23)
    pin2 = pins.next_pin(reg, no_span, pin)
    assert pins.pinned_ok(reg, no_span, pin)
    assert pins.changed_pinned(reg, no_span | _bit(23), pin2) == _bit(23)
    paused = pin2 & ~_bit(31)  # a task without PAuth: free bits follow the value
    assert pins.pinned_ok(reg, paused, pin2) and pins.next_pin(reg, paused, pin2) == paused


def test_tcr_hd_set_late_is_let_through_but_t0sz_ips_epd_are_pinned() -> None:
    reg = SysReg.TCR_EL1
    assert pins.pinned_ok(reg, PIN_TCR | _bit(40), PIN_TCR)  # HD, as Debian on max
    assert not pins.pinned_ok(reg, PIN_TCR & ~_bit(39), PIN_TCR)  # HA cleared: set only
    for bit in (0, 7, 16, 23, 32, 38):  # T0SZ, EPD0, T1SZ, EPD1, IPS, TBI1
        assert not pins.pinned_ok(reg, PIN_TCR ^ (1 << bit), PIN_TCR), bit


def test_mair_is_pinned_whole() -> None:
    assert pins.pin_mask(SysReg.MAIR_EL1) == pins.ALL


def test_every_let_through_has_a_reason_and_no_overlap() -> None:
    for reg, lts in pins.LET_THROUGH.items():
        seen = 0
        for lt in lts:
            assert lt.reason and lt.mask and not (lt.set_only and lt.clear_only)
            assert not seen & lt.mask, (reg, lt.name)
            seen |= lt.mask
    assert pins.pin_mask(SysReg.SCTLR_EL1) & 1  # SCTLR.M is never let through


def test_transparent_lets_pauth_bits_through_and_refuses_wxn() -> None:
    """Through the policy (CPU locked on swapper with SCTLR_ON): a write adding the PAuth
    enables is carried out and counted; one changing WXN is refused (pinned-sysreg, the
    offending bits logged)."""
    hv, plat, cpu = booted(protect=False)
    assert _trap(hv, plat, cpu, SCTLR_ENC, SysReg.SCTLR_EL1, SCTLR_ON | _bit(31, 30, 27, 13))
    assert not hv.refusals and hv.stats["pin_let_through.SCTLR_EL1"] == 1
    assert not _trap(hv, plat, cpu, SCTLR_ENC, SysReg.SCTLR_EL1, SCTLR_ON | _bit(19))
    assert [r.rule for r in hv.refusals] == ["pinned-sysreg"]
    assert hv.refusals[0].values["bits"] == 1 << 19


def test_null_hypervisor_leaves_pauth_at_el1() -> None:
    """HCR_EL2.API|APK: on -cpu max Debian writes APIAKeyLo_EL1 at boot; without them the write
    trapped to EL2 and the NullHypervisor halted (`--policy none --cpu max` never booted)."""
    from fakes import FakePlatform, FakeVcpu

    from secvma.arch.el2 import HCR_API, HCR_APK
    from secvma.machine.null import NullHypervisor
    from secvma.platform import CpuStart

    hv, plat, cpu = NullHypervisor(), FakePlatform(), FakeVcpu()
    plat.vcpus.append(cpu)
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    assert cpu.stage2 is not None and cpu.stage2[2] & HCR_API and cpu.stage2[2] & HCR_APK
