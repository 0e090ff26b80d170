"""Transparent mode (TransparentKPCore): rules on a fake machine, and the Debian kernel on QEMU."""

from __future__ import annotations

import pytest
from fakes import ATTR_NORMAL, PTE_PAGE, PXN, TCR, UXN, FakePlatform, FakeVcpu
from hypothesis import given
from hypothesis import strategies as hst

from secvma.arch.el2 import VTCR_4G
from secvma.arch.esr import DataAbort
from secvma.arch.walk import AccessType, CpuFeatures, Fault, translate_stage2
from secvma.kpcore.descs import PXNTABLE
from secvma.kpcore.faults import ESR_UNKNOWN
from secvma.kpcore.pages import Usage
from secvma.kpcore.stage2 import PermKind, kind_of
from secvma.kpcore.textsites import (
    PatchSites,
    branch_target,
    cb_word_ok,
    encode_b,
    retarget,
    vdso_images,
)
from secvma.kpcore.tinvariants import check
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


IMAGE_SIZE = 0x3000  # text, .rodata.text (trampoline), init text
TRAMP_TEXT = TEXT_PA + 0x1000  # image page 1: .rodata.text (the KPTI trampoline)
TRAMP_PUD, TRAMP_PMD, TRAMP_PTE = 0x4311_0000, 0x4311_1000, 0x4311_2000
USER_ROOT, USER_PUD = 0x4420_0000, 0x4421_0000
POKE_VA = 0xFFFF_7DFF_FE5F_D000  # a fixmap address (the text-poke slot in these tests)
NOP, MOV_X9_X30 = 0xD503201F, 0xAA1E03E9
FTRACE_OFF, JUMP_OFF, JUMP_TARGET, ALT_OFF = 0x100, 0x200, 0x300, 0x400
AP_RO = 1 << 7
TTBR0_ENC = (3, 0, 2, 0, 0)


BANNER_OFF = 0x1800  # in the trampoline page, away from every patch site


