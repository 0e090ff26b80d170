"""Attack scenarios: what a compromised kernel tries, and the evidence of what happened.

Each scenario drives the testbed kernel's EL1 primitives (`secvma.testbed.commands`) and decides
its verdict from the effect, never from the mere absence of an error: text bytes that changed,
injected code that returned its magic value, a register that holds the forged value. The
expected verdict per policy is part of the scenario, so the suite shows at a glance which
attacks SECvma's C design stops, which gaps of docs/kpcore-spec.md §11 it leaves open, and that
`hardened` closes them. Under `none` every attack must succeed: that shows it is real.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.arch.descriptors import AF, DESC_TABLE, DESC_VALID, SH_SHIFT, Shareability
from secvma.arch.walk import get_leaf
from secvma.hvabi import HVC_ENOSYS, MODLOAD_F_NO_INIT, BootInfo, Form, Op
from secvma.platform import PhysAddr, SysReg
from secvma.testbed.commands import Command, TestbedSession, write_cmd

# `mov x0, #42; ret`: injected code returns 42 when it runs
SHELLCODE = (0xD2800540, 0xD65F03C0)
MAGIC = 42

VALID_PAGE = DESC_VALID | DESC_TABLE  # a level-3 page descriptor
SH_INNER = int(Shareability.INNER) << SH_SHIFT


class Verdict(enum.Enum):
    SUCCEEDED = "succeeded"  # the attacker got the effect
    BLOCKED = "blocked"  # no effect, the kernel goes on
    HALTED = "blocked (machine halted)"  # no effect; the hypervisor panicked/stalled the kernel
    INTERNAL_ERROR = "internal error"  # the hypervisor hit a model bug: never an expected verdict
    NOT_APPLICABLE = "n/a"
    ERROR = "error"  # the run could not judge (setup failed, no report): never expected


@dataclass
class Evidence:
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class Attack:
    """A scenario: `run(session)` performs it and returns the evidence."""

    name: str
    goal: str
    run: Callable[[TestbedSession], Evidence]
    expect: dict[str, frozenset[Verdict]] = field(default_factory=dict)
    gap: str = ""  # the docs/kpcore-spec.md §11 gap it exercises, if any
    halt_why: str = ""
    """Why halting the machine is the only answer `hardened` has here (empty: it must refuse)."""
    fixed_up: str = ""
    """How `hardened` takes the effect away without a refusal (e.g. PXN forced on a store it
    emulates); empty: a logged refusal must stop the attack."""
    ncpus: int = 1
    """vCPUs the scenario needs (the races run on two)."""

    def __post_init__(self) -> None:
        for policy, verdicts in self.expect.items():
            if Verdict.INTERNAL_ERROR in verdicts:
                raise ValueError(f"{self.name}: an internal error is never an expected verdict")
            if policy == "hardened" and Verdict.HALTED in verdicts and not self.halt_why:
                raise ValueError(f"{self.name}: hardened blocks by refusing; say why a halt is "
                                 "the only answer (halt_why) to expect one")


# secvma2024 answers a refused register write or a malformed hypercall with a panic (the C
# design's BUG_ON), so a halt with a logged PANIC refusal is one of its ways of blocking;
# hardened refuses and the kernel goes on.
PANICS = frozenset({Verdict.BLOCKED, Verdict.HALTED})
REFUSED = frozenset({Verdict.BLOCKED})
SUCCEEDS = frozenset({Verdict.SUCCEEDED})
BLOCKED = {"none": SUCCEEDS, "secvma2024": PANICS, "hardened": REFUSED}
GAP = {"none": SUCCEEDS, "secvma2024": SUCCEEDS, "hardened": REFUSED}


def _bi(s: TestbedSession) -> BootInfo:
    assert s.boot_info is not None
    return s.boot_info


def _read_pa(s: TestbedSession, pa: int, n: int) -> bytes:
    return s.platform.read(PhysAddr(pa), n)


def _plant_shellcode(s: TestbedSession) -> int:
    """Put the shellcode in a fresh page of ordinary kernel memory; return its PA.

    Ordinary memory (usage class NONE) is RW and, on a CPU without FEAT_XNX, executable at
    stage 2 (docs/kpcore-spec.md §2.3), so only the stage-1 PXN rules stand between it and EL1.
    """
    page = s.alloc_page()
    if not page.ok:
        raise RuntimeError("the kernel could not allocate a page")
    va, pa = page.ret[0], page.ret[1]
    if not s.write(va, SHELLCODE[0] | (SHELLCODE[1] << 32)).ok:
        raise RuntimeError("could not write the shellcode into kernel memory")
    return int(pa)


def _ran(s: TestbedSession, va: int, slot: int | None = None) -> Evidence:
    pte = f"; PTE {s.platform.read_u64(PhysAddr(slot)):#x}" if slot is not None else ""
    r = s.exec(va)
    if r.ok and r.value == MAGIC:
        return Evidence(Verdict.SUCCEEDED, f"injected code at {va:#x} ran and returned {MAGIC}{pte}")
    return Evidence(Verdict.BLOCKED, f"exec at {va:#x}: {r.status.name.lower()} "
                                     f"(ESR {r.esr:#x}){pte}")


def _empty_pte_after(s: TestbedSession, va: int) -> tuple[int, int]:
    """(VA, PA of its level-3 slot) of the first unmapped page after `va` in the same table."""
    bi = _bi(s)
    read = s.platform.read_u64
    leaf = get_leaf(lambda pa: read(PhysAddr(pa)), PhysAddr(bi.swapper_pg_dir), va)
    if leaf.level != 3:
        raise RuntimeError(f"{va:#x} is not mapped by a level-3 entry")
    for i in range(1, 64):
        slot = int(leaf.slot_pa) + 8 * i
        if slot & ~0xFFF != int(leaf.slot_pa) & ~0xFFF:
            break
        if read(PhysAddr(slot)) == 0:
            return va + 0x1000 * i, slot
    raise RuntimeError("no free slot next to the vmalloc mapping")


# ---- the scenarios ---------------------------------------------------------------------------

def write_text_via_alias(s: TestbedSession) -> Evidence:
    """Map a kernel text page writable in vmalloc, then patch it through the alias."""
    bi = _bi(s)
    target = bi.text + 0x1000
    before = _read_pa(s, target, 8)
    alias = s.vmap(target, 0x1000, 0)
    if not alias.ok:
        return Evidence(Verdict.BLOCKED, "the writable alias could not be mapped")
    w = s.write(alias.value, 0xD4200000D4200000)  # brk #0
    after = _read_pa(s, target, 8)
    if after != before:
        return Evidence(Verdict.SUCCEEDED, f"kernel text at PA {target:#x} now {after.hex()}")
    return Evidence(Verdict.BLOCKED, f"store through the alias {w.status.name.lower()} "
                                     f"(ESR {w.esr:#x}); text unchanged")


def write_rodata_via_alias(s: TestbedSession) -> Evidence:
    """Map a read-only-data page writable, then overwrite it."""
    bi = _bi(s)
    target = bi.rodata
    before = _read_pa(s, target, 8)
    alias = s.vmap(target, 0x1000, 0)
    if not alias.ok:
        return Evidence(Verdict.BLOCKED, "the writable alias could not be mapped")
    w = s.write(alias.value, 0x4141414141414141)
    after = _read_pa(s, target, 8)
    if after != before:
        return Evidence(Verdict.SUCCEEDED, f"rodata at PA {target:#x} now {after.hex()}")
    return Evidence(Verdict.BLOCKED, f"store {w.status.name.lower()} (ESR {w.esr:#x}); unchanged")


def exec_injected_code(s: TestbedSession) -> Evidence:
    """Write code into kernel memory and map it executable through the kernel's own vmap."""
    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 2)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "the executable mapping could not be created")
    return _ran(s, m.value)


