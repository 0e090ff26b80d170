"""Fuzzing HVC 30's arguments: pointers, n, checklist contents, header bytes, mod_arch.

Whatever the guest passes, no exception escapes the hypervisor (no internal error, no halt
outside secvma2024's gap-7 panic) and a refused load leaves no state behind: the page-usage
table equals the one before the call and the invariants hold.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from fakes import RAM_BASE, TEXT, FakeMachine, kva, map_vmalloc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from modfakes import FakeModuleKernel, KernelModule, boot_with_exports, build_modules, fake_keys

from secvma.hvabi import HVC_INVALID
from secvma.kpcore import KPCore
from secvma.platform import PhysAddr


class Rig:
    """A booted fake machine with `mod_hello` staged by the kernel but not loaded."""

    def __init__(self, policy: str, mods: dict[str, bytes]) -> None:
        self.policy = policy
        self.m, self.hv = boot_with_exports(policy, fake_keys(mods), check_invariants=False)
        k = FakeModuleKernel(self.m)

        def no_call(km: KernelModule) -> None:
            km.check = []  # n = 0: refused before anything is touched

        self.km = k.load(mods["mod_hello"], tamper=no_call)
        self.km.check = list(k.prepare(mods["mod_hello"])[1])
        self.aux_pa = self.km.aux_va - self.km.data.va + self.km.data.pa
        self.m.plat.write(PhysAddr(self.aux_pa),
                          struct.pack(f"<{len(self.km.check)}I", *self.km.check))
        self.el2_va = k.va_next + 0x10_0000
        map_vmalloc(self.m, self.el2_va, RAM_BASE + 0x2000)
        self.baseline = self.snapshot()

    def snapshot(self) -> tuple[bytes, bytes, bytes]:
        p = self.hv.state.pages
        return bytes(p.usage), bytes(p.owner), p.subcount.tobytes()


_RIGS: dict[str, Rig] = {}


@pytest.fixture(scope="module")
def mods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return build_modules(Path(tmp_path_factory.mktemp("fuzzmods")), ("mod_hello",))


def rig(policy: str, mods: dict[str, bytes]) -> Rig:
    r = _RIGS.get(policy)
    if r is None or r.m.plat.halted or r.hv.internal_errors:
        r = _RIGS[policy] = Rig(policy, mods)
    return r


def _pointer(r: Rig, base: int) -> st.SearchStrategy[int]:
    other = st.one_of(st.sampled_from([0, r.el2_va, kva(TEXT), r.km.text.va, r.km.ro.va,
                                       r.km.tmp.va, 1 << 63]),
                      st.integers(-0x3000, 0x3000).map(lambda d: (base + d) & ((1 << 64) - 1)),
                      st.integers(0, (1 << 64) - 1))
    return st.one_of(st.just(base), other)  # half the draws keep the valid pointer


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), policy=st.sampled_from(["hardened", "secvma2024"]))
def test_hvc30_fuzz_no_escape_no_residue(mods: dict[str, bytes], data: st.DataObject,
                                         policy: str) -> None:
    """Random HVC 30 arguments and corrupted inputs: refused cleanly or loaded and freed."""
    r = rig(policy, mods)
    m, hv, km = r.m, r.hv, r.km
    plat = m.plat
    image = plat.read(PhysAddr(km.tmp.pa), len(km.image))
    aux_pa = r.aux_pa
    check_page = plat.read(PhysAddr(aux_pa), 4096)
    hdr = data.draw(_pointer(r, km.hdr_va), "hdr")
    arch = data.draw(_pointer(r, km.aux_va + 0x800), "arch")
    check = data.draw(_pointer(r, km.aux_va), "checklist")
    n = data.draw(st.one_of(st.just(len(km.check)), st.one_of(
        st.integers(0, 130), st.integers(0, (1 << 64) - 1))), "n")
    if data.draw(st.booleans(), "new checklist"):
        entries = data.draw(st.lists(st.one_of(st.sampled_from(km.check),
                                               st.integers(0, 0xFFFF_FFFF)), max_size=40))
        plat.write(PhysAddr(aux_pa), struct.pack(f"<{len(entries)}I", *entries))
    for _ in range(data.draw(st.integers(0, 4), "flips")):
        off = data.draw(st.one_of(st.integers(0, 0x140), st.integers(0, len(image) - 1)))
        plat.write(PhysAddr(km.tmp.pa + off), bytes([data.draw(st.integers(0, 255))]))
    if data.draw(st.booleans(), "arch"):
        words = data.draw(st.lists(st.integers(0, (1 << 64) - 1), min_size=9, max_size=9))
        plat.write(PhysAddr(aux_pa + 0x800), struct.pack("<9Q", *words))
    try:
        result = m.hvc(30, hdr, 0, arch, check, n)
        event("loaded" if result != HVC_INVALID else hv.refusals[-1].rule)
        _check_after(r, hv, m, result, policy)
    finally:
        plat.write(PhysAddr(km.tmp.pa), image)
        plat.write(PhysAddr(aux_pa), check_page)


def _check_after(r: Rig, hv: KPCore, m: FakeMachine, result: int, policy: str) -> None:
    assert not hv.internal_errors, hv.internal_errors
    if m.plat.halted:
        assert policy == "secvma2024" and hv.refusals[-1].rule in ("mload-args", "mload-name")
        return
    if result != HVC_INVALID:
        assert result < 66 and result in hv.state.mod.loaded
        assert m.hvc(32, result) == 0 and m.hvc(31, result) == 0
        if policy == "secvma2024":  # MOD_ro stays until the kernel unmaps it (§7.5): rebuild
            assert not hv.check_invariants(m.plat, full=True)
            _RIGS.pop(policy, None)
            return
    assert not hv.state.mod.loaded
    assert r.snapshot() == r.baseline
    assert not hv.check_invariants(m.plat, full=False)