def _image() -> bytes:
    img = bytearray(NOP.to_bytes(4, "little") * (IMAGE_SIZE // 4))
    img[0:64] = b"secvma test image header " + bytes(39)
    img[BANNER_OFF:BANNER_OFF + 40] = b"Linux version 6.1.0-secvma-test (fake)\n\0"
    return bytes(img)


def _sites() -> PatchSites:
    return PatchSites(image_size=IMAGE_SIZE, text=[(0, 0x1000), (0x2000, 0x3000)],
                      ftrace={FTRACE_OFF},
                      jump={JUMP_OFF: JUMP_TARGET}, alt={ALT_OFF: {0xD503233F}})


def _kernel(plat: FakePlatform) -> None:
    """swapper -> PUD -> PMD -> PTE; PTE[0] maps TEXT_PA executable (kernel text); tramp_pg_dir
    maps the trampoline page of the image executable."""
    plat.write(PhysAddr(TEXT_PA), _image())
    plat.write_u64(PhysAddr(SWAPPER + 8 * 256), PUD | 3)
    plat.write_u64(PhysAddr(PUD), PMD | 3)
    plat.write_u64(PhysAddr(PMD + 8 * 64), PTE | 3)
    plat.write_u64(PhysAddr(PTE), TEXT_PA | ATTR_NORMAL | PTE_PAGE | UXN | AP_RO)
    plat.write_u64(PhysAddr(PTE + 8), DATA_PA | ATTR_NORMAL | PTE_PAGE | UXN | PXN)
    tramp = RESERVED - 0x1000
    plat.write_u64(PhysAddr(tramp + 8 * 300), TRAMP_PUD | 3)
    plat.write_u64(PhysAddr(TRAMP_PUD), TRAMP_PMD | 3)
    plat.write_u64(PhysAddr(TRAMP_PMD), TRAMP_PTE | 3)
    plat.write_u64(PhysAddr(TRAMP_PTE), TRAMP_TEXT | ATTR_NORMAL | PTE_PAGE | UXN | AP_RO)


def booted(protect: bool) -> tuple[TransparentKPCore, FakePlatform, FakeVcpu]:
    """reserved_pg_dir, init_pg_dir, swapper_pg_dir (= reserved + 4 KB) loaded in order."""
    hv = TransparentKPCore(protect_tables=protect, image=_image(), sites=_sites())
    plat, cpu = FakePlatform(), FakeVcpu()
    plat.vcpus.append(cpu)
    _kernel(plat)
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    cpu.sysregs[SysReg.TCR_EL1] = TCR
    cpu.sysregs[SysReg.SCTLR_EL1] = SCTLR_ON
    for base in (RESERVED, INIT_PG, SWAPPER):
        assert _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, base)
    assert hv.learned.swapper == SWAPPER
    return hv, plat, cpu


def _load_ttbr0(hv: TransparentKPCore, plat: FakePlatform, cpu: FakeVcpu, base: int) -> bool:
    """MSR TTBR0 as the kernel retries it (PC unchanged while the hypervisor protects)."""
    n = len(cpu.injected)
    for _ in range(8):
        if _trap(hv, plat, cpu, TTBR0_ENC, SysReg.TTBR0_EL1, base):
            return True
        if len(cpu.injected) > n:
            return False
    raise AssertionError("TTBR0 write retried forever")


def armed() -> tuple[TransparentKPCore, FakePlatform, FakeVcpu]:
    """Booted, then the first user root loaded: every protection in force."""
    hv, plat, cpu = booted(protect=True)
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert hv.armed and not hv.refusals
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


def _fill(hv: TransparentKPCore, plat: FakePlatform, cpu: FakeVcpu, pa: int) -> None:
    """Let the lazy stage-2 fill map `pa` (what the CPU's first access would do)."""
    if hv.state.s2.leaf(pa) is None:
        hv.handle(plat, cpu, Stage2Abort(0, 0, PhysAddr(pa), False, False, False, False))


def _store(hv: TransparentKPCore, plat: FakePlatform, cpu: FakeVcpu, pa: int, value: int,
           *, va_page: int = 0xFFFF_0000_0000_0000, size: int = 8) -> None:
    esr = DataAbort(lower_el=True, il=True, isv=True, sas={1: 0, 2: 1, 4: 2, 8: 3}[size],
                    sse=False, srt=2, sf=True, ar=False, vncr=False, fnv=False, ea=False,
                    cm=False, s1ptw=False, wnr=True, dfsc=0x0F).encode()
    cpu.regs[2] = value
    cpu.elr = 0xFFFF_8000_0801_0000
    _fill(hv, plat, cpu, pa)
    hv.handle(plat, cpu, Stage2Abort(esr, va_page | (pa & 0xFFF), PhysAddr(pa),
                                     False, True, False, False))


def test_boot_phase_protects_nothing_but_registers() -> None:
    hv, plat, _cpu = booted(protect=True)
    assert not hv.armed and hv.state.pages.usage_of(SWAPPER >> 12) is Usage.NONE
    assert _s2_writable(hv, plat, PTE) and _s2_writable(hv, plat, TEXT_PA)


def test_arming_protects_tables_text_rodata_and_counts() -> None:
    hv, plat, cpu = armed()
    st = hv.state
    assert st.pages.usage_of(SWAPPER >> 12) is Usage.EL1_PGD
    assert [st.pages.usage_of(p >> 12) for p in (PUD, PMD, PTE)] == \
        [Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE]
    assert st.pages.usage_of(TEXT_PA >> 12) is Usage.EL1_KCODE
    assert st.pages.usage_of(DATA_PA >> 12) is Usage.NONE
    for pa in (SWAPPER, PUD, PMD, PTE, RESERVED, TEXT_PA, USER_ROOT):
        _fill(hv, plat, cpu, pa)
        assert not _s2_writable(hv, plat, pa), hex(pa)
    _fill(hv, plat, cpu, DATA_PA)
    assert _s2_writable(hv, plat, DATA_PA)
    prot = hv.protection_summary()
    assert prot["table_pages"] == {"EL1_PGD": 4, "EL1_PUD": 2, "EL1_PMD": 2, "EL1_PTE": 2}
    assert prot["kernel_code_pages"] == 2 and prot["user_roots_live"] == 1
    assert set(prot) == {"table_pages", "kernel_code_pages", "text_patches_accepted",
                         "text_patches_refused", "text_patches_boot", "text_patches_runtime",
                         "user_roots_live", "user_roots_released",
                         "modules_authenticated", "modules_refused"}
    assert hv.arm_passes == 2  # the second walk found nothing new


def test_image_found_when_its_header_page_was_reused_quirk() -> None:
    """Linux hands the Image's first 64 KiB (its header, [_text, _stext)) to the page allocator:
    by arming time it may hold anything. The Image is found by its banner in .rodata; before the
    fix arming left the image unknown and PXN'd the kernel's own text (a silent hang)."""
    hv, plat, cpu = booted(protect=True)
    plat.write_u64(PhysAddr(PTE), 0)  # as in Linux, [_text, _stext) is not mapped ...
    plat.write(PhysAddr(TEXT_PA), bytes(64))  # ... and its page was reused by the kernel
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert hv.learned.image == (TEXT_PA, TEXT_PA + IMAGE_SIZE)
    assert hv.state.pages.usage_of(TRAMP_TEXT >> 12) is Usage.EL1_KCODE
    assert not plat.read_u64(PhysAddr(TRAMP_PTE)) & PXN and not hv.refusals


def test_arming_without_the_image_is_an_internal_error_not_a_hang() -> None:
    hv, plat, cpu = booted(protect=True)
    plat.write(PhysAddr(TEXT_PA), bytes(IMAGE_SIZE))  # nothing in RAM looks like the Image
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    _trap(hv, plat, cpu, TTBR0_ENC, SysReg.TTBR0_EL1, USER_ROOT)
    assert not hv.armed and plat.halted is not None and "Image" in plat.halted
    assert hv.internal_errors and not plat.read_u64(PhysAddr(PTE)) & PXN


def test_vdso_found_in_image_and_user_executable_at_stage2_quirk() -> None:
    """The vDSO lives in .rodata and user space executes it: read-only but executable at
    stage 2 (no FEAT_XNX here), while any EL1 mapping of it still gets PXN. Before the fix a
    glibc program's first clock_gettime looped on a stage-2 fetch refusal."""
    hv = TransparentKPCore(protect_tables=True, image=_image(), sites=_sites())
    hv.sites.vdso = [(0x2000, 0x3000)]  # image page 2, mapped read-only below (rodata)
    plat, cpu = FakePlatform(), FakeVcpu()
    plat.vcpus.append(cpu)
    _kernel(plat)
    vdso_pa = TEXT_PA + 0x2000
    plat.write_u64(PhysAddr(PTE + 16), vdso_pa | ATTR_NORMAL | PTE_PAGE | UXN | PXN | AP_RO)
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    cpu.sysregs[SysReg.TCR_EL1] = TCR
    cpu.sysregs[SysReg.SCTLR_EL1] = SCTLR_ON
    for base in (RESERVED, INIT_PG, SWAPPER):
        assert _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, base)
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    st = hv.state
    assert st.vdso == ((vdso_pa, vdso_pa + 0x1000),)
    assert st.pages.usage_of(vdso_pa >> 12) is Usage.EL1_RODATA
    _fill(hv, plat, cpu, vdso_pa)
    fetch = translate_stage2(plat.read_u64, vdso_pa, AccessType.FETCH, 0, vtcr=VTCR_4G,
                             vttbr=st.s2.vttbr())
    assert not isinstance(fetch, Fault) and not _s2_writable(hv, plat, vdso_pa)
    _store(hv, plat, cpu, PTE + 24, vdso_pa | ATTR_NORMAL | PTE_PAGE | UXN | AP_RO)  # EL1-X
    assert plat.read_u64(PhysAddr(PTE + 24)) & PXN and not hv.refusals
    assert not check(hv, plat, full=True)


