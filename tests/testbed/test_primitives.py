"""The attack primitives under policy none: each works, and a faulting one reports its fault."""

from __future__ import annotations

import pytest

from secvma.hvabi import FORM_WIDTHS, HVC_ENOSYS, Form, Hvc, Status
from secvma.platform import PhysAddr
from secvma.testbed.commands import TestbedSession
from secvma.testbed.image import linear_va

pytestmark = pytest.mark.qemu

EC_DABT_CUR = 0x25
EC_IABT_CUR = 0x21
SIGSEGV = -11
PATTERN = 0x1122_3344_5566_7788


LSE_FORMS = (Form.CAS, Form.SWP, Form.LDADD)


def session_has_lse(s: TestbedSession) -> bool:
    """The board's CPU implements FEAT_LSE (cortex-a57, the default, does not)."""
    return s.cpu != "cortex-a57"


def scratch(s: TestbedSession, off: int = 0) -> int:
    return s.image.va("secvma_scratch") + off


@pytest.mark.parametrize("form", [f for f in Form if f != Form.DC_ZVA])
def test_write_then_read_kernel_data_with_every_store_form(session: TestbedSession,
                                                           form: Form) -> None:
    """Each store form and width lands in kernel data exactly as a plain store would."""
    for width in FORM_WIDTHS[form]:
        va = scratch(session, 0x100)
        assert session.write(va, 0, 8).ok and session.write(va + 8, 0, 8).ok
        r = session.write(va, PATTERN, width, form, value2=0xABCD)
        if form == Form.STTR:  # unprivileged store: EL0 may not write kernel data
            assert r.faulted and r.ec == EC_DABT_CUR and r.far == va
            continue
        if form in LSE_FORMS and not session_has_lse(session):
            assert r.faulted and r.ec == 0, (form, r)  # UNDEFINED on a v8.0 CPU (cortex-a57)
            continue
        assert r.ok, r.msg
        got = session.read(va, 8).value
        if form == Form.STP_XZR:
            assert got == 0
        elif form in (Form.STR_Q, Form.ST1):  # 128 bits: value, then value2 right after it
            assert got == PATTERN and session.read(va + 8).value == 0xABCD, (form, hex(got))
        elif form in (Form.STP, Form.STNP):  # pair: value, then value2 right after it
            mask = (1 << (8 * width)) - 1
            want = ((PATTERN & mask) | ((0xABCD & mask) << (8 * width))) & ((1 << 64) - 1)
            assert got == want, (form, width, hex(got))
            assert session.read(va + 8).value == (0xABCD if width == 8 else 0)
        else:
            assert got == PATTERN & ((1 << (8 * width)) - 1), (form, width, hex(got))
        if form in (Form.STXR, Form.STLXR):
            assert r.ret[1] == 0  # exclusive store succeeded


def test_read_of_each_width(session: TestbedSession) -> None:
    """Loads of 1, 2, 4 and 8 bytes see the little-endian value."""
    va = scratch(session, 0x200)
    assert session.write(va, PATTERN).ok
    for width in (1, 2, 4, 8):
        assert session.read(va, width).value == PATTERN & ((1 << (8 * width)) - 1)


def test_dc_zva_zeroes_one_block(session: TestbedSession) -> None:
    """DC ZVA clears the whole cache-line block around the address, a store without a value."""
    va = scratch(session, 0x400)
    for off in range(0, 64, 8):
        session.write(va + off, PATTERN)
    assert session.write(va + 8, 0, 8, "dc_zva").ok
    assert all(session.read(va + off).value == 0 for off in range(0, 64, 8))


def test_faulting_read_reports_esr_and_far_and_the_kernel_goes_on(session: TestbedSession) -> None:
    """An access to an unmapped kernel VA is caught by the kernel's fixup, not fatal."""
    bad = 0xFFFF_8000_7000_0000
    r = session.read(bad)
    assert r.status == Status.FAULT and r.far == bad and r.ec == EC_DABT_CUR
    assert r.esr & 0x3F in range(4, 8)  # translation fault, some level
    assert session.nop().ok
    assert session.read(scratch(session)).ok


def test_write_to_kernel_text_is_a_permission_fault(session: TestbedSession) -> None:
    """Kernel text is mapped read-only at stage 1: the store faults and is reported."""
    text = session.image.va("_text")
    r = session.write(text, 0)
    assert r.faulted and r.ec == EC_DABT_CUR and (r.esr & 0x3C) == 0xC and r.far == text


def test_exec_runs_kernel_code_and_catches_execution_of_data(session: TestbedSession) -> None:
    """Executing kernel text returns normally; executing data (PXN) is an instruction abort."""
    r = session.exec(session.image.va("testbed_exec_target"), 5)
    assert r.ok and r.value == 5 + 0x5EC0
    r = session.exec(scratch(session))
    assert r.faulted and r.ec == EC_IABT_CUR and r.far == scratch(session)


def test_msr_and_mrs_of_an_el1_register(session: TestbedSession) -> None:
    """MSR CONTEXTIDR_EL1 takes effect (policy none does not trap it)."""
    assert session.msr("CONTEXTIDR_EL1", 0x5EC).ok
    assert session.mrs("contextidr_el1").value == 0x5EC
    with pytest.raises(ValueError):
        session.msr("NOT_A_REG", 0)


