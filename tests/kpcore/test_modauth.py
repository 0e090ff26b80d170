"""Module authentication under transparent (kpcore/modauth.py): the rules on the fake machine
with a real Debian module (libcrc32c) relocated into fake kernel memory, and the pure parts."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from fakes import ATTR_NORMAL, PTE_PAGE, PXN, UXN
from test_transparent import KVA, PTE, _store, armed

from secvma import fixtures as fx
from secvma.kpcore.kexports import image_exports
from secvma.kpcore.modauth import MOV_X9_X30, ModSites, ModuleAuthority, Verdict, load_candidate
from secvma.kpcore.pages import Usage
from secvma.kpcore.textsites import KIMAGE_VADDR, NOP
from secvma.module import linux_sig
from secvma.module.api import open_module
from secvma.module.relocations import plt_entry
from secvma.module.symbols import Export, ExportKind, SymversEntry
from secvma.platform import PhysAddr

AP_RO = 1 << 7
CORE_VA, INIT_VA = KVA + 0x1_0000, KVA + 0x2_0000  # PTE slots 16.., 32..
CORE_SLOT, INIT_SLOT = PTE + 8 * 16, PTE + 8 * 32
MOD_PA = 0x4500_0000
DESC = ATTR_NORMAL | PTE_PAGE | UXN


def _authority(debian: fx.FixtureSet, data: bytes) -> ModuleAuthority:
    """libcrc32c's imports exported by a fake kernel at its text (KVA + 0x100 ...)."""
    elf = open_module(data).elf
    names = sorted({s.name for s in elf.symbols() if s.undefined and s.name})
    exports = {n: Export(n, KVA + 0x100 + 8 * k, ExportKind.PLAIN, "vmlinux")
               for k, n in enumerate(names)}
    certs = [linux_sig.load_certificate(p) for p in debian.signing_certs]
    return ModuleAuthority(certs, [("libcrc32c.ko", data)], exports,
                           [(KIMAGE_VADDR, KIMAGE_VADDR + 0x1000)])