def test_vdso_is_el0_only_code_at_stage2_with_feat_xnx() -> None:
    """With FEAT_XNX (ID_AA64MMFR1_EL1.XNX in CpuStart) the vDSO is UCODE at stage 2: EL0 may
    fetch it, EL1 may not (XN = 01), read-only; before, it was KCODE (EL1-executable too).
    The invariants no longer accept any EL1-executable vDSO leaf."""
    hv = TransparentKPCore(protect_tables=True, image=_image(), sites=_sites())
    hv.sites.vdso = [(0x2000, 0x3000)]
    plat, cpu = FakePlatform(), FakeVcpu()
    plat.vcpus.append(cpu)
    _kernel(plat)
    vdso_pa = TEXT_PA + 0x2000
    plat.write_u64(PhysAddr(PTE + 16), vdso_pa | ATTR_NORMAL | PTE_PAGE | UXN | PXN | AP_RO)
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0, 0x1000_0000))  # XNX = 1
    assert hv.state.feat_xnx
    cpu.sysregs[SysReg.TCR_EL1] = TCR
    cpu.sysregs[SysReg.SCTLR_EL1] = SCTLR_ON
    for base in (RESERVED, INIT_PG, SWAPPER):
        assert _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, base)
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    st = hv.state
    _fill(hv, plat, cpu, vdso_pa)
    hit = st.s2.leaf(vdso_pa)
    assert hit is not None and kind_of(hit[2]) is PermKind.UCODE
    xnx = CpuFeatures(feat_xnx=True)
    el0 = translate_stage2(plat.read_u64, vdso_pa, AccessType.FETCH, 0, vtcr=VTCR_4G,
                           vttbr=st.s2.vttbr(), cpu=xnx)
    el1 = translate_stage2(plat.read_u64, vdso_pa, AccessType.FETCH, 1, vtcr=VTCR_4G,
                           vttbr=st.s2.vttbr(), cpu=xnx)
    assert not isinstance(el0, Fault) and isinstance(el1, Fault)
    assert not _s2_writable(hv, plat, vdso_pa) and not hv.refusals
    assert not check(hv, plat, full=True)
    st.s2.set_leaf(hit[0], hit[1], PermKind.KCODE)  # as before the change: EL1-executable
    assert [v.inv for v in check(hv, plat, full=True)] == ["T-S2-WX"]


def test_vdso_images_found_by_elf_shape() -> None:
    blob = bytearray(0x5000)
    hdr = bytearray(64)
    hdr[0:6] = b"\x7fELF\x02\x01"
    hdr[16:20] = (3).to_bytes(2, "little") + (183).to_bytes(2, "little")  # ET_DYN, AArch64
    hdr[0x28:0x30] = (0x1000).to_bytes(8, "little")  # section headers end past one page
    hdr[0x3A:0x3E] = (64).to_bytes(2, "little") + (3).to_bytes(2, "little")
    blob[0x2000:0x2040] = hdr
    blob[0x3800:0x3840] = hdr  # not page-aligned: not a vDSO
    assert vdso_images(bytes(blob)) == [(0x2000, 0x4000)]


def test_invalid_nonzero_descriptor_quirk() -> None:
    """Linux clears only bit 0 of a live PTE (set_memory_valid(0): the linear alias of freed
    module memory) and sets it again later. The MMU ignores such an entry, so it is accepted
    as an unmapping, and setting bit 0 again is validated as a new mapping (PXN forced)."""
    hv, plat, cpu = armed()
    data_pfn = DATA_PA >> 12
    before = hv.state.pages.subcount_of(data_pfn)
    live = plat.read_u64(PhysAddr(PTE + 8))
    _store(hv, plat, cpu, PTE + 8, live & ~1)
    assert plat.read_u64(PhysAddr(PTE + 8)) == live & ~1 and not hv.refusals
    assert hv.state.pages.subcount_of(data_pfn) == before - 1
    _store(hv, plat, cpu, PTE + 8, (live | 1) & ~PXN)  # valid again, asks for EL1-exec
    assert plat.read_u64(PhysAddr(PTE + 8)) == live | PXN
    assert [r.rule for r in hv.refusals] == ["mod-unknown"]  # EL1-exec of data: refused, logged
    assert hv.state.pages.subcount_of(data_pfn) == before
    _store(hv, plat, cpu, PTE + 8, 0x1)  # bit 0 set, bit 1 clear at level 3: still refused
    assert [r.rule for r in hv.refusals] == ["mod-unknown", "kpt-L3"]