def narrow_store_pxn_bypass(s: TestbedSession) -> Evidence:
    """Gap 1: a 4-byte store of a descriptor's low half into an empty PTE slot (PXN lost)."""
    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    va, slot = _empty_pte_after(s, m.value)
    desc = pa | VALID_PAGE | AF | SH_INNER  # EL1 RW, PXN clear: the attacker's wish
    w = s.write(slot + _bi(s).linear_offset, desc & 0xFFFF_FFFF, 4, Form.STR)
    if not w.ok:
        return Evidence(Verdict.BLOCKED, f"the 4-byte PTE store {w.status.name.lower()} "
                                         f"(ESR {w.esr:#x})")
    return _ran(s, va, slot)


def stxr_drops_pxn(s: TestbedSession) -> Evidence:
    """Gap 9: a 64-bit STXR of a descriptor; the C emulation keeps only the low 32 bits."""
    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    va, slot = _empty_pte_after(s, m.value)
    desc = pa | VALID_PAGE | AF | SH_INNER  # PXN clear; the hypervisor sets it, in the high half
    w = s.write(slot + _bi(s).linear_offset, desc, 8, Form.STXR)
    if not w.ok:
        return Evidence(Verdict.BLOCKED, f"the STXR {w.status.name.lower()} (ESR {w.esr:#x})")
    return _ran(s, va, slot)


def forge_ttbr1(s: TestbedSession) -> Evidence:
    """Copy swapper_pg_dir to a page the kernel controls and load it into TTBR1."""
    bi = _bi(s)
    page = s.alloc_page()
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page")
    copy_va, copy_pa = page.ret[0], page.ret[1]
    for off in range(0, 0x1000, 8):
        v = s.platform.read_u64(PhysAddr(bi.swapper_pg_dir + off))
        if v:
            s.write(copy_va + off, v)
    before = s.mrs(SysReg.TTBR1_EL1).value
    forged = copy_pa | (before & ~0x0000_FFFF_FFFF_FFFE)
    s.msr(SysReg.TTBR1_EL1, forged)
    now = s.mrs(SysReg.TTBR1_EL1).value
    if now & 0x0000_FFFF_FFFF_F000 == copy_pa:
        return Evidence(Verdict.SUCCEEDED, f"TTBR1 now points at the kernel's own copy {copy_pa:#x}")
    return Evidence(Verdict.BLOCKED, f"TTBR1 still {now:#x}")


def _pin_attack(reg: SysReg, flip: int) -> Callable[[TestbedSession], Evidence]:
    def run(s: TestbedSession) -> Evidence:
        before = s.mrs(reg).value
        s.msr(reg, before ^ flip)
        now = s.mrs(reg).value
        if now != before:
            return Evidence(Verdict.SUCCEEDED, f"{reg.name} {before:#x} -> {now:#x}")
        return Evidence(Verdict.BLOCKED, f"{reg.name} still {now:#x}")
    run.__doc__ = f"Flip bits {flip:#x} of {reg.name} with a plain MSR."
    return run


MDSCR_KDE = 1 << 13
BAD_FIQ_PANIC = "bad mode: unexpected exception kind 2"
GUARD_WAIT_S = 0.1  # > the guard interval (10 ms) and many timer ticks (2 ms)


def vbar_forge(s: TestbedSession) -> Evidence:
    """Point VBAR_EL1 one entry off (VBAR is not trapped by TVM) and wait for an interrupt.

    The forged base is the kernel's vectors + 0x80, so an IRQ taken at EL1 (offset 0x280)
    lands in the FIQ entry (vectors + 0x300), whose handler panics with a recognisable
    message (and, its own faults taken through the forged table too, never gets further): that
    message is the evidence the forged vector was used. Without the guard the register is seen
    by the hypervisor only at the next trap, which the idle kernel never takes first.
    """
    real = s.mrs(SysReg.VBAR_EL1).value
    forged = real + 0x80
    s.msr(SysReg.VBAR_EL1, forged)
    time.sleep(GUARD_WAIT_S)
    if not s.answers_within(5.0):
        if BAD_FIQ_PANIC in s.console_text():
            return Evidence(Verdict.SUCCEEDED, f"VBAR_EL1 {real:#x} -> {forged:#x}: the next IRQ "
                                               "entered the forged vector (FIQ slot: kernel panic)")
        raise RuntimeError("the kernel stopped answering without the forged vector's mark")
    now = s.mrs(SysReg.VBAR_EL1).value
    if now == forged:
        return Evidence(Verdict.SUCCEEDED, f"VBAR_EL1 still forged ({now:#x}) after interrupts")
    if BAD_FIQ_PANIC in s.console_text():
        return Evidence(Verdict.SUCCEEDED, "the forged vector ran (FIQ slot), VBAR restored later")
    return Evidence(Verdict.BLOCKED, f"VBAR_EL1 back at {now:#x} (forged {forged:#x}); interrupts "
                                     "kept entering the real vectors")


def mdscr_kde(s: TestbedSession) -> Evidence:
    """Set MDSCR_EL1.KDE (debug exceptions at EL1; no TVM trap covers MDSCR_EL1)."""
    before = s.mrs(SysReg.MDSCR_EL1).value
    s.msr(SysReg.MDSCR_EL1, before | MDSCR_KDE)
    time.sleep(GUARD_WAIT_S)  # the kernel idles through timer interrupts and a guard interval
    now = s.mrs(SysReg.MDSCR_EL1).value
    if now & MDSCR_KDE:
        return Evidence(Verdict.SUCCEEDED, f"MDSCR_EL1 {before:#x} -> {now:#x} (KDE set)")
    return Evidence(Verdict.BLOCKED, f"MDSCR_EL1.KDE cleared again ({now:#x})")


def direct_ttbr0(s: TestbedSession) -> Evidence:
    """Load TTBR0 directly with an unregistered page (only HVC 35 may switch it)."""
    page = s.alloc_page()
    before = s.mrs(SysReg.TTBR0_EL1).value
    s.msr(SysReg.TTBR0_EL1, page.ret[1])
    now = s.mrs(SysReg.TTBR0_EL1).value
    if now & 0x0000_FFFF_FFFF_F000 == page.ret[1]:
        return Evidence(Verdict.SUCCEEDED, f"TTBR0 {before:#x} -> {now:#x} (unregistered root)")
    return Evidence(Verdict.BLOCKED, f"TTBR0 still {now:#x}")


def stub_hvc_escape(s: TestbedSession) -> Evidence:
    """Gap 14: HVC 2 (hyp-stub reset vectors), then a forged TTBR1 no longer traps."""
    r = s.hvc(2)
    ev = forge_ttbr1(s)
    ev.detail = f"HVC 2 -> {r.value:#x}; then: {ev.detail}"
    return ev


def _test_module(s: TestbedSession, name: str) -> bytes:
    return s.testbed.modules[name].read_bytes()