def _loaded(debian: fx.FixtureSet, data: bytes | None = None, *, tamper: bool = False,
            struct_ok: bool = True):  # type: ignore[no-untyped-def]
    """Armed fake kernel with libcrc32c laid out, relocated and mapped (PXN) as 6.1 would."""
    genuine = debian.modules["libcrc32c"].read_bytes()
    auth = _authority(debian, data if data is not None else genuine)
    hv, plat, cpu = armed()
    hv.modules = auth
    auth.set_kaslr(hv.kaslr)
    cand = auth.candidates[0]
    ref = load_candidate("genuine", genuine, auth.certs)  # what the kernel loaded
    linked = auth.link(ref, CORE_VA, INIT_VA, [])
    assert isinstance(linked, tuple), linked
    texts = linked[0]
    lay = ref.layout
    assert lay is not None and cand.layout is not None
    core = bytearray(lay.core.size)
    core[:len(texts["core"])] = texts["core"]
    tm = ref.this_module
    name = b"libcrc32c" if struct_ok else b"\xff" * 20
    core[tm + 24:tm + 24 + len(name)] = name
    core[tm + 0x140:tm + 0x158] = struct.pack("<QIIII", CORE_VA, lay.core.size, lay.core.text_size,
                                             lay.core.ro_size, lay.core.ro_after_init_size)
    core[tm + 0x1C0:tm + 0x1D8] = struct.pack("<QIIII", INIT_VA, lay.init.size, lay.init.text_size,
                                             lay.init.ro_size, lay.init.ro_after_init_size)
    if tamper:
        core[0x20:0x24] = NOP.to_bytes(4, "little")
    init = bytearray(lay.init.size)
    init[:len(texts["init"])] = texts["init"]
    for base_pa, blob, slot0, text in ((MOD_PA, core, CORE_SLOT, lay.core.text_size),
                                       (MOD_PA + 0x1_0000, init, INIT_SLOT, lay.init.text_size)):
        plat.write(PhysAddr(base_pa), bytes(blob))
        for k in range(len(blob) // 0x1000):
            ro = AP_RO if k * 0x1000 < text else 0
            _store(hv, plat, cpu, slot0 + 8 * k, (base_pa + 0x1000 * k) | DESC | PXN | ro)
    assert not hv.refusals
    return hv, plat, cpu, lay


def _exec(hv, plat, cpu, slot: int) -> None:  # type: ignore[no-untyped-def]
    """set_memory_x on one PTE, retried as the CPU would while the hypervisor protects."""
    for _ in range(3):
        before = cpu.skips
        _store(hv, plat, cpu, slot, plat.read_u64(PhysAddr(slot)) & ~PXN)
        if cpu.skips > before:
            return
    raise AssertionError("PXN clear retried forever")


def test_signed_module_text_executable_only_after_authentication(debian: fx.FixtureSet) -> None:
    hv, plat, cpu, _lay = _loaded(debian)
    before = cpu.skips
    _store(hv, plat, cpu, CORE_SLOT, plat.read_u64(PhysAddr(CORE_SLOT)) & ~PXN)
    assert cpu.skips == before  # retried: the text page is write-protected first
    assert hv.state.pages.usage_of(MOD_PA >> 12) is Usage.EL1_MOD_RO
    _exec(hv, plat, cpu, CORE_SLOT)
    assert not plat.read_u64(PhysAddr(CORE_SLOT)) & PXN
    assert hv.state.pages.usage_of(MOD_PA >> 12) is Usage.EL1_MOD_TXT
    _exec(hv, plat, cpu, INIT_SLOT)
    assert not plat.read_u64(PhysAddr(INIT_SLOT)) & PXN
    assert hv.state.pages.usage_of((MOD_PA + 0x1_0000) >> 12) is Usage.EL1_MOD_TXT
    assert not hv.refusals and not hv.internal_errors
    prot = hv.protection_summary()
    assert prot["modules_authenticated"] == 1 and prot["modules_refused"] == 0
    rec = hv.mod_records[0]
    assert rec.name == "libcrc32c" and rec.state == "authenticated"
    assert {e.name for e in hv._module_exports()} >= {"crc32c"}


def test_tampered_text_refused_and_stays_pxn(debian: fx.FixtureSet) -> None:
    hv, plat, cpu, _lay = _loaded(debian, tamper=True)
    _exec(hv, plat, cpu, CORE_SLOT)  # carried out, with PXN kept: no fault while it holds locks
    assert plat.read_u64(PhysAddr(CORE_SLOT)) & PXN
    assert hv.state.pages.usage_of(MOD_PA >> 12) is Usage.NONE
    assert [r.rule for r in hv.refusals] == ["mod-mismatch"]
    assert hv.refusals[0].values["va"] == CORE_VA + 0x20
    _exec(hv, plat, cpu, INIT_SLOT)  # its init text: kept PXN, no second refusal
    assert plat.read_u64(PhysAddr(INIT_SLOT)) & PXN and len(hv.refusals) == 1
    assert hv.protection_summary()["modules_refused"] == 1 and not hv.internal_errors


def test_no_authority_is_a_named_refusal_quirk(debian: fx.FixtureSet) -> None:
    """A run given no module authority (bench apps built its hypervisor without one) used to
    keep PXN silently: the guest's modules oopsed with no refusal to explain it."""
    hv, plat, cpu, _lay = _loaded(debian)
    hv.modules = None
    _exec(hv, plat, cpu, CORE_SLOT)
    _exec(hv, plat, cpu, CORE_SLOT + 8)  # the next text page joins the same refused record
    assert plat.read_u64(PhysAddr(CORE_SLOT)) & PXN and plat.read_u64(PhysAddr(CORE_SLOT + 8)) & PXN
    assert [r.rule for r in hv.refusals] == ["mod-unknown"]
    assert "no module authority" in hv.refusals[0].reason
    assert hv.protection_summary()["modules_refused"] == 1 and not hv.internal_errors


def test_unsigned_candidate_refused(debian: fx.FixtureSet) -> None:
    body, sig = linux_sig.split_appended_signature(debian.modules["libcrc32c"].read_bytes())
    assert sig is not None
    hv, plat, cpu, _lay = _loaded(debian, body)
    _exec(hv, plat, cpu, CORE_SLOT)
    assert plat.read_u64(PhysAddr(CORE_SLOT)) & PXN
    assert [r.rule for r in hv.refusals] == ["mod-unsigned"] and not hv.internal_errors


def test_signature_from_an_untrusted_key_refused(debian: fx.FixtureSet) -> None:
    from secvma.linux.guestbuild import signing_key

    key, cert, _ = signing_key()
    body, _sig = linux_sig.split_appended_signature(debian.modules["libcrc32c"].read_bytes())
    hv, plat, cpu, _lay = _loaded(debian, linux_sig.sign_appended(body, key, cert))
    _exec(hv, plat, cpu, CORE_SLOT)
    assert [r.rule for r in hv.refusals] == ["mod-bad-signature"]
    assert plat.read_u64(PhysAddr(CORE_SLOT)) & PXN


def test_text_released_when_its_pte_is_cleared(debian: fx.FixtureSet) -> None:
    hv, plat, cpu, _lay = _loaded(debian)
    _exec(hv, plat, cpu, CORE_SLOT)
    _exec(hv, plat, cpu, INIT_SLOT)
    _store(hv, plat, cpu, INIT_SLOT, 0)  # do_free_init
    assert hv.state.pages.usage_of((MOD_PA + 0x1_0000) >> 12) is Usage.NONE
    assert hv.mod_records[0].init is None and hv.mod_records[0].state == "authenticated"
    _store(hv, plat, cpu, CORE_SLOT, 0)  # delete_module: vfree
    assert hv.state.pages.usage_of(MOD_PA >> 12) is Usage.NONE
    assert hv.mod_records[0].state == "released" and not hv._module_exports()
    assert hv.stats["module_pages_released"] == 2 and not hv.refusals


def test_executable_alias_of_module_text_gets_pxn(debian: fx.FixtureSet) -> None:
    hv, plat, cpu, _lay = _loaded(debian)
    _exec(hv, plat, cpu, CORE_SLOT)
    alias = PTE + 8 * 100
    _store(hv, plat, cpu, alias, MOD_PA | DESC | AP_RO)  # a second, executable mapping
    assert plat.read_u64(PhysAddr(alias)) & PXN and hv.stats["mod_alias_pxn"] == 1
    _store(hv, plat, cpu, alias, 0)  # unmapping the alias does not release the text
    assert hv.state.pages.usage_of(MOD_PA >> 12) is Usage.EL1_MOD_TXT


def test_hostile_struct_module_refused_never_raises(debian: fx.FixtureSet) -> None:
    hv, plat, cpu, _lay = _loaded(debian, struct_ok=False)
    _exec(hv, plat, cpu, CORE_SLOT)
    assert [r.rule for r in hv.refusals] == ["mod-unknown"] and not hv.internal_errors
    assert plat.read_u64(PhysAddr(CORE_SLOT)) & PXN


def test_identify_hostile_reads(debian: fx.FixtureSet) -> None:
    auth = _authority(debian, debian.modules["libcrc32c"].read_bytes())
    cand = auth.candidates[0]
    name = cand.this_module + 24
    for read in (lambda va, n: None, lambda va, n: b"\xff" * n,
                 lambda va, n: (b"libcrc32c\0" + bytes(n))[:n] if va == CORE_VA + name
                 else bytes(n)):
        got = auth.identify(CORE_VA, read)
        assert not isinstance(got, tuple) and got.rule in ("mod-unknown", "mod-layout")
    assert not isinstance(auth.identify(CORE_VA + 4, lambda va, n: bytes(n)), tuple)


def test_patch_site_words() -> None:
    auth = ModuleAuthority([], [], {}, [(KIMAGE_VADDR, KIMAGE_VADDR + 0x10_0000)])
    site, bl, tramp = 0xFFFF_8000_0100_0000, 0xFFFF_8000_0100_0104, 0xFFFF_8000_0100_0200
    sites = ModSites(words={site: frozenset({NOP, 0x1400_0004})}, bl_slots={bl},
                     plt_slots={tramp, tramp + 12})
    assert auth.word_allowed(site, NOP, sites) and auth.word_allowed(site, 0x1400_0004, sites)
    assert not auth.word_allowed(site, 0x1400_0008, sites)
    assert not auth.word_allowed(site + 4, NOP, sites)
    delta = (KIMAGE_VADDR + 0x40 - bl) >> 2
    assert auth.word_allowed(bl, 0x9400_0000 | (delta & 0x3FF_FFFF), sites)  # BL into text
    assert not auth.word_allowed(bl, 0x9400_0001, sites)  # BL to module memory
    assert auth.word_allowed(bl, 0x9400_0000 | ((tramp - bl) >> 2), sites, [tramp])
    assert not auth.word_allowed(bl, MOV_X9_X30, sites)
    good = plt_entry(12, tramp, KIMAGE_VADDR + 0x80)
    bad = plt_entry(12, tramp, 0xFFFF_8000_0200_0000)
    assert auth.plt_to_text(tramp, good) and auth.plt_to_text(tramp, bytes(12))
    assert not auth.plt_to_text(tramp, bad) and not auth.plt_to_text(tramp, b"\x01" * 12)
    base = tramp - 0x200
    exp = bytes(0x220)
    live = bytearray(exp)
    live[0x200:0x20C] = good
    assert auth.compare(base, exp, bytes(live), sites) == []
    live[0x20C:0x218] = bad
    assert [v for v, _l, _e in auth.compare(base, exp, bytes(live), sites)] == \
        [tramp + 12, tramp + 16, tramp + 20]


def test_exports_ignore_a_stray_word_naming_an_export() -> None:
    """A word before `__ksymtab` whose PC-relative target is a name is not an entry (seen on
    Debian: `cpu_number` got a wrong address and xfs's per-CPU accesses mismatched)."""
    img, names, _table = _synthetic_ksymtab()
    stray = 0x8000
    struct.pack_into("<ii", img, stray, 0x4444 - stray, _name_va(img, "sym003") - (stray + 4))
    sv = {n: SymversEntry(0, n, "vmlinux", ExportKind.PLAIN, "") for n in names}
    got = image_exports(bytes(img), sv)
    assert set(got) == set(names)
    assert got["sym003"].address == KIMAGE_VADDR + 0x100 + 24


def test_exports_from_the_long_table_not_a_short_array_quirk() -> None:
    """Debian's Image holds a 2-entry array of 12-byte PC-relative records naming
    `__cpuhp_state_add_instance` (value in .rodata), while the real entry names a copy of the
    string outside the densest string region: the short array won, virtio_net's PLT pointed
    17 MiB away from the kernel's and the module was refused (`mod-mismatch`)."""
    img, names, table = _synthetic_ksymtab()
    far = 0x2F000  # a second copy of sym010's name, outside the dense region
    img[far - 1:far + 7] = b"\0sym010\0"
    e = table + 12 * 10
    struct.pack_into("<i", img, e + 4, far - (e + 4))
    arr = 0x9000  # two records, 12 bytes apart, naming sym010 and sym011 in the dense region
    for j, n in enumerate(("sym010", "sym011")):
        r = arr + 12 * j
        struct.pack_into("<iii", img, r, 0x7770 - r, _name_va(img, n) - (r + 4), 0)
    sv = {n: SymversEntry(0, n, "vmlinux", ExportKind.PLAIN, "") for n in names}
    got = image_exports(bytes(img), sv)
    assert set(got) == set(names)
    assert got["sym010"].address == KIMAGE_VADDR + 0x100 + 8 * 10
    assert got["sym011"].address == KIMAGE_VADDR + 0x100 + 8 * 11


def test_debian_export_of_cpuhp_state_add_instance_is_in_text(debian: fx.FixtureSet) -> None:
    """The Debian Image's value for the quirk above: the function's entry in kernel text."""
    from secvma.linux.trust import kernel_exports

    img = debian.kernel_image.read_bytes()
    ex = kernel_exports(img, debian)
    addr = ex["__cpuhp_state_add_instance"].address - KIMAGE_VADDR
    assert addr == 0x97B80  # in .text (the short array's value was 0x1175ea8, in .rodata)
    assert img[addr:addr + 4] != bytes(4)


def _synthetic_ksymtab(n: int = 80) -> tuple[bytearray, list[str], int]:
    """An Image with a sorted 12-byte `__ksymtab` of `n` entries at 0x10000 (values at
    KIMAGE_VADDR + 0x100 + 8k) and its strings at 0x20000."""
    names = [f"sym{i:03d}" for i in range(n)]
    strings = b"\0" + b"\0".join(x.encode() for x in names) + b"\0"
    img = bytearray(0x30000)
    img[0x20000:0x20000 + len(strings)] = strings
    table = 0x1_0000
    for k, x in enumerate(names):
        e = table + 12 * k
        struct.pack_into("<iii", img, e, 0x100 + 8 * k - e, _name_va(img, x) - (e + 4), 0)
    return img, names, table


def _name_va(img: bytearray, name: str) -> int:
    return bytes(img).index(b"\0" + name.encode() + b"\0", 0x20000) + 1


def test_kpcore_imports_nothing_from_testbed() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "secvma" / "kpcore"
    bad = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name}: {m}" for m in mods if m.startswith("secvma.testbed")]
    assert not bad, bad