def test_arming_walks_again_when_a_table_appears_meanwhile() -> None:
    """SMP: a table linked by another CPU between two walks is found and protected first."""
    hv, plat, cpu = booted(protect=True)
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert not _trap(hv, plat, cpu, TTBR0_ENC, SysReg.TTBR0_EL1, USER_ROOT)  # pass 1: retry
    late = 0x4330_0000
    plat.write_u64(PhysAddr(PMD + 8 * 66), late | 3)  # landed before the TLBI took effect
    assert not _trap(hv, plat, cpu, TTBR0_ENC, SysReg.TTBR0_EL1, USER_ROOT)  # pass 2: new
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert hv.arm_passes == 3 and hv.armed and not hv.refusals
    assert hv.state.pages.usage_of(late >> 12) is Usage.EL1_PTE


def test_kpti_trampoline_quirk() -> None:
    """tramp_pg_dir's executable read-only leaf into the image is kernel text, not PXN'd."""
    hv, plat, _cpu = armed()
    assert hv.state.pages.usage_of(TRAMP_TEXT >> 12) is Usage.EL1_KCODE
    assert not plat.read_u64(PhysAddr(TRAMP_PTE)) & PXN
    assert hv.state.pages.usage_of((RESERVED - 0x1000) >> 12) is Usage.EL1_PGD


def test_executable_leaf_outside_text_gets_pxn_at_arming() -> None:
    hv, plat, cpu = booted(protect=True)
    plat.write_u64(PhysAddr(PTE + 16), DATA_PA | ATTR_NORMAL | PTE_PAGE | UXN)  # PXN clear
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert plat.read_u64(PhysAddr(PTE + 16)) & PXN and hv.stats["arm_pxn_fixups"] == 1


def test_pxn_forced_on_executable_leaf_to_non_text() -> None:
    hv, plat, cpu = armed()
    cpu.skips = 0
    _store(hv, plat, cpu, PTE + 16, DATA_PA | ATTR_NORMAL | PTE_PAGE | UXN)  # PXN clear
    assert plat.read_u64(PhysAddr(PTE + 16)) & PXN
    _store(hv, plat, cpu, PTE + 24, TEXT_PA | ATTR_NORMAL | PTE_PAGE | UXN | AP_RO)  # text
    assert not plat.read_u64(PhysAddr(PTE + 24)) & PXN
    assert cpu.skips == 2 and hv.stats["pxn_fixups"] == 1
    # no module authority in this run: the request is refused by name, not silently PXN'd
    assert [r.rule for r in hv.refusals] == ["mod-unknown"]


def test_reserved_pg_dir_stays_empty() -> None:
    hv, plat, cpu = armed()
    _store(hv, plat, cpu, RESERVED, PUD | 3)
    assert plat.read_u64(PhysAddr(RESERVED)) == 0
    assert [r.rule for r in hv.refusals] == ["reserved-pgd"]


def test_new_table_claimed_before_link_and_released_at_unlink() -> None:
    hv, plat, cpu = armed()
    cpu.skips = 0
    new_pte = 0x4320_0000
    _store(hv, plat, cpu, PMD + 8 * 65, new_pte | 3)
    assert hv.state.pages.usage_of(new_pte >> 12) is Usage.EL1_PTE  # claimed, store retried
    assert plat.read_u64(PhysAddr(PMD + 8 * 65)) == 0 and cpu.skips == 0
    _store(hv, plat, cpu, PMD + 8 * 65, new_pte | 3)
    assert plat.read_u64(PhysAddr(PMD + 8 * 65)) == new_pte | 3
    assert not _s2_writable(hv, plat, new_pte)
    _store(hv, plat, cpu, PMD + 8 * 65, 0)  # unlinked: the kernel frees it next
    assert hv.state.pages.usage_of(new_pte >> 12) is Usage.NONE
    _fill(hv, plat, cpu, new_pte)
    assert _s2_writable(hv, plat, new_pte) and hv.stats["tables_released"] == 1


def test_new_table_discards_a_store_through_a_stale_tlb_quirk() -> None:
    """SMP (issue 13, race-table-claim on the stock kernel): the claim zeroes the page and
    makes it read-only, but the broadcast TLBI runs when the trap returns; a store another CPU
    makes through its stale writable entry meanwhile used to survive into the linked table."""
    hv, plat, cpu = armed()
    new_pte = 0x4320_0000
    _store(hv, plat, cpu, PMD + 8 * 65, new_pte | 3)  # claimed, store retried
    raw = DATA_PA | ATTR_NORMAL | PTE_PAGE | UXN  # executable at EL1: never validated
    plat.write_u64(PhysAddr(new_pte + 8 * 5), raw)  # CPU 1's store through its stale entry
    other = FakeVcpu(index=1)
    before = plat.read_u64(PhysAddr(new_pte + 8 * 6))
    _store(hv, plat, other, new_pte + 8 * 6, raw)  # CPU 1 traps on it before CPU 0 retries
    assert plat.read_u64(PhysAddr(new_pte + 8 * 6)) == before  # retried, not emulated
    assert hv.stats["unsettled_retry"] == 1
    _store(hv, plat, cpu, PMD + 8 * 65, new_pte | 3)  # CPU 0's retry, its TLBI done
    assert plat.read_u64(PhysAddr(PMD + 8 * 65)) == new_pte | 3
    assert plat.read(PhysAddr(new_pte), 0x1000) == bytes(0x1000)  # the stale store is gone
    assert not hv.refusals and not hv.internal_errors


