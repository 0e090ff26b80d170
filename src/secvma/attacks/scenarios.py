"""Attack scenarios: what a compromised kernel tries, and the evidence of what happened.

Each scenario drives the testbed kernel's EL1 primitives (`secvma.testbed.commands`) and decides
its verdict from the effect, never from the mere absence of an error: text bytes that changed,
injected code that returned its magic value, a register that holds the forged value. The
expected verdict per policy is part of the scenario, so the suite shows at a glance which
attacks SECvma's C design stops, which gaps of kpcore-spec §11 it leaves open, and that
`hardened` closes them. Under `none` every attack must succeed: that shows it is real.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.arch.descriptors import AF, DESC_TABLE, DESC_VALID, SH_SHIFT, Shareability
from secvma.arch.walk import get_leaf
from secvma.hvabi import HVC_ENOSYS, BootInfo, Form
from secvma.platform import PhysAddr, SysReg
from secvma.testbed.commands import TestbedSession

# `mov x0, #42; ret`: injected code returns 42 when it runs
SHELLCODE = (0xD2800540, 0xD65F03C0)
MAGIC = 42

VALID_PAGE = DESC_VALID | DESC_TABLE  # a level-3 page descriptor
SH_INNER = int(Shareability.INNER) << SH_SHIFT


class Verdict(enum.Enum):
    SUCCEEDED = "succeeded"  # the attacker got the effect
    BLOCKED = "blocked"  # no effect, the kernel goes on
    HALTED = "blocked (machine halted)"  # no effect; the hypervisor panicked/stalled the kernel
    NOT_APPLICABLE = "n/a"


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
    gap: str = ""  # the kpcore-spec §11 gap it exercises, if any


BLOCKED = frozenset({Verdict.BLOCKED, Verdict.HALTED})
SUCCEEDS = frozenset({Verdict.SUCCEEDED})


def _bi(s: TestbedSession) -> BootInfo:
    assert s.boot_info is not None
    return s.boot_info


def _read_pa(s: TestbedSession, pa: int, n: int) -> bytes:
    return s.platform.read(PhysAddr(pa), n)


def _plant_shellcode(s: TestbedSession) -> int:
    """Put the shellcode in a fresh page of ordinary kernel memory; return its PA.

    Ordinary memory (usage class NONE) is RW and, on a CPU without FEAT_XNX, executable at
    stage 2 (kpcore-spec §2.3), so only the stage-1 PXN rules stand between it and EL1.
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


ATTACKS: list[Attack] = [
    Attack("write-text-via-alias", "patch kernel code through a writable alias", write_text_via_alias,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("write-rodata-via-alias", "overwrite read-only data through a writable alias",
           write_rodata_via_alias, {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("exec-injected-code", "run code written into kernel memory (W^X)", exec_injected_code,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("narrow-store-pxn-bypass", "make data executable with a 4-byte PTE store",
           narrow_store_pxn_bypass, {"none": SUCCEEDS, "secvma2024": SUCCEEDS, "hardened": BLOCKED},
           gap="1 (store width ignored)"),
    Attack("stxr-drops-pxn", "make data executable with a 64-bit STXR to a PTE", stxr_drops_pxn,
           {"none": SUCCEEDS, "secvma2024": SUCCEEDS, "hardened": BLOCKED},
           gap="9 (STXR keeps the low 32 bits)"),
    Attack("forge-ttbr1", "switch the kernel to page tables it controls", forge_ttbr1,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("direct-ttbr0", "load TTBR0 without HVC 35", direct_ttbr0,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("sctlr-change", "flip SCTLR_EL1.UCI (bit 26: EL0 cache maintenance)",
           _pin_attack(SysReg.SCTLR_EL1, 1 << 26),
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("tcr-change", "flip TCR_EL1.TBI0 (bit 37: top-byte-ignore for user VAs)",
           _pin_attack(SysReg.TCR_EL1, 1 << 37),
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("mair-change", "change MAIR_EL1 attribute 7", _pin_attack(SysReg.MAIR_EL1, 0x44 << 56),
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("stub-hvc-escape", "HVC 2 (hyp-stub) to turn off register trapping, then forge TTBR1",
           stub_hvc_escape, {"none": SUCCEEDS, "secvma2024": SUCCEEDS, "hardened": BLOCKED},
           gap="14 (hyp-stub HVCs reachable)"),
    Attack("load-tampered-module", "insmod a signed module with one byte changed",
           load_tampered_module, {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("write-module-text", "patch a loaded module's code", write_module_text,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-kernel-text", "a device told to write into kernel text", dma_kernel_text,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-rodata", "a device told to write into read-only data", dma_rodata,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-page-table", "a device told to write into swapper_pg_dir", dma_page_table,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-module-text", "a device told to write into a loaded module's code",
           dma_module_text, {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-hyp-memory", "a device told to write into the hypervisor's memory",
           dma_hyp_memory, {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-smmu-registers", "reprogram the SMMU itself from the kernel", smmu_registers,
           {"none": SUCCEEDS, "secvma2024": BLOCKED, "hardened": BLOCKED}),
    Attack("dma-then-page-table", "map a page for DMA, make it a page table, DMA into it",
           dma_then_page_table, {"none": SUCCEEDS, "secvma2024": SUCCEEDS, "hardened": BLOCKED},
           gap="5 (no DMA count check on claim)"),
]
