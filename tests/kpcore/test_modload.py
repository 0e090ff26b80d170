"""The in-hypervisor module loader (HVC 30/31/32) on the fake machine, both policies.

The fake kernel (`modfakes.FakeModuleKernel`) lays modules out as guest/testbed/kernel/module.c
does and maps its runs through trapped PTE stores; invariants are checked after every trap.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import PXN, TEXT, FakeMachine, kva, slot_of
from modfakes import (
    FakeModuleKernel,
    KernelModule,
    boot_with_exports,
    build_modules,
    fake_keys,
)

from secvma.hvabi import HVC_INVALID
from secvma.kpcore import KPCore, ModuleKeys
from secvma.kpcore.modload import ModArgs, ModuleLoad, WrongStage
from secvma.kpcore.pages import Usage
from secvma.kpcore.refusal import Outcome
from secvma.kpcore.stage2 import PermKind, kind_of
from secvma.platform import PhysAddr

INIT_MOD = '''#include "module.h"
MODULE_NAME("initmod");
static int triple(int x) { return 3 * x; }
__attribute__((section(".init.text"))) int init_module(void)
{ module_report(3, (u64)triple(14)); return 0; }
void cleanup_module(void) { module_report(3, 0x0e1d); }
'''


@pytest.fixture(scope="session")
def mods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from secvma.machine.build import build_dir

    return build_modules(build_dir() / "kpcore-modtest", extra={"mod_init": INIT_MOD})


@pytest.fixture(scope="session")
def keys(mods: dict[str, bytes]) -> ModuleKeys:
    return fake_keys(mods)


def setup(policy: str, keys: ModuleKeys | None) -> tuple[FakeMachine, KPCore, FakeModuleKernel]:
    m, hv = boot_with_exports(policy, keys)
    return m, hv, FakeModuleKernel(m)


def state(hv: KPCore) -> tuple[bytes, bytes, bytes]:
    p = hv.state.pages
    return bytes(p.usage), bytes(p.owner), p.subcount.tobytes()


def s2_kind(hv: KPCore, pa: int) -> PermKind | None:
    hit = hv.state.s2.leaf(pa)
    return kind_of(hit[2]) if hit is not None else None


def clean(hv: KPCore, m: FakeMachine) -> None:
    assert not hv.internal_errors, hv.internal_errors
    assert not hv.check_invariants(m.plat, full=True)
    assert not hv.invariant_violations, [str(v) for v in hv.invariant_violations[:3]]


def refused(hv: KPCore, km: KernelModule, rule: str) -> None:
    assert km.modid == HVC_INVALID, hex(km.modid)
    assert hv.refusals and hv.refusals[-1].rule == rule, [str(r) for r in hv.refusals]
    assert hv.refusals[-1].outcome is Outcome.REFUSED


def _unwind_refused(m: FakeMachine, hv: KPCore, k: FakeModuleKernel, km: KernelModule,
                    before: tuple[bytes, bytes, bytes]) -> None:
    """After a refused load: no module pages; the kernel frees its runs; the state is as before."""
    no_module_pages(hv)
    k.free_tmp(km)
    for run, pool in ((km.text, 0), (km.ro, 1), (km.data, 2)):
        k.unmap_run(pool, run)
    assert state(hv) == before
    clean(hv, m)


def no_module_pages(hv: KPCore) -> None:
    pages = hv.state.pages
    for u in (Usage.EL1_AUTH, Usage.EL1_MOD_TXT, Usage.EL1_MOD_RO):
        assert not pages.pages_of(u), u


# --- loading and unloading -------------------------------------------------------------------


def test_load_then_unload_restores_page_usage_table(any_policy: str, keys: ModuleKeys,
                                                    mods: dict[str, bytes]) -> None:
    """A load/unload cycle leaves owner, class and subcount of every page as before."""
    m, hv, k = setup(any_policy, keys)
    for name in ("mod_counter", "mod_hello", "mod_init"):  # first cycle links PTE tables
        km = k.load(mods[name])
        assert km.modid != HVC_INVALID, [str(r) for r in hv.refusals]
        k.free_tmp(km)
        k.unload(km)
    before = state(hv)
    for name in ("mod_counter", "mod_hello", "mod_init"):
        km = k.load(mods[name])
        k.free_tmp(km)
        assert state(hv) != before
        assert k.unload(km) == (0, 0)
    assert state(hv) == before
    assert not hv.refusals and not hv.state.mod.loaded
    clean(hv, m)


def test_loaded_text_is_verified_executable_and_read_only(any_policy: str, keys: ModuleKeys,
                                                         mods: dict[str, bytes]) -> None:
    """Text pages: MOD_txt, stage 2 RO+X, PTE PXN clear; the image is back to NONE."""
    m, hv, k = setup(any_policy, keys)
    km = k.load(mods["mod_hello"])
    assert km.modid == 0
    pages = hv.state.pages
    assert pages.usage_of(km.text.pa >> 12) is Usage.EL1_MOD_TXT
    assert s2_kind(hv, km.text.pa) is PermKind.KCODE
    assert not m.plat.read_u64(PhysAddr(slot_of(m, km.text.va, 3))) & PXN
    assert pages.usage_of(km.ro.pa >> 12) is Usage.EL1_MOD_RO
    assert pages.usage_of(km.tmp.pa >> 12) is Usage.NONE
    mod = hv.state.mod.loaded[0]
    assert mod.name == "hello" and mod.text == {km.text.va: km.text.pa}
    clean(hv, m)


def test_mod_ro_is_read_only_at_stage_2(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """hardened (gap 15): MOD_ro pages are read-only at stage 2 and freed at HVC 31."""
    m, hv, k = setup("hardened", keys)
    km = k.load(mods["mod_hello"])
    assert s2_kind(hv, km.ro.pa) is PermKind.RO
    k.free_tmp(km)
    k.unload(km)
    assert hv.state.pages.usage_of(km.ro.pa >> 12) is Usage.NONE
    clean(hv, m)


def test_mod_ro_writable_quirk(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """secvma2024 (gap 15): MOD_ro is RW at stage 2 and HVC 31 leaves it MOD_ro (§7.5)."""
    m, hv, k = setup("secvma2024", keys)
    km = k.load(mods["mod_hello"])
    assert s2_kind(hv, km.ro.pa) is PermKind.KERNEL
    assert m.hvc(31, km.modid) == 0
    assert hv.state.pages.usage_of(km.ro.pa >> 12) is Usage.EL1_MOD_RO
    k.unmap_run(1, km.ro)  # the kernel's unmap releases it (spec §3.4, gap 17)
    assert hv.state.pages.usage_of(km.ro.pa >> 12) is Usage.NONE
    clean(hv, m)


def test_init_free_releases_init_text(any_policy: str, keys: ModuleKeys,
                                      mods: dict[str, bytes]) -> None:
    """HVC 32: init-only text pages get PXN back and return to NONE, core text stays."""
    m, hv, k = setup(any_policy, keys)
    km = k.load(mods["mod_init"])
    init_va = km.arch.init_text_va
    init_pa = km.text.pa + (init_va - km.text.va)
    assert hv.state.pages.usage_of(init_pa >> 12) is Usage.EL1_MOD_TXT
    assert m.hvc(32, km.modid) == 0
    assert hv.state.pages.usage_of(init_pa >> 12) is Usage.NONE
    assert m.plat.read(PhysAddr(init_pa), 4096) == bytes(4096)
    assert m.plat.read_u64(PhysAddr(slot_of(m, init_va, 3))) & PXN
    assert hv.state.pages.usage_of(km.text.pa >> 12) is Usage.EL1_MOD_TXT
    clean(hv, m)


def test_module_links_against_another_modules_exports(any_policy: str, keys: ModuleKeys,
                                                      mods: dict[str, bytes]) -> None:
    """`user` imports counter_add/counter_get from `counter` (hypervisor-held exports)."""
    m, hv, k = setup(any_policy, keys)
    counter = k.load(mods["mod_counter"])
    user = k.load(mods["mod_user"])
    assert user.modid == 1, [str(r) for r in hv.refusals]
    exports = {e.name: e.address for e in hv.state.mod.loaded[0].exports}
    assert set(exports) == {"counter_add", "counter_get"}
    assert all(counter.text.va <= a < counter.text.va + 4096 for a in exports.values())
    assert hv.state.mod.loaded[1].imports_from == {"counter"}
    clean(hv, m)


def test_exporter_in_use_cannot_be_freed(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """hardened: HVC 31 of a module whose exports a loaded module uses is refused (EBUSY)."""
    m, hv, k = setup("hardened", keys)
    counter = k.load(mods["mod_counter"])
    user = k.load(mods["mod_user"])
    assert m.hvc(31, counter.modid) == HVC_INVALID and hv.refusals[-1].rule == "mfree-busy"
    assert m.hvc(32, user.modid) == 0 and m.hvc(31, user.modid) == 0
    assert m.hvc(32, counter.modid) == 0 and m.hvc(31, counter.modid) == 0
    clean(hv, m)


# --- refusals ----------------------------------------------------------------------------------


def _flip_text_byte(ko: bytes) -> bytes:
    from secvma.module.elf import ElfModule

    elf = ElfModule(ko)
    text = elf.section_by_name(".text")
    assert text is not None
    data = bytearray(ko)
    data[text.offset + 8] ^= 0x40
    return bytes(data)


@pytest.mark.parametrize("case", ["modified", "other-key", "unknown-name", "no-keys"])
def test_unauthenticated_module_refused_and_nothing_changes(
        any_policy: str, case: str, keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """Changed bytes, another key, an unknown name, no table: refused, state untouched."""
    table: ModuleKeys | None = keys
    ko = mods["mod_hello"]
    if case == "modified":
        ko = _flip_text_byte(ko)
    elif case == "other-key":
        table = fake_keys(mods, Ed25519PrivateKey.generate())
        table = ModuleKeys(Ed25519PrivateKey.generate().public_key(), table.signatures)
    elif case == "unknown-name":
        table = ModuleKeys(keys.public_key, {n: s for n, s in keys.signatures.items()
                                             if n != "hello"})
    elif case == "no-keys":
        table = None
    m, hv, k = setup(any_policy, table)
    k.map_run(0, 1)  # link the module window's PTE table first
    before = state(hv)
    km = k.load(ko)
    want = {"modified": "mload-signature", "other-key": "mload-signature",
            "unknown-name": "mload-unknown-name", "no-keys": "mload-no-keys"}[case]
    refused(hv, km, want)
    if case == "no-keys":
        assert "no module signature table configured" in hv.refusals[-1].reason
    _unwind_refused(m, hv, k, km, before)


def test_missing_import_refused(any_policy: str, keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """`user` without `counter` loaded: unresolved counter_* symbols, refused, no residue."""
    m, hv, k = setup(any_policy, keys)
    km = k.load(mods["mod_user"])
    refused(hv, km, "mload-symbol")
    assert "counter_" in hv.refusals[-1].reason
    no_module_pages(hv)
    clean(hv, m)


def test_kernel_write_to_module_text_refused(any_policy: str, keys: ModuleKeys,
                                            mods: dict[str, bytes]) -> None:
    """A store to loaded module text: hardened injects an abort, secvma2024 panics (§7.5)."""
    m, hv, k = setup(any_policy, keys)
    km = k.load(mods["mod_hello"])
    before = m.plat.read(PhysAddr(km.text.pa), 4096)
    r = m.store(km.text.va, 0xD503201F, width=4)  # a NOP over the first instruction
    assert not r.done
    assert hv.refusals[-1].rule == "module-store"
    if any_policy == "hardened":
        assert r.injected is not None and hv.refusals[-1].outcome is Outcome.REFUSED
        assert m.store(km.text.va, 0).injected is not None  # zero stores too (INV-MOD)
    else:
        assert hv.refusals[-1].outcome is Outcome.PANIC and m.plat.halted
    assert m.plat.read(PhysAddr(km.text.pa), 4096) == before


def test_prefix_name_match_quirk(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """secvma2024 (gap 6): `hello` loads with the entry `hello_v2`; hardened: exact names."""
    table = ModuleKeys(keys.public_key, {"hello_v2": keys.signatures["hello"]})
    for policy, ok in (("secvma2024", True), ("hardened", False)):
        m, hv, k = setup(policy, table)
        km = k.load(mods["mod_hello"])
        if ok:
            assert km.modid == 0, [str(r) for r in hv.refusals]
        else:
            refused(hv, km, "mload-unknown-name")
        clean(hv, m)


def _redirect_data(km: KernelModule, target_va: int, m: FakeMachine) -> None:
    """The kernel points `.data`'s sh_addr elsewhere in the image headers (not signed)."""
    from secvma.module.elf import ElfModule

    elf = ElfModule(km.image)
    data = elf.section_by_name(".data")
    assert data is not None
    hdr = bytearray(km.image)
    struct.pack_into("<Q", hdr, elf.e_shoff + 64 * data.index + 16, target_va)
    km.image = bytes(hdr)
    m.plat.write(PhysAddr(km.tmp.pa), km.image)