def test_boot_text_patches_validated_at_arming() -> None:
    hv, plat, cpu = booted(protect=True)
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    plat.write(PhysAddr(TEXT_PA + FTRACE_OFF), MOV_X9_X30.to_bytes(4, "little"))  # allowed
    plat.write(PhysAddr(TEXT_PA + 0x800), (0xD65F03C0).to_bytes(4, "little"))  # no site
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert hv.patches.accepted == 1 and hv.patches.refused == 1
    assert [r.rule for r in hv.refusals] == ["text-patch"]
    assert plat.read(PhysAddr(TEXT_PA + 0x800), 4) == NOP.to_bytes(4, "little")  # restored
    # and the CPU is made to fetch it: that word only (a machine that translates code would
    # go on running what boot left there)
    assert plat.code_ranges == [(TEXT_PA + 0x800, 4)]


def test_runtime_text_patch_at_declared_sites_only() -> None:
    hv, plat, cpu = armed()
    b_target = encode_b(JUMP_OFF, JUMP_TARGET)
    assert b_target is not None
    _store(hv, plat, cpu, TEXT_PA + JUMP_OFF, b_target, va_page=POKE_VA, size=4)  # jump label
    assert plat.read(PhysAddr(TEXT_PA + JUMP_OFF), 4) == b_target.to_bytes(4, "little")
    _store(hv, plat, cpu, TEXT_PA + ALT_OFF, 0xD503233F, va_page=POKE_VA, size=4)  # alt
    wrong = encode_b(JUMP_OFF, JUMP_TARGET + 4)
    assert wrong is not None
    _store(hv, plat, cpu, TEXT_PA + JUMP_OFF, wrong, va_page=POKE_VA, size=4)  # wrong target
    _store(hv, plat, cpu, TEXT_PA + 0x800, NOP, va_page=POKE_VA, size=4)  # no site
    assert [r.rule for r in hv.refusals] == ["text-patch", "text-patch"]
    assert hv.patches.runtime == {"jump": 1, "alt": 1} and hv.patches.refused == 2
    assert plat.read(PhysAddr(TEXT_PA + JUMP_OFF), 4) == b_target.to_bytes(4, "little")


def test_text_poke_alias_quirk() -> None:
    """Text is written only through one alias (the text-poke fixmap slot) after arming."""
    hv, plat, cpu = armed()
    _store(hv, plat, cpu, PTE + 8 * 100, TEXT_PA | ATTR_NORMAL | PTE_PAGE | UXN | PXN)  # RW
    assert hv.patches.poke_slot == PTE + 8 * 100 and not hv.refusals
    _store(hv, plat, cpu, PTE + 8 * 101, TEXT_PA | ATTR_NORMAL | PTE_PAGE | UXN | PXN)
    assert [r.rule for r in hv.refusals] == ["text-alias"]
    assert plat.read_u64(PhysAddr(PTE + 8 * 101)) == 0
    _store(hv, plat, cpu, TEXT_PA + FTRACE_OFF, NOP, va_page=POKE_VA, size=4)
    _store(hv, plat, cpu, TEXT_PA + FTRACE_OFF, NOP, va_page=POKE_VA + 0x1000, size=4)
    assert [r.rule for r in hv.refusals] == ["text-alias", "text-alias"]


def test_user_root_validated_and_write_protected() -> None:
    hv, plat, cpu = armed()
    assert USER_ROOT in hv.roots.valid
    assert hv.state.pages.usage_of(USER_ROOT >> 12) is Usage.EL0_PGD
    _store(hv, plat, cpu, USER_ROOT + 8, (USER_PUD + 0x1000) | 3)  # PXNTable forced
    assert plat.read_u64(PhysAddr(USER_ROOT + 8)) & PXNTABLE
    bad = 0x4430_0000
    plat.write_u64(PhysAddr(bad), USER_PUD | 3)  # no PXNTable: EL1 could run user memory
    assert not _load_ttbr0(hv, plat, cpu, bad)
    assert [r.rule for r in hv.refusals] == ["user-root"]
    assert hv.state.pages.usage_of(bad >> 12) is Usage.NONE and bad not in hv.roots.valid


def test_root_release_quirk() -> None:
    """A freed root is released when the kernel reuses it, never while a CPU has it loaded."""
    hv, plat, cpu = armed()
    _store(hv, plat, cpu, USER_ROOT + 16, 0x1234_5678)  # loaded on cpu0: refused
    assert [r.rule for r in hv.refusals] == ["user-pgd"]
    other = 0x4440_0000
    assert _load_ttbr0(hv, plat, cpu, other)  # cpu0 moves to another (empty) root
    cpu.skips = 0
    _store(hv, plat, cpu, USER_ROOT + 16, 0x1234_5678)  # now the page is reused as data
    assert hv.state.pages.usage_of(USER_ROOT >> 12) is Usage.NONE and cpu.skips == 0
    assert hv.roots.released == 1 and USER_ROOT not in hv.roots.valid
    assert hv.protection_summary()["user_roots_released"] == 1


def test_a_store_into_the_loaded_root_is_still_emulated() -> None:
    hv, plat, cpu = armed()
    cpu.skips = 0
    _store(hv, plat, cpu, USER_ROOT + 8, (USER_PUD + 0x1000) | 3)
    assert cpu.skips == 1 and hv.stats["root_stores"] == 1 and hv.roots.released == 0
    assert hv.state.pages.usage_of(USER_ROOT >> 12) is Usage.EL0_PGD