@pytest.mark.parametrize("name", ["xfs", "virtio_crypto"])
def test_debian_modules_link_against_the_image_exports(debian: fx.FixtureSet, name: str) -> None:
    """Every import of the fixture modules resolves against the Image's own export table."""
    from secvma.linux.trust import module_authority

    auth = module_authority(debian.kernel_image.read_bytes(), fx=debian)
    by = {c.name: c for c in auth.candidates}
    loaded: list[Export] = []
    for dep in ("crc32c_generic", "libcrc32c", "crypto_engine"):
        got = auth.link(by[dep], KVA + 0x100_0000, KVA + 0x180_0000, loaded)
        assert isinstance(got, tuple), got
        loaded += got[2]
    got = auth.link(by[name], KVA + 0x200_0000, KVA + 0x300_0000, loaded)
    assert isinstance(got, tuple), got
    _ = image_exports  # the exports come from the Image (kexports), not from Module.symvers


EXT4_CHAIN = ("lib/crc16.ko", "fs/mbcache.ko", "fs/jbd2/jbd2.ko", "fs/ext4/ext4.ko")


def test_struct_module_offsets_from_the_image_btf(debian: fx.FixtureSet) -> None:
    from secvma.kpcore.modauth import NAME_OFF
    from secvma.linux.trust import module_struct

    off = module_struct(debian.kernel_image.read_bytes())
    assert off["name"] == NAME_OFF and off["core_layout"] == 0x140
    assert off["percpu_size"] == off["percpu"] + 8 and off["percpu"] > off["init_layout"]


