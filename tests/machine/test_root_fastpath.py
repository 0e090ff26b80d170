"""The trampoline's root fast path (issue 14): TTBR writes of listed roots are done at EL2,
anything else still traps to Python and can be refused; a removed root traps again."""

from __future__ import annotations

import pytest

from secvma.machine import layout
from secvma.machine.mailbox import sysreg_iss_key
from secvma.platform import CpuStart, Event, Hvc, Platform, SysReg, SysregTrap, Vcpu

from .payload import POWEROFF, Recorder, run

ROOT_A = 0x4123_4000  # listed for TTBR0
ROOT_K = 0x4125_6000  # listed for TTBR1
ROOT_BAD = 0x4177_7000  # never listed: Python refuses it
ESR_UNKNOWN = 0x0200_0000


def test_layout_keys_are_the_msr_iss_keys() -> None:
    assert sysreg_iss_key(SysReg.TTBR0_EL1) == layout.TTBR0_ISS_KEY
    assert sysreg_iss_key(SysReg.TTBR1_EL1) == layout.TTBR1_ISS_KEY
    assert layout.ROOT_BUCKETS == 1 << layout.ROOT_BUCKET_BITS and layout.ROOT_WAYS == 4
    assert layout.ROOTTAB_BASE >= layout.MBOX_BASE + layout.MAX_CPUS * layout.MBOX_STRIDE
    assert layout.ROOTTAB_BASE + 2 * layout.ROOT_TABLE_SIZE <= layout.S2_POOL_BASE


class Roots(Recorder):
    """Lists ROOT_A/ROOT_K at CPU start; report 1 removes ROOT_A; refuses ROOT_BAD."""

    def __init__(self) -> None:
        super().__init__(trap_sysregs=True)
        self.trapped: list[tuple[SysReg, int]] = []
        self.in_use: set[int] = set()
        self.in_use_at_trap: list[set[int]] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, CpuStart):
            platform.set_allowed_roots(SysReg.TTBR0_EL1, [ROOT_A])
            platform.set_allowed_roots(SysReg.TTBR1_EL1, [ROOT_K])
            cpu.enable_root_fast_path(frozenset({SysReg.TTBR0_EL1, SysReg.TTBR1_EL1}))
        if isinstance(event, Hvc) and event.imm == 0xAA and event.x[0] == 1:
            self.in_use = platform.roots_in_use(SysReg.TTBR0_EL1)
            platform.set_allowed_roots(SysReg.TTBR0_EL1, [])  # released
        if isinstance(event, SysregTrap) and event.reg in (SysReg.TTBR0_EL1, SysReg.TTBR1_EL1):
            self.trapped.append((event.reg, event.value))
            if event.value & layout.ROOT_BADDR == ROOT_BAD:
                self.events["refused"] += 1
                cpu.inject_abort(ESR_UNKNOWN, 0)
                return
            super().handle(platform, cpu, event)  # performs it
            self.in_use_at_trap.append(platform.roots_in_use(SysReg.TTBR0_EL1))
            return
        super().handle(platform, cpu, event)


@pytest.mark.qemu
def test_listed_root_loaded_at_el2_refused_root_traps_released_root_traps_again() -> None:
    asid = 7 << 48
    res, h = run(f"""
        ldr x5, ={ROOT_A | asid | 1:#x}     // listed root, ASID and CnP set
        mov x4, #100
    1:  msr ttbr0_el1, x5
        subs x4, x4, #1
        b.ne 1b
        ldr x6, ={ROOT_K | asid:#x}
        msr ttbr1_el1, x6
        isb
        mrs x1, ttbr0_el1
        mrs x2, ttbr1_el1
        mov x0, #1
        hvc #0xAA
        msr ttbr0_el1, x5                   // removed at report 1: traps again
        mov x0, #2
        hvc #0xAA
        ldr x7, ={ROOT_K:#x}
        msr ttbr0_el1, x7                   // a TTBR1 root is not a TTBR0 root: traps
        ldr x7, ={ROOT_BAD | asid:#x}
        msr ttbr0_el1, x7                   // never listed: traps, refused (exception)
        mov x0, #3
        hvc #0xAA
    """ + POWEROFF, Roots())
    assert isinstance(h, Roots)
    assert h.reports[0][:3] == (1, ROOT_A | asid | 1, ROOT_K | asid)  # the values were loaded
    assert h.in_use == {ROOT_A}  # the trampoline recorded what the CPU loaded
    assert res.fast_root_traps == 101 and res.fast_traps == 101
    assert h.trapped == [(SysReg.TTBR0_EL1, ROOT_A | asid | 1), (SysReg.TTBR0_EL1, ROOT_K),
                         (SysReg.TTBR0_EL1, ROOT_BAD | asid)]
    # a root Python has decided to load is in use before the CPU resumes (another CPU's trap
    # must not release it meanwhile)
    assert h.in_use_at_trap == [{ROOT_A}, {ROOT_A, ROOT_K}]
    assert [r[0] for r in h.reports] == [1, 2]  # report 3 never reached: refused
    assert h.events["refused"] == 1 and h.exceptions and h.exceptions[0][0] == ESR_UNKNOWN


def test_root_table_buckets_bounded_and_removal_frees_a_slot() -> None:
    from secvma.machine.mailbox import RootTable

    ram = bytearray(2 * layout.ROOT_TABLE_SIZE)
    q = memoryview(ram).cast("Q")
    t = RootTable(q, layout.ROOT_TABLE_SIZE)
    stride = layout.ROOT_BUCKETS << 12  # same bucket
    same = [0x4100_0000 + i * stride for i in range(layout.ROOT_WAYS + 1)]
    assert not t.set(set(same))
    listed = set(t.slots)
    assert len(listed) == layout.ROOT_WAYS and t.left_out == 1  # the fifth keeps trapping
    bucket = q[layout.ROOT_TABLE_SIZE // 8:][(0x4100_0000 >> 12) % layout.ROOT_BUCKETS * 4:][:4]
    assert set(bucket) == listed
    gone = sorted(listed)[0]
    assert t.set(set(same) - {gone})  # a removal is reported (the caller fences)
    assert gone not in set(q) and set(t.slots) == set(same) - {gone}  # the fifth took the slot
    assert not any(q[: layout.ROOT_TABLE_SIZE // 8])  # the other table untouched