def test_relocation_into_kernel_text_refused(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """hardened (gap 3): a data section placed on kernel text is refused, nothing written."""
    m, hv, k = setup("hardened", keys)
    target = kva(TEXT + 0x2000)
    before = m.plat.read(PhysAddr(TEXT + 0x2000), 4096)
    km = k.load(mods["mod_hello"], tamper=lambda km: _redirect_data(km, target, m))
    refused(hv, km, "mload-placement")
    assert m.plat.read(PhysAddr(TEXT + 0x2000), 4096) == before
    no_module_pages(hv)
    clean(hv, m)


def test_relocation_into_kernel_text_quirk(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """secvma2024 (gap 3): EL2 writes a data relocation wherever sh_addr says: kernel text."""
    m, hv, k = setup("secvma2024", keys)
    target = kva(TEXT + 0x2000)
    km = k.load(mods["mod_hello"], tamper=lambda km: _redirect_data(km, target, m))
    assert km.modid == 0
    assert m.plat.read_u64(PhysAddr(TEXT + 0x2000)) >> 48 == 0xFFFF  # a pointer, in KCODE
    assert hv.state.pages.usage_of((TEXT + 0x2000) >> 12) is Usage.EL1_KCODE


def test_long_checklist_refused_or_panics_quirk(any_policy: str, keys: ModuleKeys,
                                                mods: dict[str, bytes]) -> None:
    """n > 100: hardened refuses (EINVAL); secvma2024 overflows secinfo[100]: panic (gap 7)."""
    m, hv, k = setup(any_policy, keys)

    def long_list(km: KernelModule) -> None:
        km.check = (km.check * 40)[:101]

    km = k.load(mods["mod_hello"], tamper=long_list)
    assert hv.refusals[-1].rule == "mload-args"
    if any_policy == "hardened":
        assert km.modid == HVC_INVALID and hv.refusals[-1].outcome is Outcome.REFUSED
    else:
        assert hv.refusals[-1].outcome is Outcome.PANIC and m.plat.halted
    no_module_pages(hv)


def test_unsigned_relocation_of_verified_text_refused(keys: ModuleKeys,
                                                      mods: dict[str, bytes]) -> None:
    """hardened: `.rela.data` retargeted at `.text` (sh_info is not signed) is refused."""
    from secvma.module.elf import ElfModule

    m, hv, k = setup("hardened", keys)

    def retarget(km: KernelModule) -> None:
        elf = ElfModule(km.image)
        rela = elf.section_by_name(".rela.data")
        text = elf.section_by_name(".text")
        assert rela is not None and text is not None
        hdr = bytearray(km.image)
        struct.pack_into("<I", hdr, elf.e_shoff + 64 * rela.index + 44, text.index)
        km.image = bytes(hdr)
        m.plat.write(PhysAddr(km.tmp.pa), km.image)

    km = k.load(mods["mod_hello"], tamper=retarget)
    refused(hv, km, "mload-reloc")
    no_module_pages(hv)
    clean(hv, m)


def test_pointer_into_hypervisor_memory_refused(keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """hardened (gap 3): a checklist pointer that translates into EL2 memory is refused."""
    from fakes import RAM_BASE, map_vmalloc

    m, hv, k = setup("hardened", keys)
    km = k.load(mods["mod_hello"])
    assert km.modid == 0
    el2_va = k.va_next + 0x10_0000
    map_vmalloc(m, el2_va, RAM_BASE + 0x1000)  # the kernel may map EL2 memory at stage 1
    r = m.hvc(30, km.hdr_va, 0, km.aux_va + 0x800, el2_va, 3)
    assert r == HVC_INVALID and hv.refusals[-1].rule == "mload-pointer"
    assert "hypervisor memory" in hv.refusals[-1].reason


def test_stages_run_in_order(keys: ModuleKeys) -> None:
    """ModuleLoad: a stage before its predecessor raises WrongStage."""
    m, hv, _k = setup("hardened", keys)
    load = ModuleLoad(hv.state, m.plat, m.cpu, ModArgs(0, 0, 0, 0, 1))
    calls: list[Callable[[], object]] = [load.verify, load.relocate, load.stage_text,
                                         load.map_text]
    for call in calls:
        with pytest.raises(WrongStage):
            call()


def test_data_relocation_through_alias_of_verified_text_refused(keys: ModuleKeys,
                                                               mods: dict[str, bytes]) -> None:
    """hardened: a data page the kernel maps onto a verified text page is refused, text intact."""
    from fakes import lva, page_desc

    from secvma.module.elf import ElfModule

    m, hv, k = setup("hardened", keys)
    planted = b"\x00\x00\x20\xd4" * 16  # brk #0: bytes the signer never saw

    def alias(km: KernelModule) -> None:
        data = ElfModule(km.image).section_by_name(".data")
        assert data is not None
        va = km.addrs[data.index]
        slot = slot_of(m, va & ~0xFFF, 3)
        assert m.store(lva(slot), 0).done
        assert m.store(lva(slot), page_desc(km.text.pa)).done
        m.plat.write(PhysAddr(km.text.pa + (va & 0xFFF)), planted)

    km = k.load(mods["mod_hello"], tamper=alias)
    refused(hv, km, "mload-placement")
    no_module_pages(hv)
    clean(hv, m)


def test_free_revokes_exec_alias_after_own_mapping_removed(keys: ModuleKeys,
                                                          mods: dict[str, bytes]) -> None:
    """hardened: HVC 31 sets PXN on a kernel alias of module text even when its own PTE is gone."""
    from fakes import VMALLOC, lva, map_vmalloc

    m, hv, k = setup("hardened", keys)
    km = k.load(mods["mod_hello"])
    assert km.modid == 0
    k.free_tmp(km)
    assert m.store(lva(slot_of(m, km.text.va, 3)), 0).done  # the module's own PTE
    _t, alias = map_vmalloc(m, VMALLOC, km.text.pa, pxn=False)
    assert not m.plat.read_u64(PhysAddr(alias)) & PXN  # allowed while the page is MOD_txt
    assert m.hvc(31, km.modid) == 0
    assert hv.state.pages.usage_of(km.text.pa >> 12) is Usage.NONE
    assert m.plat.read_u64(PhysAddr(alias)) & PXN
    clean(hv, m)


# --- a loader bug is an internal error, never the guest's fault --------------------------------


def test_a_loader_bug_is_an_internal_error_not_a_guest_refusal(
        any_policy: str, keys: ModuleKeys, mods: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception from the loader's own code (here a KeyError in relocate) halts the machine
    through the core's internal-error path, after the load was rolled back; it is not turned
    into a refusal that blames the guest's module."""
    m, hv, k = setup(any_policy, keys)

    def buggy(self: ModuleLoad) -> None:
        raise KeyError("model bug")

    monkeypatch.setattr(ModuleLoad, "relocate", buggy)
    k.load(mods["mod_hello"])
    assert [e.error for e in hv.internal_errors] == ["KeyError('model bug')"]
    assert m.plat.halted
    assert not any(r.rule.startswith("mload") for r in hv.refusals), [str(r) for r in hv.refusals]
    no_module_pages(hv)  # the frozen image pages were given back before the halt
    assert not hv.state.mod.loaded


def test_a_non_ascii_kernel_export_name_is_refused_where_it_is_read(
        any_policy: str, keys: ModuleKeys, mods: dict[str, bytes]) -> None:
    """A byte >= 0x80 in an export name of the kernel's ksymtab: `mload-ksymtab`, no error."""
    from modfakes import KSTRINGS

    m, hv, k = setup(any_policy, keys)
    m.plat.write(PhysAddr(KSTRINGS + 1), b"\xe9")
    km = k.load(mods["mod_hello"])
    refused(hv, km, "mload-ksymtab")
    assert "ASCII" in hv.refusals[-1].reason
    no_module_pages(hv)
    clean(hv, m)


def test_module_builds_fail_on_breakage_and_skip_only_without_the_tools(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing module source is an error (it used to skip 33 tests as "cross compiler
    unavailable"); only an uninstalled cross gcc/ld skips."""
    if shutil.which("aarch64-linux-gnu-gcc") and shutil.which("aarch64-linux-gnu-ld"):
        with pytest.raises(FileNotFoundError, match="no_such_module"):
            build_modules(tmp_path, ("no_such_module",))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        build_modules(tmp_path, ("mod_hello",))


def test_hvc30_installs_in_a_second_trip_quirk(any_policy: str, keys: ModuleKeys,
                                              mods: dict[str, bytes]) -> None:
    """Issue 13, race-module-text: the trampoline invalidates the TLBs only after a trap is
    answered, so HVC 30 stages the verified text read-only (AUTH, not executable) and rewinds
    ELR; a store another CPU made through a stale TLB entry in between is undone by the second
    trip (`mload-stale-store` on record) before anything becomes executable."""
    m, hv, k = setup(any_policy, keys)
    trips: list[tuple[Usage, bytes]] = []

    def stale_store(_cpu: object) -> None:  # between the trips: CPU1's stale TLB entry
        km_text = hv.state.mod.staged
        assert km_text is not None and hv.state.mod.in_progress
        load = km_text[1]
        pa = next(iter(load.text.pages.values()))  # type: ignore[attr-defined]
        trips.append((hv.state.pages.usage_of(pa >> 12), m.plat.read(PhysAddr(pa), 4)))
        m.plat.write(PhysAddr(pa), b"\x1f\x20\x03\xd5")  # a NOP over the verified code

    m.hvc_hook = stale_store
    km = k.load(mods["mod_hello"])
    assert km.modid == 0 and len(trips) == 1
    assert trips[0][0] is Usage.EL1_AUTH  # staged: read-only, not executable yet
    assert m.plat.read(PhysAddr(km.text.pa), 4) == trips[0][1]  # the verified bytes again
    assert [r.rule for r in hv.refusals] == ["mload-stale-store"]
    assert hv.state.mod.staged is None and not hv.state.mod.in_progress
    assert hv.state.pages.usage_of(km.text.pa >> 12) is Usage.EL1_MOD_TXT
    clean(hv, m)


def test_verified_text_is_made_fetchable_while_it_cannot_run(any_policy: str, keys: ModuleKeys,
                                                             mods: dict[str, bytes]) -> None:
    """The machine's translations of whatever ran from the text pages before are dropped in
    trip 1 (`flush_code` over exactly the text run, the pages read-only and not executable);
    text a stale store changed is written and flushed again in trip 2."""
    m, hv, k = setup(any_policy, keys)
    seen: list[list[tuple[int, int]]] = []

    def between(_cpu: object) -> None:
        seen.append(list(m.plat.code_ranges))
        if len(seen) == 2:  # the second load: a stale store into its staged text
            staged = hv.state.mod.staged
            assert staged is not None
            pa = next(iter(staged[1].text.pages.values()))  # type: ignore[attr-defined]
            m.plat.write(PhysAddr(pa), b"\x1f\x20\x03\xd5")

    m.hvc_hook = between
    km = k.load(mods["mod_init"])
    text = (km.text.pa, km.text.pages * 4096)
    assert seen == [[text]] and m.plat.code_ranges == [text]  # nothing more in trip 2
    m.plat.code_ranges.clear()
    km2 = k.load(mods["mod_hello"])
    text2 = (km2.text.pa, km2.text.pages * 4096)
    assert m.plat.code_ranges == [text2, text2]  # trip 1, then again after the rewrite
    assert [r.rule for r in hv.refusals] == ["mload-stale-store"]
    clean(hv, m)


def test_text_in_more_runs_than_the_machine_syncs_is_refused(
        keys: ModuleKeys, mods: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """A resource limit, checked before anything is written: the state is untouched."""
    import secvma.kpcore.modload as modload

    monkeypatch.setattr(modload, "CODE_RANGES_MAX", 0)
    m, hv, k = setup("hardened", keys)
    k.map_run(0, 1)
    before = state(hv)
    km = k.load(mods["mod_hello"])
    refused(hv, km, "mload-placement")
    assert "physical runs" in hv.refusals[-1].reason and not m.plat.code_ranges
    _unwind_refused(m, hv, k, km, before)


def test_hvc30_from_another_cpu_while_staged_is_busy(keys: ModuleKeys,
                                                     mods: dict[str, bytes]) -> None:
    """Between the trips only the staging CPU may go on; a changed call starts over."""
    m, hv, k = setup("hardened", keys)
    other = type(m.cpu)(index=1)
    other.sysregs = dict(m.cpu.sysregs)  # booted like CPU 0 (VBAR in kernel text)
    seen: list[int] = []

    def meanwhile(_cpu: object) -> None:
        if not seen:
            seen.append(m.hvc(30, 0, 0, 0, 0, 1, cpu=other))
            assert hv.refusals[-1].rule == "mload-busy"

    m.hvc_hook = meanwhile
    km = k.load(mods["mod_hello"])
    assert km.modid == 0 and seen == [HVC_INVALID]
    assert [r.rule for r in hv.refusals] == ["mload-busy"]
    clean(hv, m)

    def changed(cpu: object) -> None:  # the kernel edits x5 between the trips
        if not seen[1:]:
            seen.append(1)
            cpu.regs[5] = 2  # type: ignore[attr-defined]

    m.hvc_hook = changed
    before = hv.state.mod.refused
    km2 = k.load(mods["mod_counter"])
    assert km2.modid == HVC_INVALID  # started over with n=2: the checklist no longer fits
    assert hv.state.mod.refused == before + 2 and hv.state.mod.staged is None
    clean(hv, m)
