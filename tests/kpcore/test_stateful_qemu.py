"""Hypothesis, on the real machine: random sequences of kernel page-table stores (every form and
width), hypercalls and system-register writes issued by EL1 code of the testbed kernel under
hardened KPCore. After every step: all invariants hold (checked after every trap), the
hypervisor had no internal error, the kernel still answers, and the protected state (kernel
text, rodata, TTBR1, SCTLR, VBAR) is exactly what it was at boot.

VBAR_EL1 moves are not a rule here: the register is not trapped, so a kernel that points it at
non-executable memory loops in its own exception entry before any trap lets hardened restore
it (a self-inflicted hang, covered by the fake-machine tests of the restore)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from secvma.arch.walk import get_leaf
from secvma.hvabi import FORM_WIDTHS, Form
from secvma.kpcore import make_policy
from secvma.platform import PhysAddr, SysReg
from secvma.testbed.build import TestbedImage, build_testbed
from secvma.testbed.commands import TestbedSession

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

VALID_PAGE = 0b11
AF = 1 << 10
SH_INNER = 3 << 8
PXN = 1 << 53
UXN = 1 << 54
AP_RO = 1 << 7
OA = 0x0000_FFFF_FFFF_F000

TRAPPED = [SysReg.SCTLR_EL1, SysReg.TTBR0_EL1, SysReg.TTBR1_EL1, SysReg.TCR_EL1, SysReg.MAIR_EL1,
           SysReg.AMAIR_EL1, SysReg.CONTEXTIDR_EL1, SysReg.ESR_EL1, SysReg.FAR_EL1,
           SysReg.AFSR0_EL1, SysReg.AFSR1_EL1]


_IMAGE: list[TestbedImage] = []


def _image() -> TestbedImage:
    """Build the testbed once, outside hypothesis (a build failure is not a test input)."""
    if not _IMAGE:
        _IMAGE.append(build_testbed())
    return _IMAGE[0]


class RealKPCore(RuleBasedStateMachine):
    """One booted testbed per example; EL1 primitives as rules; protection as invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.hv = make_policy("hardened", check_invariants=True)
        self.session = TestbedSession(self.hv, image=_image(), command_timeout_s=30)
        self.s = self.session.__enter__()
        bi = self.s.boot_info
        assert bi is not None
        self.bi = bi
        self.text = self._digest(bi.text, bi.etext)
        self.rodata = self._digest(bi.rodata, bi.erodata)
        self.regs = {r: self.s.mrs(r).value for r in
                     (SysReg.TTBR1_EL1, SysReg.SCTLR_EL1, SysReg.VBAR_EL1)}
        # a fresh 24-page vmalloc mapping gives a kernel level-3 table with live entries that
        # nothing else uses; the rules store into one 64-byte group of its slots (DC ZVA zeroes
        # a whole group), so a destructive store only ever hits the test's own mappings
        scratch = self.s.image.pa("secvma_scratch")
        va = self.s.vmap(scratch, 24 * 0x1000).value
        first = int(get_leaf(self._read, PhysAddr(bi.swapper_pg_dir), va).slot_pa)
        last = int(get_leaf(self._read, PhysAddr(bi.swapper_pg_dir), va + 23 * 0x1000).slot_pa)
        group = (first + 63) & ~63
        assert last - first == 23 * 8 and group + 64 <= last + 8, "the mapping is not one table"
        self.slot_pa = group
        self.scratch_pa = scratch
        self.step = 0

    def _read(self, pa: int) -> int:
        return self.s.platform.read_u64(PhysAddr(pa))

    def _digest(self, start: int, end: int) -> str:
        return hashlib.sha256(self.s.platform.read(PhysAddr(start), end - start)).hexdigest()

    def teardown(self) -> None:
        self.session.__exit__(None, None, None)

    @initialize()
    def booted(self) -> None:
        assert self.s.nop().ok

    # ---- rules: what a compromised kernel can do ----------------------------------------
    @rule(slot=st.integers(0, 7), form=st.sampled_from(list(Form)), data=st.data(),
          value=st.sampled_from(["data", "text_rw", "text_exec", "user_exec", "zero", "table_to_text",
                                 "random"]))
    def pte_store(self, slot: int, form: Form, data: st.DataObject, value: str) -> None:
        """A store of every form and width into a live kernel level-3 table."""
        width = data.draw(st.sampled_from(FORM_WIDTHS[form]))
        slot_pa = (self.slot_pa + slot * 8) & ~(width - 1)
        text_pa = self.bi.text + data.draw(st.integers(0, 3)) * 0x1000
        v = {
            "data": self.scratch_pa | VALID_PAGE | AF | SH_INNER | PXN | UXN,
            "text_rw": text_pa | VALID_PAGE | AF | SH_INNER | UXN,
            "text_exec": text_pa | VALID_PAGE | AF | SH_INNER | AP_RO | UXN,
            "user_exec": self.scratch_pa | VALID_PAGE | AF | SH_INNER | UXN,
            "zero": 0,
            "table_to_text": text_pa | VALID_PAGE,
            "random": data.draw(st.integers(0, 2**64 - 1)),
        }[value]
        v &= (1 << (8 * width)) - 1
        self.s.write(slot_pa + self.bi.linear_offset, v, width, form)
        self.step += 1

    @rule(nr=st.one_of(st.sampled_from([0, 1, 2, 5, 6, 30, 31, 32, 33, 34, 35]),
                       st.integers(0, 2**64 - 1)),
          args=st.lists(st.one_of(st.integers(0, 2**64 - 1),
                                  st.sampled_from([0, 0x4200_0000, 0x4000_0000, 0xFFFF_0000_0000_0000])),
                        min_size=0, max_size=5))
    def hypercall(self, nr: int, args: list[int]) -> None:
        """A raw HVC with hostile arguments."""
        if nr == 35 or nr == 6:
            return  # legal uses are the kernel's own; forged switches are covered by unit tests
        self.s.hvc(nr, *args)
        self.step += 1

    @rule(reg=st.sampled_from(TRAPPED), value=st.integers(0, 2**64 - 1))
    def sysreg_write(self, reg: SysReg, value: int) -> None:
        """An MSR of a trapped translation/control register with any value."""
        self.s.msr(reg, value)
        self.step += 1

    @rule(offset=st.integers(0, 0x3FF8).map(lambda x: x & ~7), value=st.integers(0, 2**64 - 1))
    def write_text(self, offset: int, value: int) -> None:
        """A plain store into kernel text."""
        r = self.s.write(self.bi.va_of(self.bi.text + offset), value)
        assert r.faulted, "a store to kernel text completed"

    # ---- invariants ---------------------------------------------------------------------
    @invariant()
    def hypervisor_healthy(self) -> None:
        assert not self.hv.internal_errors, self.hv.internal_errors
        assert not self.hv.invariant_violations, self.hv.invariant_violations[:3]

    @invariant()
    def kernel_alive_and_protected_state_unchanged(self) -> None:
        assert self.s.nop().ok
        assert self._digest(self.bi.text, self.bi.etext) == self.text
        assert self._digest(self.bi.rodata, self.bi.erodata) == self.rodata
        for reg, want in self.regs.items():
            assert self.s.mrs(reg).value == want, reg.name


def test_real_kpcore_state_machine() -> None:
    """Random EL1 attack sequences never break hardened KPCore's invariants or protections."""
    _image()
    run_state_machine_as_test(RealKPCore, settings=settings(
        max_examples=10, stateful_step_count=20, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