def test_store_into_an_unloaded_root_releases_it_in_one_trap() -> None:
    """A root no CPU runs on is released by the first store into it, whatever the value (the
    kernel zeroes a freed root it reuses: before, each of those stores was emulated), and is
    validated afresh when loaded again."""
    hv, plat, cpu = armed()
    assert _load_ttbr0(hv, plat, cpu, 0x4440_0000)  # cpu0 leaves USER_ROOT
    cpu.skips = 0
    _store(hv, plat, cpu, USER_ROOT, 0)  # a zeroing store: released, retried natively
    assert hv.state.pages.usage_of(USER_ROOT >> 12) is Usage.NONE and cpu.skips == 0
    assert hv.stats["root_store_released"] == 1 and not hv.refusals
    plat.write_u64(PhysAddr(USER_ROOT + 8), USER_PUD | 3)  # as data: no PXNTable
    assert not _load_ttbr0(hv, plat, cpu, USER_ROOT)  # validated again when loaded
    assert [r.rule for r in hv.refusals] == ["user-root"]


def test_invariants_hold_then_catch_a_writable_text_page() -> None:
    hv, plat, cpu = armed()
    _fill(hv, plat, cpu, TEXT_PA)
    assert check(hv, plat, full=True) == []
    st = hv.state
    st.s2.split_to_page(TEXT_PA)
    st.s2.set_leaf(TEXT_PA, 3, PermKind.RW)
    assert [v.inv for v in check(hv, plat)] == ["T-CODE-RO"]


def test_init_text_released_when_unmapped_after_early_arming() -> None:
    """Arming before free_initmem: init text is text until its leaf goes, then RAM again."""
    hv, plat, cpu = booted(protect=True)
    init_pa = TEXT_PA + 0x2000
    plat.write_u64(PhysAddr(PTE + 16), init_pa | ATTR_NORMAL | PTE_PAGE | UXN | AP_RO)
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert hv.state.pages.usage_of(init_pa >> 12) is Usage.EL1_KCODE
    _store(hv, plat, cpu, PTE + 24, init_pa | ATTR_NORMAL | PTE_PAGE | UXN | AP_RO)  # alias
    assert [r.rule for r in hv.refusals] == ["init-text"]
    _store(hv, plat, cpu, PTE + 16, 0)  # free_initmem unmaps it
    assert hv.state.pages.usage_of(init_pa >> 12) is Usage.NONE
    assert hv.stats["init_text_released"] == 1


def test_alternative_words_are_retargeted_like_the_kernel_does() -> None:
    """A B/BL or ADRP copied from the replacement section keeps its absolute target."""
    b = encode_b(0x1000, 0x5000)
    assert b is not None
    assert branch_target(retarget(b, 0x1000, 0x3000), 0x3000) == 0x5000
    adrp = 0x9000_0000 | (1 << 29)  # ADRP x0, +1 page (at 0x1000: page 0x2000)
    moved = retarget(adrp, 0x1000, 0x3000)
    imm = ((moved >> 5) & 0x7FFFF) << 2 | (moved >> 29) & 3
    assert 0x3000 + (imm - (1 << 21) if imm >> 20 else imm) * 0x1000 == 0x2000
    assert cb_word_ok(0xD280011E) and cb_word_ok(NOP) and not cb_word_ok(0xF9400000)
    assert not cb_word_ok(0x9000_0000) and not cb_word_ok(0x1400_0001)


def test_hostile_values_never_raise() -> None:
    hv, plat, cpu = armed()
    for value in (0, (1 << 64) - 1, 0xFFFF_FFFF_F003, 0x4010_0003):
        _store(hv, plat, cpu, PMD + 8 * 70, value)
        _store(hv, plat, cpu, USER_ROOT + 8 * 70, value)
        _store(hv, plat, cpu, TEXT_PA + 0x40, value, va_page=POKE_VA)
        _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, value)
        _trap(hv, plat, cpu, TTBR0_ENC, SysReg.TTBR0_EL1, value)
    assert not hv.internal_errors and plat.halted is None


# --- the Debian kernel on QEMU ------------------------------------------------------------------