def test_module_with_per_cpu_data_links_at_the_kernels_per_cpu_area_quirk(
        debian: fx.FixtureSet) -> None:
    """ext4 (the apps guest's root filesystem) has `.data..percpu`: relocated as if its
    per-CPU area sat at 0, its ADRPs overflowed and ext4 was refused (`mod-link`). The base
    is read from `struct module` at the offset the Image's BTF gives."""
    from secvma.linux.trust import module_authority
    from secvma.machine.initramfs import debian_module_files

    img = debian.kernel_image.read_bytes()
    auth = module_authority(img, fx=debian, modules=debian_module_files(EXT4_CHAIN))
    by = {c.name: c for c in auth.candidates}
    loaded: list[Export] = []
    for k, dep in enumerate(("crc16", "mbcache", "jbd2")):
        got = auth.link(by[dep], KVA + 0x100_0000 * (k + 1), KVA + 0x80_0000 * (k + 9), loaded)
        assert isinstance(got, tuple), got
        loaded += got[2]
    ext4 = by["ext4"]
    percpu = KVA + 0x20_0000  # within reach, as the kernel's reserved per-CPU chunk is
    at_zero = auth.link(ext4, KVA + 0x800_0000, KVA + 0x900_0000, loaded)
    assert isinstance(at_zero, Verdict) and at_zero.rule == "mod-link", at_zero
    assert isinstance(auth.link(ext4, KVA + 0x800_0000, KVA + 0x900_0000, loaded, percpu), tuple)

    assert ext4.view is not None
    size = ext4.view.sections[ext4.view.percpu_index].size
    off = auth.module_struct["percpu"]
    mem = {KVA + 0x800_0000 + ext4.this_module + off: struct.pack("<QI", percpu, size)}

    def read(va: int, n: int) -> bytes | None:
        return mem.get(va, b"")[:n] or None

    assert auth.percpu_base(ext4, KVA + 0x800_0000, read) == percpu
    mem[KVA + 0x800_0000 + ext4.this_module + off] = struct.pack("<QI", percpu, size + 8)
    bad = auth.percpu_base(ext4, KVA + 0x800_0000, read)
    assert isinstance(bad, Verdict) and bad.rule == "mod-layout"
    assert auth.percpu_base(by["crc16"], KVA, read) == 0  # no per-CPU data: nothing read
    auth.module_struct = {}
    blind = auth.percpu_base(ext4, KVA + 0x800_0000, read)
    assert isinstance(blind, Verdict) and "BTF" in blind.reason