def load_tampered_module(s: TestbedSession) -> Evidence:
    """Change one byte of a signed test module's read-only data, then insmod it."""
    from secvma.module.elf import ElfModule

    data = bytearray(_test_module(s, "mod_hello"))
    elf = ElfModule(bytes(data))
    ro = next((sec for sec in elf.sections if sec.name.startswith(".rodata") and sec.size), None)
    if ro is None:
        return Evidence(Verdict.NOT_APPLICABLE, "mod_hello has no read-only data to change")
    data[ro.offset] ^= 0x20  # flip a letter's case in a printed string
    r = s.load_module(bytes(data))
    if r.ok:
        return Evidence(Verdict.SUCCEEDED, f"the tampered module loaded (handle {r.ret[0]}, "
                                           f"init -> {r.ret[2]})")
    return Evidence(Verdict.BLOCKED, f"insmod {r.status.name.lower()}: {r.msg}")


def write_module_text(s: TestbedSession) -> Evidence:
    """Load a genuine module, then patch its code through a writable alias of its text."""
    from secvma.testbed.modules import loaded_module

    r = s.load_module(_test_module(s, "mod_counter"))
    if not r.ok:
        return Evidence(Verdict.NOT_APPLICABLE, f"the genuine module did not load: {r.msg}")
    lm = loaded_module(s.platform, s.image, r.ret[0])
    before = lm.read(s.platform, lm.report.text_va, 8)
    alias = s.vmap(lm.report.text_pa, 0x1000, 0)
    if not alias.ok:
        return Evidence(Verdict.BLOCKED, "the writable alias could not be mapped")
    w = s.write(alias.value, 0xD4200000D4200000)  # brk #0
    after = lm.read(s.platform, lm.report.text_va, 8)
    if after != before:
        return Evidence(Verdict.SUCCEEDED, f"module text at {lm.report.text_va:#x} now {after.hex()}")
    return Evidence(Verdict.BLOCKED, f"store {w.status.name.lower()} (ESR {w.esr:#x}); "
                                     "module text unchanged")



# ---- store forms into a live PTE table ---------------------------------------------------------

def _empty_pair_after(s: TestbedSession, va: int) -> tuple[int, int]:
    """Like `_empty_pte_after`, but the next slot is empty too (pair stores write both)."""
    read = s.platform.read_u64
    first_va, slot = _empty_pte_after(s, va)
    for k in range(0, 64):
        a = slot + 8 * k
        if (a + 8) & ~0xFFF != a & ~0xFFF:
            break
        if read(PhysAddr(a)) == 0 and read(PhysAddr(a + 8)) == 0:
            return first_va + 0x1000 * k, a
    raise RuntimeError("no two free slots next to the vmalloc mapping")


def _pte_store_attack(form: Form, width: int, pair: bool = False) -> Callable[[TestbedSession],
                                                                             Evidence]:
    """Plant code, then write an executable (PXN clear) descriptor for it into an empty PTE slot
    of a live kernel table with one store of `form`/`width`; the effect is the code running.

    width 8: the whole descriptor in one store (a pair form also writes the next, empty slot
    with 0); width 4 and not a pair: only the low half (the attacker's wish has PXN, bit 53,
    clear, so a lost high half is the point: gap 1); a 4-byte pair: both halves in one STP."""
    def run(s: TestbedSession) -> Evidence:
        pa = _plant_shellcode(s)
        m = s.vmap(pa, 0x1000, 0)
        if not m.ok:
            return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
        va, slot = _empty_pair_after(s, m.value) if pair else _empty_pte_after(s, m.value)
        desc = pa | VALID_PAGE | AF | SH_INNER
        if width in (8, 16):  # 16: a 128-bit SIMD store, the descriptor then an empty slot
            value, value2 = desc, 0
        elif pair:
            value, value2 = desc & 0xFFFF_FFFF, desc >> 32
        else:
            value, value2 = desc & 0xFFFF_FFFF, 0
        w = s.write(slot + _bi(s).linear_offset, value, width, form, value2)
        if not w.ok:
            return Evidence(Verdict.BLOCKED, f"the {form.name} ({width} bytes) "
                                             f"{w.status.name.lower()} (ESR {w.esr:#x})")
        return _ran(s, va, slot)
    run.__doc__ = f"{form.name} of {width} bytes{' (pair)' if pair else ''} into an empty PTE."
    return run


def pte_str_unaligned(s: TestbedSession) -> Evidence:
    """An 8-byte STR at slot + 4 of two empty PTE slots: the high half of the first and the low
    half of the second; the low half is an executable descriptor (PXN, bit 53, not written)."""
    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    va, slot = _empty_pair_after(s, m.value)
    desc = pa | VALID_PAGE | AF | SH_INNER
    w = s.write(slot + 4 + _bi(s).linear_offset, (desc & 0xFFFF_FFFF) << 32, 8, Form.STR)
    if not w.ok:
        return Evidence(Verdict.BLOCKED, f"the unaligned STR {w.status.name.lower()} "
                                         f"(ESR {w.esr:#x})")
    return _ran(s, va + 0x1000, slot + 8)


def table_via_alias(s: TestbedSession) -> Evidence:
    """Map a live PTE table a second time, writable, and write an executable entry through it."""
    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    va, slot = _empty_pte_after(s, m.value)
    alias = s.vmap(slot & ~0xFFF, 0x1000, 0)
    if not alias.ok:
        return Evidence(Verdict.BLOCKED, "the writable alias of the table could not be mapped")
    w = s.write(alias.value + (slot & 0xFFF), pa | VALID_PAGE | AF | SH_INNER)
    if not w.ok:
        return Evidence(Verdict.BLOCKED, f"store through the table alias {w.status.name.lower()} "
                                         f"(ESR {w.esr:#x})")
    return _ran(s, va, slot)