@pytest.mark.debian
def test_patch_sites_learned_from_the_debian_image(debian: object) -> None:
    """The Image declares ~44k ftrace sites, ~7.5k jump labels and the alternatives."""
    from secvma.kpcore.textsites import MOV_X9_X30, learn_sites, patch_kind

    img = debian.kernel_image.read_bytes()  # type: ignore[attr-defined]
    sites = learn_sites(img)
    counts = sites.counts()
    assert counts["ftrace"] > 40_000 and counts["jump"] > 5_000 and counts["alt_words"] > 10_000
    site = min(sites.ftrace)
    assert patch_kind(sites, site, NOP, MOV_X9_X30) == "ftrace"
    assert patch_kind(sites, site, NOP, 0xD65F03C0) is None  # RET at an ftrace site
    code, target = next(iter(sites.jump.items()))
    assert patch_kind(sites, code, None, encode_b(code, target) or 0) == "jump"
    assert patch_kind(sites, code, None, encode_b(code, target + 4) or 0) is None


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
@pytest.mark.parametrize(("smp", "s2"), [(1, "huge"), (2, "huge"), (1, "4k"), (2, "4k")])
def test_debian_boots_protected_under_transparent(debian: object, smp: int, s2: str) -> None:
    """Default protection: /init runs with zero refusals, tables/text/roots protected."""
    from secvma.machine.initramfs import INIT_BANNER, build_initramfs
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    image = debian.kernel_image  # type: ignore[attr-defined]
    hv = TransparentKPCore(s2=s2, image=image.read_bytes(), check_invariants=True)
    full: list[str] = []

    def at_init(console: object) -> bool:
        """At the init banner (guest RAM still mapped): the full invariant check."""
        if INIT_BANNER not in console.first_seen:  # type: ignore[attr-defined]
            return False
        full.extend(str(v) for v in check(hv, hv.state.s2.mem, full=True))  # type: ignore[arg-type]
        return True

    res = boot(MachineConfig(kernel=image, initrd=build_initramfs(), ncpus=smp, timeout_s=240),
               hv, watch=(INIT_BANNER,), until=at_init)
    assert res.exit == "until", res.console[-2000:]
    summary = hv.summary()
    assert not hv.refusals and not hv.internal_errors, summary
    assert not hv.invariant_violations and full == [], (hv.invariant_violations, full)
    prot = hv.protection_summary()
    tables = prot["table_pages"]
    assert isinstance(tables, dict) and tables["EL1_PTE"] >= 100 and tables["EL1_PGD"] >= 3
    assert isinstance(prot["kernel_code_pages"], int) and prot["kernel_code_pages"] >= 1000
    assert isinstance(prot["text_patches_accepted"], int) and \
        prot["text_patches_accepted"] > 40_000
    assert prot["text_patches_refused"] == 0 and prot["user_roots_live"] >= 1
    assert hv.learned.tramp == hv.learned.reserved - 0x1000  # type: ignore[operator]
    assert hv.stats["cpus_locked"] == smp and hv.armed


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
def test_debian_registers_only_without_table_protection(debian: object) -> None:
    """--no-protect-tables: roots learned and checked, registers pinned, power-off."""
    from secvma.machine.initramfs import INIT_BANNER, build_initramfs
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    hv = TransparentKPCore(protect_tables=False)
    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(),  # type: ignore[attr-defined]
                             ncpus=1, timeout_s=120), hv, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.console[-2000:]
    assert not hv.refusals and not hv.internal_errors and not hv.armed
    # learned roots: checked by Python until the CPU locked, then loaded by the root fast path
    assert hv.stats["ttbr1_checked"] + res.fast_root_traps > 0
    assert res.fast_root_traps > 0  # after: learned roots loaded at EL2


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
@pytest.mark.parametrize("smp", [1, 2])
def test_debian_fork_and_context_switches_use_validated_roots(debian: object, smp: int) -> None:
    """/init forks and yields (SECVMA_YIELDS): each mm's root is validated before it is
    loaded, switches between validated roots are checked, no refusal."""
    from secvma.machine.initramfs import INIT_BANNER, build_initramfs
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    image = debian.kernel_image  # type: ignore[attr-defined]
    hv = TransparentKPCore(image=image.read_bytes())
    res = boot(MachineConfig(kernel=image, initrd=build_initramfs(), ncpus=smp, timeout_s=240,
                             append="console=ttyAMA0 panic=-1 SECVMA_YIELDS=500"),
               hv, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.console[-2000:]
    assert "sched_yield ns/switch" in res.console
    assert not hv.refusals and not hv.internal_errors, hv.summary()
    assert hv.roots.accepted >= 2
    # switches between validated roots: checked by Python, or loaded at EL2 from the table
    # Python filled (the root fast path; TTBR1 switches too, with KPTI)
    assert hv.stats["ttbr0_checked"] + res.fast_root_traps > 0
    assert res.fast_root_traps > res.traps.get("SysregTrap", 0) // 10


# --- root fast path (issue 14): the machine's allowed roots follow Python's decisions ---------


def test_root_fast_path_enabled_when_locked_and_armed() -> None:
    hv, plat, cpu = booted(protect=True)
    tramp = RESERVED - 0x1000
    assert cpu.root_fast == {SysReg.TTBR1_EL1}  # locked on swapper; tables not yet armed
    assert plat.allowed[SysReg.TTBR1_EL1] == {SWAPPER, RESERVED, tramp}
    assert plat.allowed[SysReg.TTBR0_EL1] == set()
    assert cpu.fast_root(plat, SysReg.TTBR1_EL1, SWAPPER | (9 << 48) | 1)  # ASID, CnP free
    assert not cpu.fast_root(plat, SysReg.TTBR1_EL1, INIT_PG)  # not a root: traps, refused
    assert not _trap(hv, plat, cpu, TTBR1_ENC, SysReg.TTBR1_EL1, INIT_PG)
    assert [r.rule for r in hv.refusals] == ["ttbr1-root"]
    plat.write_u64(PhysAddr(USER_ROOT), USER_PUD | 3 | PXNTABLE)
    assert _load_ttbr0(hv, plat, cpu, USER_ROOT)
    assert cpu.root_fast == {SysReg.TTBR0_EL1, SysReg.TTBR1_EL1}
    assert plat.allowed[SysReg.TTBR0_EL1] == {USER_ROOT, RESERVED, RESERVED - 0x2000}  # idmap


def test_root_fast_path_refused_root_never_listed() -> None:
    hv, plat, cpu = armed()
    bad = 0x4430_0000
    plat.write_u64(PhysAddr(bad), USER_PUD | 3)  # no PXNTable
    assert not cpu.fast_root(plat, SysReg.TTBR0_EL1, bad)
    assert not _load_ttbr0(hv, plat, cpu, bad)
    assert [r.rule for r in hv.refusals] == ["user-root"]
    assert bad not in plat.allowed[SysReg.TTBR0_EL1]
    assert not cpu.fast_root(plat, SysReg.TTBR0_EL1, bad | (3 << 48))


def test_root_fast_path_entry_removed_at_release() -> None:
    hv, plat, cpu = armed()
    other = 0x4440_0000
    assert _load_ttbr0(hv, plat, cpu, other)
    assert other in plat.allowed[SysReg.TTBR0_EL1]
    assert cpu.fast_root(plat, SysReg.TTBR0_EL1, USER_ROOT | (4 << 48))  # back, no trap
    assert cpu.fast_root(plat, SysReg.TTBR0_EL1, other)
    plat.allowed_log.clear()
    _store(hv, plat, cpu, USER_ROOT + 16, 0x1234_5678)  # the kernel freed and reused it
    assert hv.roots.released == 1
    assert plat.allowed_log == [("remove", SysReg.TTBR0_EL1, USER_ROOT)]
    assert not cpu.fast_root(plat, SysReg.TTBR0_EL1, USER_ROOT)  # traps again


def test_root_fast_path_load_seen_by_release_on_another_cpu() -> None:
    """cpu1 loaded a root through the fast path (Python never saw it): a store into that root
    from cpu0 must not release it; the entry is removed, found in use, and put back."""
    hv, plat, cpu = armed()
    cpu1 = FakeVcpu(index=1)
    plat.vcpus.append(cpu1)
    hv.handle(plat, cpu1, CpuStart(0x4020_0000, 0))
    cpu1.sysregs[SysReg.TCR_EL1] = TCR
    cpu1.sysregs[SysReg.SCTLR_EL1] = SCTLR_ON
    assert _trap(hv, plat, cpu1, TTBR1_ENC, SysReg.TTBR1_EL1, SWAPPER)
    assert cpu1.root_fast == {SysReg.TTBR0_EL1, SysReg.TTBR1_EL1}
    assert cpu1.fast_root(plat, SysReg.TTBR0_EL1, USER_ROOT | (2 << 48))
    other = 0x4440_0000
    assert _load_ttbr0(hv, plat, cpu, other)  # cpu0 leaves USER_ROOT
    plat.allowed_log.clear()
    _store(hv, plat, cpu, USER_ROOT + 16, 0x1234_5678)
    assert [r.rule for r in hv.refusals] == ["user-pgd"]  # still a live root: refused
    assert hv.roots.released == 0 and hv.roots.fast_kept == 1
    assert USER_ROOT in hv.roots.valid and USER_ROOT in plat.allowed[SysReg.TTBR0_EL1]
    assert plat.allowed_log == [("remove", SysReg.TTBR0_EL1, USER_ROOT),
                                ("add", SysReg.TTBR0_EL1, USER_ROOT)]


def test_root_fast_path_off_after_cpu_restart() -> None:
    hv, plat, cpu = armed()
    hv.handle(plat, cpu, CpuStart(0x4020_0000, 0))
    assert hv.cpus[cpu.index].fast == frozenset()


def test_image_found_after_its_header_page_was_reused() -> None:
    """arm64 reserves the image from _stext (Image + 64 KiB) only: with a large initramfs the
    header's page holds other data by arming time. The image is still found (by its banner
    in .rodata, which nothing writes); before the fix it was not, text got PXN, and the
    kernel hung right after arming."""
    img = bytearray(0x1_2000)
    img[:64] = b"MZ secvma test header".ljust(64, b"\0")
    for off in range(0x1_0000, len(img), 4):
        img[off:off + 4] = ((off * 2654435761) & 0xFFFF_FFFF).to_bytes(4, "little")
    img[0x1_1800:0x1_1820] = b"Linux version 6.1.0-test (fake)\n"
    sites = PatchSites(image_size=len(img), text=[(0x1_0000, len(img))], ftrace={0x1_0000})
    hv = TransparentKPCore(image=bytes(img), sites=sites)
    plat = FakePlatform()
    base = 0x4280_0000
    live = bytearray(img)
    live[:0x1_0000] = b"x" * 0x1_0000  # the header page reused
    live[0x1_0000:0x1_0004] = MOV_X9_X30.to_bytes(4, "little")  # ftrace site patched at boot
    plat.write(PhysAddr(base), bytes(live))
    st = hv.attach(plat)
    hv._find_image(st, plat)
    assert hv.learned.image == (base, base + len(img))


@given(hst.integers(0, 2**32),
       hst.lists(hst.tuples(hst.integers(0, 4095), hst.integers(1, 255)), max_size=40))
def test_changed_words_are_exactly_the_words_that_differ(seed: int,
                                                         flips: list[tuple[int, int]]) -> None:
    """Arming's boot-patch check visits only the words that differ, every one of them."""
    import random

    from secvma.kpcore.transparent import _changed_words

    orig = random.Random(seed).randbytes(4096)
    live = bytearray(orig)
    for i, x in flips:
        live[i] ^= x
    want = [k for k in range(0, 4096, 4) if live[k:k + 4] != orig[k:k + 4]]
    assert list(_changed_words(bytes(live), orig)) == want


def test_walker_hardware_update_of_a_protected_table_is_refused_not_retried() -> None:
    """TCR_EL1.HA/HD (set by Debian on -cpu max): a stage-1 walk that must set AF in a
    write-protected PTE table faults at stage 2 with S1PTW and WnR. It used to be taken for a
    stale TLB entry (a walk only needs read) and retried without end; now it is refused."""
    hv, plat, cpu = armed()
    assert not _s2_writable(hv, plat, PTE)
    esr = DataAbort(lower_el=True, il=True, isv=False, sas=0, sse=False, srt=0, sf=False,
                    ar=False, vncr=False, fnv=False, ea=False, cm=False, s1ptw=True, wnr=True,
                    dfsc=0x0F).encode()
    cpu.elr = 0xFFFF_8000_0801_0000
    hv.handle(plat, cpu, Stage2Abort(esr, 0xFFFF_0000_0000_0000, PhysAddr(PTE + 8), False, True,
                                     False, True))
    assert [r.rule for r in hv.refusals] == ["s1-hw-update"] and cpu.injected
    assert hv.stats["s2_stale"] == 0 and not hv.internal_errors