def test_btf_parser_refuses_malformed_blobs(debian: fx.FixtureSet) -> None:
    from secvma.kpcore import kbtf

    img = debian.kernel_image.read_bytes()
    at = kbtf.find_blob(img)
    hdr = kbtf.HEADER.unpack_from(img, at)
    blob = bytearray(img[at:at + hdr[3] + hdr[6] + hdr[7]])
    assert kbtf.parse(bytes(blob), 0).offsets("module")["name"] == 24
    with pytest.raises(kbtf.BtfError):
        kbtf.parse(bytes(blob[:hdr[3] + 100]), 0)  # tables cut short
    with pytest.raises(kbtf.BtfError):
        kbtf.find_blob(b"\0" * 4096)
    bad = bytearray(blob)
    struct.pack_into("<I", bad, hdr[3] + 4, 0x1F << 24)  # first type: kind 31
    with pytest.raises(kbtf.BtfError):
        kbtf.parse(bytes(bad), 0)


def test_invariants_hold_for_module_text_then_catch_a_changed_word(debian: fx.FixtureSet) -> None:
    from secvma.kpcore.tinvariants import check

    hv, plat, cpu, _lay = _loaded(debian)
    _exec(hv, plat, cpu, CORE_SLOT)
    _exec(hv, plat, cpu, INIT_SLOT)
    assert check(hv, plat, full=True) == []
    plat.write(PhysAddr(MOD_PA + 0x40), NOP.to_bytes(4, "little"))  # behind stage 2's back
    assert [v.inv for v in check(hv, plat, full=True)] == ["T-MOD"]