def test_raw_hypercalls_reach_the_hypervisor(session: TestbedSession) -> None:
    """HVC with any number reaches EL2; the module loader calls answer ENOSYS under none."""
    assert session.hvc(99, 1, 2, 3).value == 0
    assert session.hvc(Hvc.MLOAD, 0, 0, 0, 0, 0).value == HVC_ENOSYS


def test_dma_moves_real_data_through_the_disk(session: TestbedSession) -> None:
    """A page filled by the kernel goes to the virtio disk and comes back into another page
    (under none the SMMU is off: IOVA = PA reaches memory directly)."""
    src, dst = session.alloc_page(), session.alloc_page()
    assert src.ok and dst.ok
    w = session.dma(src.ret[1], 4096, to_device=True, sector=64, fill=0x5A)
    assert w.ok, w.msg
    assert w.ret[2] == 8  # 00:01.0: StreamID = requester ID
    r = session.dma(dst.ret[1], 4096, sector=64)
    assert r.ok, r.msg
    assert session.platform.read(PhysAddr(dst.ret[1]), 4096) == b"\x5a" * 4096
    bad = session.dma(dst.ret[1], 100)
    assert bad.status == Status.BADARG


def test_at_translates_kernel_addresses(session: TestbedSession) -> None:
    """AT S1E1R of a kernel-image VA gives its PA; of the linear alias the same PA."""
    va = scratch(session)
    pa = session.image.pa("secvma_scratch")
    assert session.at(va).value & 0xFFFF_FFFF_F000 == pa
    assert session.at(linear_va(pa)).value & 0xFFFF_FFFF_F000 == pa


def test_el0_process_touching_kernel_memory_is_killed_and_kernel_goes_on(
        session: TestbedSession) -> None:
    """A user read of kernel text kills the process with SIGSEGV; later work is unaffected."""
    r = session.spawn("read", session.image.va("_text"))
    assert r.ok and r.signed == SIGSEGV
    r = session.spawn("write", scratch(session))
    assert r.signed == SIGSEGV
    assert session.spawn("exit", 9).signed == 9
    assert session.spawn("hello").signed == 0


def test_pool_page_allocation(session: TestbedSession) -> None:
    """A page-table pool page comes back zeroed, inside the pool the boot info announces."""
    assert session.boot_info is not None
    r = session.alloc_page(pgtable_pool=True)
    assert r.ok
    va, pa = r.ret[0], r.ret[1]
    assert session.boot_info.pgtable_pool <= pa < session.boot_info.pgtable_pool_end
    assert session.read(va).value == 0
    assert session.free_page(pa, pgtable_pool=True).ok


def test_boot_info_matches_the_kernel_elf(session: TestbedSession) -> None:
    """HVC 6's boot-info block names the same sections and tables as the ELF symbols."""
    bi, img = session.boot_info, session.image
    assert bi is not None
    assert bi.text == img.pa("_text") and bi.etext == img.pa("_etext")
    assert bi.swapper_pg_dir == img.pa("swapper_pg_dir")
    assert bi.empty_zero_page == img.pa("empty_zero_page")
    assert bi.vdso == img.pa("__vdso_start") and bi.rodata <= bi.vdso < bi.erodata
    assert bi.cmd_mailbox == img.pa("secvma_cmd")
    for name in ("etext", "erodata", "einittext", "data", "bss", "end", "reserved",
                 "pgtable_pool", "mod_text_pool", "mod_ro_pool"):
        assert getattr(bi, name) % 0x1000 == 0, name
    for name in ("etext", "erodata", "data", "bss", "end", "reserved"):
        assert getattr(bi, name) % 0x20_0000 == 0, name
    assert bi.va_of(bi.text) == img.va("_text")


def test_exported_symbols_resolve_like_the_elf(session: TestbedSession) -> None:
    """The ksymtab lookup (what a module links against) agrees with the ELF symbol table."""
    for name in ("printk", "vmalloc", "module_report", "secvma_test_value"):
        assert session.symbol(name).value == session.image.va(name)
    assert session.symbol("not_exported").status == Status.FAILED


def test_host_loaded_module_runs_init_and_exit(session: TestbedSession) -> None:
    """A .ko sent from the host goes through the module path and its init/exit run."""
    ko = session.testbed.modules["mod_counter"].read_bytes()
    r = session.load_module(ko)
    assert r.ok, r.msg
    handle, rc = r.ret[0], r.ret[2]
    assert rc == 0 and "kernel-side loader" in r.msg
    assert session.unload_module(handle).ok


def test_self_check_catches_corrupted_kernel_data(session: TestbedSession) -> None:
    """The modules workload fails, with a reason, when an exported variable was tampered with."""
    va = session.image.va("secvma_test_value")
    old = session.read(va).value
    assert session.write(va, 7).ok
    r = session.workload("modules")
    assert r.status == Status.FAILED and "reported" in r.msg
    assert session.write(va, old).ok
    assert session.workload("modules").ok