def bbm_output_change(s: TestbedSession) -> Evidence:
    """Replace a live, valid PTE by one with another output address (no break-before-make)."""
    pa = _plant_shellcode(s)
    victim = s.alloc_page()
    if not victim.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page")
    m = s.vmap(int(victim.ret[1]), 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    read = s.platform.read_u64
    leaf = get_leaf(lambda a: read(PhysAddr(a)), PhysAddr(_bi(s).swapper_pg_dir), m.value)
    slot = int(leaf.slot_pa)
    w = s.write(slot + _bi(s).linear_offset, pa | VALID_PAGE | AF | SH_INNER)
    if not w.ok:
        return Evidence(Verdict.BLOCKED, f"the update {w.status.name.lower()} (ESR {w.esr:#x})")
    return _ran(s, m.value, slot)


# ---- the hypervisor interface ----------------------------------------------------------------

def _hvc_ret(r: object) -> int:
    return int(getattr(r, "value", 0))


def switch_to_unregistered_root(s: TestbedSession) -> Evidence:
    """HVC 35 with a page that was never registered as a user root (HVC 33)."""
    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    root = int(page.ret[1])
    r = s.hvc(35, root, 0)
    now = s.mrs(SysReg.TTBR0_EL1).value
    if now & 0x0000_FFFF_FFFF_F000 == root:
        return Evidence(Verdict.SUCCEEDED, f"TTBR0 -> unregistered {root:#x} (HVC 35 -> "
                                           f"{_hvc_ret(r):#x})")
    return Evidence(Verdict.BLOCKED, f"HVC 35 -> {_hvc_ret(r):#x}; TTBR0 still {now:#x}")


def switch_to_freed_root(s: TestbedSession) -> Evidence:
    """Use after free: register a user root (HVC 33), release it (HVC 34), switch to it."""
    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    root = int(page.ret[1])
    s.hvc(33, root)
    s.hvc(34, root)
    r = s.hvc(35, root, 0)
    now = s.mrs(SysReg.TTBR0_EL1).value
    if now & 0x0000_FFFF_FFFF_F000 == root:
        return Evidence(Verdict.SUCCEEDED, f"TTBR0 -> released root {root:#x}")
    return Evidence(Verdict.BLOCKED, f"HVC 35 -> {_hvc_ret(r):#x}; TTBR0 still {now:#x}")


def reinstall_then_patch_text(s: TestbedSession) -> Evidence:
    """HVC 6 again after install (re-initialisation), then patch kernel text through an alias."""
    r = s.hvc(6)
    ev = write_text_via_alias(s)
    ev.detail = f"HVC 6 -> {_hvc_ret(r):#x}; then: {ev.detail}"
    return ev


def table_page_as_user_root(s: TestbedSession) -> Evidence:
    """Class confusion: register a live kernel PTE table as a user root (HVC 33), release it
    (HVC 34) to make it ordinary memory, then write an executable entry into it directly."""
    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    va, slot = _empty_pte_after(s, m.value)
    table = slot & ~0xFFF
    a, b = s.hvc(33, table), s.hvc(34, table)
    w = s.write(slot + _bi(s).linear_offset, pa | VALID_PAGE | AF | SH_INNER)
    if not w.ok:
        return Evidence(Verdict.BLOCKED, f"HVC 33 -> {_hvc_ret(a):#x}, HVC 34 -> {_hvc_ret(b):#x};"
                                         f" store {w.status.name.lower()} (ESR {w.esr:#x})")
    return _ran(s, va, slot)


# ---- modules ---------------------------------------------------------------------------------

def _renamed(image: bytes, old: str, new: str) -> bytes:
    """The module with its `.modinfo` `name=` changed (same length; .modinfo is not signed)."""
    a, b = f"name={old}\0".encode(), f"name={new}\0".encode()
    assert len(b) <= len(a) and image.count(a) == 1, (old, new)
    return image.replace(a, b + bytes(len(a) - len(b)))


def _load_evidence(r: object, what: str) -> Evidence:
    ok = bool(getattr(r, "ok", False))
    if ok:
        return Evidence(Verdict.SUCCEEDED, f"{what} loaded (handle {getattr(r, 'value', 0)})")
    return Evidence(Verdict.BLOCKED, f"insmod of {what}: {getattr(r, 'msg', '')}")


def load_unsigned_module(s: TestbedSession) -> Evidence:
    """insmod a module whose name has no entry in the signature table."""
    image = _renamed(_test_module(s, "mod_hello"), "hello", "xyzzy")
    return _load_evidence(s.load_module(image), "the unsigned module 'xyzzy'")


def module_name_prefix(s: TestbedSession) -> Evidence:
    """Gap 6: name the module 'hell', a prefix of the signed 'hello' (C compares by prefix)."""
    image = _renamed(_test_module(s, "mod_hello"), "hello", "hell")
    return _load_evidence(s.load_module(image), "module 'hell' (signed entry: 'hello')")


def write_module_rodata(s: TestbedSession) -> Evidence:
    """Gap 15: load a genuine module, then overwrite its verified read-only data (C maps MOD_ro
    read/write at stage 2) through a writable alias."""
    from secvma.testbed.modules import loaded_module

    r = s.load_module(_test_module(s, "mod_hello"))
    if not r.ok:
        return Evidence(Verdict.NOT_APPLICABLE, f"the genuine module did not load: {r.msg}")
    lm = loaded_module(s.platform, s.image, r.ret[0])
    if not lm.report.ro_pages:
        return Evidence(Verdict.NOT_APPLICABLE, "mod_hello has no read-only data")
    before = lm.read(s.platform, lm.report.ro_va, 8)
    alias = s.vmap(lm.report.ro_pa, 0x1000, 0)
    if not alias.ok:
        return Evidence(Verdict.BLOCKED, "the writable alias could not be mapped")
    w = s.write(alias.value, 0x4141414141414141)
    after = lm.read(s.platform, lm.report.ro_va, 8)
    if after != before:
        return Evidence(Verdict.SUCCEEDED, f"module rodata at {lm.report.ro_va:#x} now {after.hex()}")
    return Evidence(Verdict.BLOCKED, f"store {w.status.name.lower()} (ESR {w.esr:#x}); "
                                     "module rodata unchanged")


def load_tampered_text(s: TestbedSession) -> Evidence:
    """Change one instruction of a signed module's code, then insmod it."""
    from secvma.module.elf import ElfModule

    data = bytearray(_test_module(s, "mod_counter"))
    text = ElfModule(bytes(data)).section_by_name(".text")
    if text is None or text.size < 4:
        return Evidence(Verdict.NOT_APPLICABLE, "mod_counter has no code to change")
    data[text.offset:text.offset + 4] = (0xD503201F).to_bytes(4, "little")  # nop
    # loaded up to (not including) its init: the patched code is installed, whatever it does
    return _load_evidence(s.load_module(bytes(data), no_init=True), "the module with patched code")


def double_registered_root(s: TestbedSession) -> Evidence:
    """Register a user root twice (HVC 33, HVC 33), release it once (HVC 34), switch to it."""
    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    root = int(page.ret[1])
    s.hvc(33, root)
    s.hvc(33, root)
    s.hvc(34, root)
    r = s.hvc(35, root, 0)
    now = s.mrs(SysReg.TTBR0_EL1).value
    if now & 0x0000_FFFF_FFFF_F000 == root:
        return Evidence(Verdict.SUCCEEDED, f"TTBR0 -> released root {root:#x}")
    return Evidence(Verdict.BLOCKED, f"HVC 35 -> {_hvc_ret(r):#x}; TTBR0 still {now:#x}")

def _text_alias_store(form: Form, width: int) -> Callable[[TestbedSession], Evidence]:
    """Map a kernel text page writable in vmalloc, then change it with one store of `form`
    (DC ZVA zeroes a whole cache-line block; a pair writes 2 x `width` bytes)."""
    def run(s: TestbedSession) -> Evidence:
        target = _bi(s).text + 0x2000
        before = _read_pa(s, target, 64)
        alias = s.vmap(target, 0x1000, 0)
        if not alias.ok:
            return Evidence(Verdict.BLOCKED, "the writable alias could not be mapped")
        flipped = ~int.from_bytes(before[:8], "little") & ((1 << (8 * width)) - 1)  # every bit
        w = s.write(alias.value, flipped, width, form, flipped)
        after = _read_pa(s, target, 64)
        if after != before:
            return Evidence(Verdict.SUCCEEDED, f"kernel text at PA {target:#x} changed by "
                                               f"{form.name}: {after[:16].hex()}")
        return Evidence(Verdict.BLOCKED, f"{form.name} {w.status.name.lower()} (ESR {w.esr:#x}); "
                                         "text unchanged")
    run.__doc__ = f"Patch kernel text through a writable alias with {form.name} ({width} bytes)."
    return run

_PXN = "PXN forced on the entry the kernel asked for (the store is emulated, not refused)"
# secvma2024 has no way to emulate a table store without a syndrome (ISV = 0: writeback, pair,
# non-temporal forms): the C design panics on it
ISV0_PANICS = {"none": SUCCEEDS, "secvma2024": frozenset({Verdict.HALTED}), "hardened": REFUSED}
# an 8-byte store with a syndrome is validated as a whole descriptor in both designs
FORCED = {"none": SUCCEEDS, "secvma2024": REFUSED, "hardened": REFUSED}

# secvma2024 lets an 8-byte store straddle two PTE slots (it validates the value as the one entry
# at FAR, gap 1): the executable low half lands in the second slot unchecked, but the C code's
# reading of the value as a descriptor reclassifies the planted page as data, so the fetch
# faults at stage 2 and the CPU stalls forever (gap 11): no code runs, the machine stops
STRADDLE = {"none": SUCCEEDS, "secvma2024": frozenset({Verdict.HALTED}), "hardened": REFUSED}

# ---- DMA: a device told to write where the MMU protects ------------------------------------

DMA_SECTOR = 200  # the attacker's payload on the virtio disk
DMA_LEN = 512
DMA_PAYLOAD = 0xCC  # 0b11001100: as a descriptor, bit 0 clear (invalid): harmless if linked
HYP_TARGET_OFFSET = 0x100_0000  # an unused page of the hypervisor's stage-2 pool


def _stage_payload(s: TestbedSession) -> None:
    """A legitimate disk write from the driver's own (ordinary, mapped) buffer."""
    r = s.dma(0, DMA_LEN, to_device=True, sector=DMA_SECTOR, fill=DMA_PAYLOAD, map_first=True)
    if not r.ok:
        raise RuntimeError(f"staging the payload failed: {r.msg}")


def _dma_into(s: TestbedSession, pa: int, what: str) -> Evidence:
    """Ask for an IOVA = PA mapping of `pa` (whatever the answer), then have the device read the
    payload sector into it. Judged by the bytes at `pa`."""
    _stage_payload(s)
    before = _read_pa(s, pa, DMA_LEN)
    r = s.dma(pa, DMA_LEN, sector=DMA_SECTOR, map_first=True)
    after = _read_pa(s, pa, DMA_LEN)
    detail = f"HVC 25 -> {r.ret[1]:#x}, device: {r.msg}"
    if after != before:
        return Evidence(Verdict.SUCCEEDED, f"{what} at PA {pa:#x} now {after[:8].hex()}...; "
                                           f"{detail}")
    return Evidence(Verdict.BLOCKED, f"{what} at PA {pa:#x} unchanged; {detail}")


def dma_kernel_text(s: TestbedSession) -> Evidence:
    """A device writes into kernel text (the last sector of the text section)."""
    return _dma_into(s, _bi(s).etext - DMA_LEN, "kernel text")


def dma_rodata(s: TestbedSession) -> Evidence:
    """A device writes into read-only data (the last sector of rodata)."""
    return _dma_into(s, _bi(s).erodata - DMA_LEN, "rodata")


def dma_page_table(s: TestbedSession) -> Evidence:
    """A device writes into swapper_pg_dir (its last 64 entries, unused)."""
    return _dma_into(s, _bi(s).swapper_pg_dir + 0x1000 - DMA_LEN, "swapper_pg_dir")


def dma_hyp_memory(s: TestbedSession) -> Evidence:
    """A device writes into the hypervisor's own memory."""
    hyp = s.platform.hyp_base + HYP_TARGET_OFFSET
    return _dma_into(s, hyp, "hypervisor memory")


def dma_module_text(s: TestbedSession) -> Evidence:
    """Load a genuine module, then have a device write into its code page."""
    from secvma.testbed.modules import loaded_module

    r = s.load_module(_test_module(s, "mod_counter"))
    if not r.ok:
        return Evidence(Verdict.NOT_APPLICABLE, f"the genuine module did not load: {r.msg}")
    lm = loaded_module(s.platform, s.image, r.ret[0])
    page = lm.report.text_pa & ~0xFFF
    return _dma_into(s, page + 0x1000 - DMA_LEN, "module text")


def _empty_pmd_slot(s: TestbedSession) -> tuple[int, int]:
    """(VA, PA of the slot) of an empty level-2 entry high in the vmalloc area."""
    bi = _bi(s)
    read = s.platform.read_u64
    va0 = 0xFFFF_8000_0000_0000
    e0 = read(PhysAddr(bi.swapper_pg_dir + 8 * ((va0 >> 39) & 511)))
    e1 = read(PhysAddr((e0 & 0xFFFF_FFFF_F000) + 8 * ((va0 >> 30) & 511)))
    if e0 & 3 != 3 or e1 & 3 != 3:
        raise RuntimeError("the kernel image's PMD table is not where expected")
    pmd = e1 & 0xFFFF_FFFF_F000
    for idx in range(511, 256, -1):
        if read(PhysAddr(pmd + 8 * idx)) == 0:
            return va0 + (idx << 21), pmd + 8 * idx
    raise RuntimeError("no empty PMD slot")


def dma_then_page_table(s: TestbedSession) -> Evidence:
    """Gap 5: map an ordinary page for DMA, make it a kernel page table, then let the device
    write into the table through the mapping it kept."""
    bi = _bi(s)
    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    pa = int(page.ret[1])
    m = s.dma(pa, DMA_LEN, to_device=True, sector=DMA_SECTOR + 8, map_first=True,
              keep_mapping=True)
    if not m.ok or m.ret[1] not in (0, HVC_ENOSYS):  # ENOSYS: no SMMU, the device sees all
        return Evidence(Verdict.NOT_APPLICABLE, f"the ordinary page was not mapped: {m.msg}")
    _stage_payload(s)
    _va, slot = _empty_pmd_slot(s)
    link = s.write(slot + bi.linear_offset, pa | VALID_PAGE)  # table descriptor
    linked = s.platform.read_u64(PhysAddr(slot)) & 0xFFFF_FFFF_F000 == pa
    before = _read_pa(s, pa, DMA_LEN)
    r = s.dma(pa, DMA_LEN, sector=DMA_SECTOR)
    after = _read_pa(s, pa, DMA_LEN)
    detail = f"link store: {link.status.name.lower()}; device: {r.msg}"
    if linked and after != before:
        return Evidence(Verdict.SUCCEEDED, f"the device rewrote page table {pa:#x} "
                                           f"({after[:8].hex()}...); {detail}")
    return Evidence(Verdict.BLOCKED, f"page {pa:#x} {'linked' if linked else 'not linked'} as a "
                                     f"table, {'changed' if after != before else 'unchanged'}; "
                                     f"{detail}")


def smmu_registers(s: TestbedSession) -> Evidence:
    """Map the SMMU's registers (the kernel is never told where they are) and turn it off."""
    smmu = s.platform.smmu
    if smmu is None:
        return Evidence(Verdict.NOT_APPLICABLE, "this board has no SMMU")
    cr0 = smmu.base + 0x20
    before = s.platform.mmio_read(PhysAddr(cr0), 4)
    va = s.vmap(smmu.base, 0x1000, 0)
    if not va.ok:
        return Evidence(Verdict.BLOCKED, "the register window could not be mapped")
    w = s.write(va.value + 0x20, before ^ 0x4, 4, Form.STR)  # toggle EVTQEN (off: SMMUEN too)
    after = s.platform.mmio_read(PhysAddr(cr0), 4)
    if after != before:
        return Evidence(Verdict.SUCCEEDED, f"SMMU_CR0 {before:#x} -> {after:#x}")
    return Evidence(Verdict.BLOCKED, f"store {w.status.name.lower()} (ESR {w.esr:#x}); "
                                     f"SMMU_CR0 still {after:#x}")


# secvma2024 frees a root another CPU has loaded; that CPU's next switch to it then panics: which
# of the two is seen depends on the interleaving
RACE_FREE = {"none": SUCCEEDS, "secvma2024": frozenset({Verdict.SUCCEEDED, Verdict.HALTED}),
             "hardened": REFUSED}
# the image is verified from a copy taken after the pages became AUTH: a change lands before
# the copy (signature fails) or not at all; CPU1's store into an AUTH page stalls under C
RACE_IMAGE = {"none": SUCCEEDS, "secvma2024": PANICS, "hardened": REFUSED}
# secvma2024 (huge) maps the page-table pool read-only at stage 2: every store CPU1 makes there
# traps, so none can go through a stale entry; hardened must refuse (see race_s2_stale)
RACE_STALE = {"none": SUCCEEDS, "secvma2024": REFUSED, "hardened": REFUSED}

# ---- SMP races (issue 13): two CPUs at once, the overlap measured (secvma.testbed.smp) ---------

USER_SLOT = 5  # the user-root entry the races aim at


def _overlap(r: object) -> str:
    describe = getattr(r, "describe", None)
    return describe() if callable(describe) else ""


def race_table_store(s: TestbedSession) -> Evidence:
    """CPU1 keeps storing an executable descriptor into an empty PTE slot while CPU0's own
    (legal) store to the next slot of the same table page traps and is emulated."""
    from secvma.testbed import smp

    pa = _plant_shellcode(s)
    m = s.vmap(pa, 0x1000, 0)
    if not m.ok:
        return Evidence(Verdict.BLOCKED, "no vmalloc mapping")
    va, slot = _empty_pair_after(s, m.value)
    lin = _bi(s).linear_offset
    evil = pa | VALID_PAGE | AF | SH_INNER  # EL1 RW, PXN clear
    legal = evil | (1 << 53) | (1 << 54)  # PXN | UXN: what the kernel itself would write
    r = smp.race(s, smp.spin_store(slot + lin, evil), write_cmd(slot + 8 + lin, legal),
                 min_iters=1)
    final = s.platform.read_u64(PhysAddr(slot))
    ev = _ran(s, va, slot)
    ev.detail += f"; entry {final:#x}; {_overlap(r)}"
    return ev


def race_ttbr0_free(s: TestbedSession) -> Evidence:
    """CPU1 keeps switching TTBR0 to a user root (HVC 35) while CPU0 releases it (HVC 34);
    then CPU0 writes a raw table entry into the page. Effect: CPU1 still runs on the root and
    the entry landed as written (no PXNTable: the hypervisor no longer guards the page)."""
    from secvma.testbed import smp

    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    root, lin = int(page.ret[1]), _bi(s).linear_offset
    s.hvc(33, root)
    r = smp.race(s, smp.spin_hvc35(root, 2), Command(Op.HVC, (34, root)), min_iters=1)
    ttbr0 = s.on_cpu(1).mrs(SysReg.TTBR0_EL1).value
    target = s.alloc_page()
    entry = int(target.ret[1]) | DESC_VALID | DESC_TABLE  # PXNTable clear
    s.write(root + lin + 8 * USER_SLOT, entry)
    now = s.platform.read_u64(PhysAddr(root + 8 * USER_SLOT))
    detail = (f"HVC 34 -> {_hvc_ret(r.main):#x}; CPU1 TTBR0 {ttbr0:#x}, last HVC 35 -> "
              f"{r.state['last']:#x}; entry {now:#x}; {_overlap(r)}")
    if ttbr0 & 0x0000_FFFF_FFFF_F000 == root and now == entry:
        return Evidence(Verdict.SUCCEEDED, f"CPU1 runs on released root {root:#x}, a raw entry "
                                           f"landed in it; {detail}")
    return Evidence(Verdict.BLOCKED, detail)


def _race_module_load(s: TestbedSession, follow: str,
                      word: Callable[[bytes, int], tuple[int, int]],
                      show_differ: bool) -> Evidence:
    """CPU1 keeps storing through the pointer at symbol `follow` (`word(ko, .text offset)`
    gives the 8-byte value and its offset from the pointer) while CPU0 loads mod_counter;
    judged by whether the installed .text equals the signed module relocated by the host."""
    from secvma.module.elf import ElfModule
    from secvma.testbed import smp
    from secvma.testbed.modules import (
        differing_sections,
        host_relocation,
        loaded_module,
        symbol_lookup,
    )

    ko = _test_module(s, "mod_counter")
    text = ElfModule(ko).section_by_name(".text")
    if text is None or text.size < 8:
        return Evidence(Verdict.NOT_APPLICABLE, "mod_counter has no code to change")
    value, off = word(ko, text.offset)
    if not s.upload(ko).ok:
        return Evidence(Verdict.ERROR, "upload failed")
    r = smp.race(s, smp.spin_store_indirect(s.image.va(follow), value, off),
                 Command(Op.MODLOAD, (len(ko), MODLOAD_F_NO_INIT, 0)))
    detail = f"{_overlap(r)}, {r.overlap_hvc30} while in HVC 30"
    if not r.main.ok:
        return Evidence(Verdict.BLOCKED, f"insmod refused: {r.main.msg}; {detail}")
    lm = loaded_module(s.platform, s.image, r.main.ret[0])
    differ = differing_sections(s.platform, lm, host_relocation(ko, lm, symbol_lookup(s)))
    if text.index in differ:
        return Evidence(Verdict.SUCCEEDED, f"loaded .text differs from the signed module; "
                                           f"{detail}")
    shown = f" (differing sections {differ})" if show_differ else ""
    return Evidence(Verdict.BLOCKED, f"loaded; .text equals the signed module{shown}; {detail}")


def race_module_image(s: TestbedSession) -> Evidence:
    """CPU1 keeps writing a `nop` over the first instruction of mod_counter's .text in the
    kernel's temporary module image (it follows `module_tmp_image`) while CPU0 loads the
    signed module. Effect: the installed code differs from the signed module relocated by the
    host at the kernel's addresses."""

    def nop_in_image(ko: bytes, text_off: int) -> tuple[int, int]:
        off = text_off & ~7
        word = bytearray(ko[off:off + 8])
        word[text_off - off:text_off - off + 4] = (0xD503201F).to_bytes(4, "little")  # nop
        return int.from_bytes(word, "little"), off

    return _race_module_load(s, "module_tmp_image", nop_in_image, show_differ=True)


def race_s2_stale(s: TestbedSession) -> Evidence:
    """CPU1 keeps storing a raw entry (not a table, no PXNTable) into a page while CPU0
    registers the page as a user root (HVC 33: zeroed, stage 2 read-only). CPU0 reads the
    entry right after HVC 33 returned, when every TLB has been invalidated: a raw entry there
    is a store that went through a stale stage-2 TLB entry after the hypervisor cleared it."""
    from secvma.testbed import smp

    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    va, root = int(page.ret[0]), int(page.ret[1])
    evil = (root + 0x1000) | DESC_VALID  # a block-type entry, which no hypervisor writes here
    slot_va = va + 8 * USER_SLOT
    r = smp.race(s, smp.spin_store(slot_va, evil), Command(Op.HVC, (33, root)), min_iters=1,
                 watch=slot_va)
    seen = r.state["watch_val"]
    final = s.platform.read_u64(PhysAddr(root + 8 * USER_SLOT))
    detail = f"entry after HVC 33: {seen:#x}, now {final:#x}; {_overlap(r)}"
    if seen == evil:
        return Evidence(Verdict.SUCCEEDED, f"the raw entry stands in registered root "
                                           f"{root:#x}; {detail}")
    return Evidence(Verdict.BLOCKED, detail)



def race_table_claim(s: TestbedSession) -> Evidence:
    """CPU1 keeps storing an executable PTE into a pool page while CPU0 links that page as a
    new PTE table (the hypervisor claims it: zeroed, read-only). CPU0 reads the entry right
    after its link store; a raw entry there went through a stale TLB entry after the claim."""
    from secvma.testbed import smp

    pa = _plant_shellcode(s)
    page = s.alloc_page(pgtable_pool=True)
    if not page.ok:
        return Evidence(Verdict.NOT_APPLICABLE, "no page-table pool page")
    tva, tpa = int(page.ret[0]), int(page.ret[1])
    va0, slot = _empty_pmd_slot(s)
    k = 7
    evil = pa | VALID_PAGE | AF | SH_INNER  # EL1 RW, PXN clear
    r = smp.race(s, smp.spin_store(tva + 8 * k, evil),
                 write_cmd(slot + _bi(s).linear_offset, tpa | VALID_PAGE), min_iters=1,
                 watch=tva + 8 * k)
    seen = r.state["watch_val"]
    linked = s.platform.read_u64(PhysAddr(slot)) & 0xFFFF_FFFF_F000 == tpa
    ev = _ran(s, va0 + k * 0x1000, tpa + 8 * k)
    state = "linked" if linked else "not linked"
    detail = f"entry right after the link: {seen:#x}, table {state}; {_overlap(r)}"
    if seen == evil and linked:
        return Evidence(Verdict.SUCCEEDED, f"a raw executable PTE stood in the new, linked "
                                           f"table; {detail}; then: {ev.detail}")
    ev.detail += f"; {detail}"
    return ev


def race_module_text(s: TestbedSession) -> Evidence:
    """CPU1 keeps writing two `nop`s at the start of the module's text run (it follows
    `module_run_text`) while CPU0 loads the signed module: HVC 30 writes the verified bytes and
    makes the pages read-only, but the TLB invalidation runs only when the trap returns, so a
    store through CPU1's stale TLB entry can land after the verified bytes. Effect: installed
    .text differs from the signed module relocated by the host."""
    return _race_module_load(s, "module_run_text", lambda _ko, _off: (0xD503201F_D503201F, 0),
                             show_differ=False)

ATTACKS: list[Attack] = [
    Attack("write-text-via-alias", "patch kernel code through a writable alias", write_text_via_alias,
           BLOCKED),
    Attack("write-rodata-via-alias", "overwrite read-only data through a writable alias",
           write_rodata_via_alias, BLOCKED),
    Attack("exec-injected-code", "run code written into kernel memory (W^X)", exec_injected_code,
           BLOCKED, fixed_up=_PXN),
    Attack("narrow-store-pxn-bypass", "make data executable with a 4-byte PTE store",
           narrow_store_pxn_bypass, GAP,
           gap="1 (store width ignored)", fixed_up=_PXN),
    Attack("stxr-drops-pxn", "make data executable with a 64-bit STXR to a PTE", stxr_drops_pxn,
           GAP,
           gap="9 (STXR keeps the low 32 bits)", fixed_up=_PXN),
    Attack("forge-ttbr1", "switch the kernel to page tables it controls", forge_ttbr1,
           BLOCKED),
    Attack("direct-ttbr0", "load TTBR0 without HVC 35", direct_ttbr0,
           BLOCKED),
    Attack("sctlr-change", "flip SCTLR_EL1.UCI (bit 26: EL0 cache maintenance)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 26),
           BLOCKED),
    Attack("tcr-change", "flip TCR_EL1.TBI0 (bit 37: top-byte-ignore for user VAs)",
           _pin_attack(SysReg.TCR_EL1, 1 << 37),
           BLOCKED),
    Attack("mair-change", "change MAIR_EL1 attribute 7", _pin_attack(SysReg.MAIR_EL1, 0x44 << 56),
           BLOCKED),
    Attack("stub-hvc-escape", "HVC 2 (hyp-stub) to turn off register trapping, then forge TTBR1",
           stub_hvc_escape, GAP,
           gap="14 (hyp-stub HVCs reachable)"),
    Attack("load-tampered-module", "insmod a signed module with one byte changed",
           load_tampered_module, BLOCKED),
    Attack("write-module-text", "patch a loaded module's code", write_module_text,
           BLOCKED),
    # store forms into an empty slot of a live PTE table (docs/kpcore-spec.md §3.2)
    Attack("pte-str-8", "make data executable: STR of a whole descriptor",
           _pte_store_attack(Form.STR, 8), FORCED, fixed_up=_PXN),
    Attack("pte-stur-8", "make data executable: STUR of a whole descriptor",
           _pte_store_attack(Form.STUR, 8), FORCED, fixed_up=_PXN),
    Attack("pte-str-reg-8", "make data executable: STR (register offset) of a descriptor",
           _pte_store_attack(Form.STR_REG, 8), FORCED, fixed_up=_PXN),
    Attack("pte-stlr-8", "make data executable: STLR (release) of a descriptor",
           _pte_store_attack(Form.STLR, 8), FORCED, fixed_up=_PXN),
    Attack("pte-str-pre-8", "make data executable: pre-index STR (writeback, no syndrome)",
           _pte_store_attack(Form.STR_PRE, 8), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-str-post-8", "make data executable: post-index STR (writeback, no syndrome)",
           _pte_store_attack(Form.STR_POST, 8), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-stp-8", "make data executable: STP of a descriptor and an empty neighbour",
           _pte_store_attack(Form.STP, 8, pair=True), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-stnp-8", "make data executable: STNP (non-temporal pair)",
           _pte_store_attack(Form.STNP, 8, pair=True), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-stp-w-pair", "make data executable: STP of two W registers (both halves at once)",
           _pte_store_attack(Form.STP, 4, pair=True), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-stur-4", "make data executable: 4-byte STUR of the low half",
           _pte_store_attack(Form.STUR, 4), GAP, gap="1 (store width ignored)", fixed_up=_PXN),
    Attack("pte-str-reg-4", "make data executable: 4-byte STR (register offset), low half",
           _pte_store_attack(Form.STR_REG, 4), GAP, gap="1 (store width ignored)", fixed_up=_PXN),
    Attack("pte-stlr-4", "make data executable: 4-byte STLR of the low half",
           _pte_store_attack(Form.STLR, 4), GAP, gap="1 (store width ignored)", fixed_up=_PXN),
    Attack("pte-stxr-4", "make data executable: 32-bit STXR of the low half",
           _pte_store_attack(Form.STXR, 4), GAP, gap="1/9 (width ignored, 32-bit STXR)",
           fixed_up=_PXN),
    Attack("pte-str-pre-4", "make data executable: 4-byte pre-index STR of the low half",
           _pte_store_attack(Form.STR_PRE, 4), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-stlxr-8", "make data executable: STLXR (release exclusive) of a descriptor",
           _pte_store_attack(Form.STLXR, 8), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-stlxr-4", "make data executable: 32-bit STLXR of the low half",
           _pte_store_attack(Form.STLXR, 4), ISV0_PANICS, fixed_up=_PXN),
    Attack("pte-str-q", "make data executable: 128-bit SIMD STR Q of a descriptor + empty slot",
           _pte_store_attack(Form.STR_Q, 16, pair=True), ISV0_PANICS),
    Attack("pte-st1", "make data executable: SIMD ST1 {V.16B} of a descriptor + empty slot",
           _pte_store_attack(Form.ST1, 16, pair=True), ISV0_PANICS),
    Attack("pte-str-unaligned", "make data executable: 8-byte STR straddling two PTE slots",
           pte_str_unaligned, STRADDLE),
    Attack("text-alias-dc-zva", "zero a block of kernel text with DC ZVA through an alias",
           _text_alias_store(Form.DC_ZVA, 8), BLOCKED),
    Attack("text-alias-stp", "patch kernel text with one STP through an alias",
           _text_alias_store(Form.STP, 8), BLOCKED),
    Attack("text-alias-strb", "patch one byte of kernel text through an alias",
           _text_alias_store(Form.STR, 1), BLOCKED),
    Attack("text-alias-strh", "patch two bytes of kernel text through an alias",
           _text_alias_store(Form.STR, 2), BLOCKED),
    # aliases and break-before-make
    Attack("table-via-alias", "write a live page table through a writable alias of it",
           table_via_alias, FORCED, fixed_up=_PXN),
    Attack("bbm-output-change", "switch a live PTE to another page, executable, in one store",
           bbm_output_change, {"none": SUCCEEDS, "secvma2024": PANICS, "hardened": REFUSED}),
    # the hypervisor interface
    Attack("hvc35-unregistered-root", "HVC 35 to a root that was never registered",
           switch_to_unregistered_root, BLOCKED),
    Attack("hvc35-freed-root", "HVC 35 to a user root after HVC 34 released it",
           switch_to_freed_root, BLOCKED),
    Attack("hvc6-reinstall", "call HVC 6 again after install, then patch kernel text",
           reinstall_then_patch_text, BLOCKED),
    Attack("table-as-user-root", "release a kernel PTE table through HVC 33/34, then write it",
           table_page_as_user_root, FORCED, fixed_up=_PXN),
    # every security-relevant bit of SCTLR/TCR/MAIR, one at a time
    Attack("sctlr-wxn", "clear/set SCTLR_EL1.WXN (bit 19: writable implies never-execute)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 19), BLOCKED),
    Attack("sctlr-span", "flip SCTLR_EL1.SPAN (bit 23: PAN set on exception entry)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 23), BLOCKED),
    Attack("sctlr-uct", "flip SCTLR_EL1.UCT (bit 15: EL0 reads of CTR_EL0)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 15), BLOCKED),
    Attack("sctlr-dze", "flip SCTLR_EL1.DZE (bit 14: EL0 DC ZVA)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 14), BLOCKED),
    Attack("sctlr-ntwi", "flip SCTLR_EL1.nTWI (bit 16: EL0 WFI trapping)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 16), BLOCKED),
    Attack("tcr-epd0", "set TCR_EL1.EPD0 (bit 7: no TTBR0 walks)",
           _pin_attack(SysReg.TCR_EL1, 1 << 7), BLOCKED),
    Attack("tcr-tbi1", "flip TCR_EL1.TBI1 (bit 38: top-byte-ignore for kernel VAs)",
           _pin_attack(SysReg.TCR_EL1, 1 << 38), BLOCKED),
    Attack("tcr-as", "flip TCR_EL1.AS (bit 36: 8/16-bit ASIDs)",
           _pin_attack(SysReg.TCR_EL1, 1 << 36), BLOCKED),
    Attack("mair-attr0", "change MAIR_EL1 attribute 0", _pin_attack(SysReg.MAIR_EL1, 0x04),
           BLOCKED),
    # modules
    Attack("load-unsigned-module", "insmod a module the signature table does not know",
           load_unsigned_module, BLOCKED),
    Attack("module-name-prefix", "insmod 'hell', a prefix of the signed 'hello'",
           module_name_prefix, GAP, gap="6 (names matched by prefix)"),
    Attack("load-tampered-text", "insmod a signed module with one instruction changed",
           load_tampered_text, BLOCKED),
    Attack("write-module-rodata", "overwrite a loaded module's verified read-only data",
           write_module_rodata, GAP, gap="15 (MOD_ro writable)"),
    Attack("hvc33-double-register", "register a user root twice, release once, switch to it",
           double_registered_root, BLOCKED),
    # EL1 registers no TVM trap covers (docs/el1-registers.md, issue 15)
    Attack("vbar-forge", "move VBAR_EL1 (untrapped) so the next interrupt runs a forged vector",
           vbar_forge, GAP, gap="-- (VBAR_EL1 is not trapped: issue 15)"),
    Attack("mdscr-kde", "enable debug exceptions at EL1 (MDSCR_EL1.KDE, untrapped)", mdscr_kde,
           GAP, gap="-- (MDSCR_EL1 is not trapped: issue 15)"),
    # DMA through the SMMU (docs/kpcore-spec.md §6)
    Attack("dma-kernel-text", "a device told to write into kernel text", dma_kernel_text,
           BLOCKED),
    Attack("dma-rodata", "a device told to write into read-only data", dma_rodata,
           BLOCKED),
    Attack("dma-page-table", "a device told to write into swapper_pg_dir", dma_page_table,
           BLOCKED),
    Attack("dma-module-text", "a device told to write into a loaded module's code",
           dma_module_text, BLOCKED),
    Attack("dma-hyp-memory", "a device told to write into the hypervisor's memory",
           dma_hyp_memory, BLOCKED),
    Attack("dma-smmu-registers", "reprogram the SMMU itself from the kernel", smmu_registers,
           BLOCKED),
    Attack("dma-then-page-table", "map a page for DMA, make it a page table, DMA into it",
           dma_then_page_table, GAP,
           gap="5 (no DMA count check on claim)"),
    # SMP races (issue 13), two vCPUs (MTTCG: they really run at once; the overlap is measured)
    Attack("race-table-store", "CPU1 stores an executable PTE while CPU0's store to the same "
           "table traps", race_table_store, FORCED, fixed_up=_PXN, ncpus=2),
    Attack("race-ttbr0-free", "release a user root (HVC 34) while CPU1 switches to it",
           race_ttbr0_free, RACE_FREE, gap="-- (HVC 34 ignores other CPUs' TTBR0)", ncpus=2),
    Attack("race-module-image", "rewrite the module image from CPU1 while CPU0 loads it",
           race_module_image, RACE_IMAGE, ncpus=2),
    Attack("race-s2-stale", "store through a stale stage-2 TLB entry while CPU0 registers "
           "the page as a user root", race_s2_stale, RACE_STALE, ncpus=2),
    Attack("race-table-claim", "store an executable PTE through a stale TLB entry while CPU0 "
           "links the page as a new table", race_table_claim, RACE_STALE, fixed_up=_PXN,
           ncpus=2),
    Attack("race-module-text", "rewrite the module's text run from CPU1 while HVC 30 installs "
           "it", race_module_text, {"none": SUCCEEDS, "secvma2024": PANICS, "hardened": REFUSED},
           ncpus=2),
]


