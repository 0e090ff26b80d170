"""Module loading on the testbed kernel: test modules, real Debian modules, relocation bytes.

Under policy `none` HVC 30 answers HVC_ENOSYS, so everything here exercises the kernel-side
loader (the unprotected baseline of `secvma bench modules`). The hypervisor loader's own
tests (hardened) are in test_modules_hardened.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from secvma.fixtures import FixtureSet
from secvma.hvabi import HVC_INVALID
from secvma.testbed.build import TestbedImage
from secvma.testbed.commands import TestbedSession
from secvma.testbed.modules import (
    differing_sections,
    host_relocation,
    loaded_module,
    symbol_lookup,
)
from secvma.testbed.nullabi import TestbedNullHypervisor

BM_NFREE = 32  # offsetof(struct bitmap_alloc, nfree)


@pytest.fixture(scope="module")
def session(testbed: TestbedImage) -> Iterator[TestbedSession]:
    with TestbedSession(TestbedNullHypervisor(), image=testbed, command_timeout_s=30) as s:
        yield s


def _free_pages(s: TestbedSession) -> tuple[int, ...]:
    return tuple(s.read(s.image.va(bm) + BM_NFREE).value
                 for bm in ("page_bm", "modtext_bm", "modro_bm", "modva_bm"))


def _report(s: TestbedSession, i: int) -> int:
    return s.read(s.image.va("module_reports") + 8 * i).value


def test_test_modules_run_init_and_exit_over_repeated_cycles(session: TestbedSession,
                                                             testbed: TestbedImage) -> None:
    """hello, counter, user load (init prints/reports), unload (exit), three times; no leak."""
    s = session
    before = _free_pages(s)
    for _ in range(3):
        handles = []
        for name in ("mod_hello", "mod_counter", "mod_user"):
            r = s.load_module(testbed.modules[name].read_bytes())
            assert r.ok, r.msg
            assert r.ret[1] == HVC_INVALID and "kernel-side" in r.msg
            handles.append(r.value)
        assert _report(s, 0) == 0x48454C4C4F and _report(s, 1) == 5950 and _report(s, 2) == 7
        for h in reversed(handles):
            assert s.unload_module(h).ok
        assert _report(s, 0) == 0xB7E and _report(s, 1) == 0xC0DE and _report(s, 2) == 0x5E7
    assert _free_pages(s) == before


def test_module_using_exports_of_an_absent_module_is_refused(session: TestbedSession,
                                                             testbed: TestbedImage) -> None:
    """mod_user without mod_counter: unknown symbol, and nothing stays allocated."""
    before = _free_pages(session)
    r = session.load_module(testbed.modules["mod_user"].read_bytes())
    assert not r.ok and "unknown symbol counter_" in r.msg
    assert _free_pages(session) == before


def test_module_in_use_cannot_be_removed(session: TestbedSession,
                                         testbed: TestbedImage) -> None:
    """rmmod counter while user links against it: refused; after user goes, it works."""
    c = session.load_module(testbed.modules["mod_counter"].read_bytes())
    u = session.load_module(testbed.modules["mod_user"].read_bytes())
    assert c.ok and u.ok, (c.msg, u.msg)
    r = session.unload_module(c.value)
    assert not r.ok and "in use by user" in r.msg
    assert session.unload_module(u.value).ok and session.unload_module(c.value).ok


def test_same_module_twice_is_refused(session: TestbedSession, testbed: TestbedImage) -> None:
    """A second load of a loaded module's name fails; the first stays usable."""
    first = session.load_module(testbed.modules["mod_hello"].read_bytes(), no_init=True)
    assert first.ok
    again = session.load_module(testbed.modules["mod_hello"].read_bytes(), no_init=True)
    assert not again.ok and "already loaded" in again.msg
    assert session.unload_module(first.value).ok


@pytest.mark.parametrize(("dep", "name"), [("libcrc32c", "xfs"),
                                           ("crypto_engine", "virtio_crypto")])
def test_kernel_side_relocation_equals_host_library(session: TestbedSession,
                                                    debian: FixtureSet, dep: str,
                                                    name: str) -> None:
    """Every placed section of a real module, as installed in guest RAM, equals
    secvma.module's relocation at the same addresses (Linux 6.1 arm64 semantics)."""
    s = session
    before = _free_pages(s)
    d = s.load_module(debian.modules[dep].read_bytes(), no_init=True)
    assert d.ok, d.msg
    data = debian.modules[name].read_bytes()
    r = s.load_module(data, no_init=True)
    assert r.ok, r.msg
    assert "init not run" in r.msg
    lm = loaded_module(s.platform, s.image, r.value)
    want = host_relocation(data, lm, symbol_lookup(s))
    assert len(want) > 10
    assert differing_sections(s.platform, lm, want) == []
    assert s.unload_module(r.value).ok and s.unload_module(d.value).ok
    assert _free_pages(s) == before


def test_real_module_without_its_dependency_names_the_missing_symbol(
        session: TestbedSession, debian: FixtureSet) -> None:
    """xfs before libcrc32c: refused with 'unknown symbol crc32c'."""
    r = session.load_module(debian.modules["xfs"].read_bytes(), no_init=True)
    assert not r.ok and "unknown symbol crc32c" in r.msg


def test_linux_table_resolves_function_and_data_imports(session: TestbedSession,
                                                        testbed: TestbedImage,
                                                        debian: FixtureSet) -> None:
    """Module.symvers names are exported: a stub returns 0; a data object is zeroed, RW."""
    assert testbed.linux_symbols > 10000
    fn = session.symbol("kthread_create_worker")
    assert fn.ok and session.exec(fn.value, 5).value == 0
    data = session.symbol("jiffies")
    assert data.ok and data.value % 4096 == 0
    assert session.read(data.value).value == 0
    assert session.symbol("vmalloc").value == session.image.va("vmalloc")  # testbed's own wins
