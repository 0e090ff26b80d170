"""Module loading through the hypervisor (HVC 30-32) under hardened, on the testbed kernel.

A signature table is made for each test run (a fresh Ed25519 key signs the modules as
`secvma_sig` does).
Invariants are checked once per test with the machine idle (checking them after every trap
makes an xfs load take minutes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secvma import kpcore
from secvma.fixtures import FixtureSet
from secvma.hvabi import HVC_INVALID
from secvma.kpcore import modkeys
from secvma.testbed.build import TestbedImage
from secvma.testbed.commands import TestbedSession
from secvma.testbed.modules import (
    differing_sections,
    host_relocation,
    loaded_module,
    symbol_lookup,
)


def _hardened(files: list[Path], key: Ed25519PrivateKey | None = None) -> Any:
    keys = modkeys.keys_for(key or Ed25519PrivateKey.generate(), [p.read_bytes() for p in files])
    return kpcore.make_policy("hardened", module_keys=keys)


@pytest.fixture(scope="module")
def hv(testbed: TestbedImage, debian: FixtureSet) -> Any:
    signed = [testbed.modules[m] for m in ("mod_hello", "mod_counter", "mod_user")]
    signed += list(debian.modules.values())
    return _hardened(signed)


@pytest.fixture(scope="module")
def session(testbed: TestbedImage, hv: Any) -> Iterator[TestbedSession]:
    with TestbedSession(hv, image=testbed, command_timeout_s=120) as s:
        yield s


def _usage(hv: Any) -> tuple[bytes, bytes]:
    pages = hv.state.pages
    return bytes(pages.usage), bytes(pages.owner)


def test_real_modules_load_through_hvc30_and_unload_to_the_same_page_table(
        session: TestbedSession, hv: Any, debian: FixtureSet) -> None:
    """libcrc32c+xfs and crypto_engine+virtio_crypto: EL2 loads them up to init (module ids),
    EL2-relocated bytes equal secvma.module's, unload restores the page-usage table exactly."""
    s = session
    before: tuple[bytes, bytes] = (b"", b"")
    for cycle, (dep, name) in enumerate((("libcrc32c", "xfs"), ("crypto_engine", "virtio_crypto"),
                                         ("libcrc32c", "xfs"), ("crypto_engine", "virtio_crypto"))):
        if cycle == 2:  # the first cycle links new kernel page tables for the module window
            before = _usage(hv)
        d = s.load_module(debian.modules[dep].read_bytes(), no_init=True)
        assert d.ok and d.ret[1] != HVC_INVALID, d.msg
        data = debian.modules[name].read_bytes()
        r = s.load_module(data, no_init=True)
        assert r.ok and r.ret[1] != HVC_INVALID and "protected by EL2" in r.msg, r.msg
        lm = loaded_module(s.platform, s.image, r.value)
        assert lm.report.prot == 1
        if name == "virtio_crypto":  # xfs is the same code path, 60x the bytes
            want = host_relocation(data, lm, symbol_lookup(s))
            assert differing_sections(s.platform, lm, want) == []
        assert s.unload_module(r.value).ok and s.unload_module(d.value).ok
    assert _usage(hv) == before
    assert hv.check_invariants(s.platform) == []


def test_test_module_cycles_leave_the_page_usage_table_unchanged(
        session: TestbedSession, hv: Any, testbed: TestbedImage) -> None:
    """hello and counter, loaded by EL2 with init run, unloaded, three times (after one)."""
    before: tuple[bytes, bytes] = (b"", b"")
    for k in range(4):
        if k == 1:
            before = _usage(hv)
        for name in ("mod_hello", "mod_counter"):
            r = session.load_module(testbed.modules[name].read_bytes())
            assert r.ok and r.ret[1] != HVC_INVALID, r.msg
            assert session.unload_module(r.value).ok
    assert _usage(hv) == before
    assert hv.check_invariants(session.platform) == []


def _refusal(hv: Any, n_before: int) -> str:
    return " | ".join(str(x) for x in hv.refusals[n_before:])


def test_refused_loads_name_their_reason(session: TestbedSession, hv: Any,
                                         testbed: TestbedImage) -> None:
    """Changed after signing, unknown name, missing import: refused by HVC 30, with why."""
    orig = testbed.modules["mod_hello"].read_bytes()
    tampered = bytearray(orig)
    tampered[tampered.find(b"HELLO")] ^= 1                   # a rodata byte, after signing
    renamed = orig.replace(b"name=hello", b"name=hellp")     # .modinfo is not signed
    cases = [(bytes(tampered), "mload-signature"), (renamed, "mload-unknown-name"),
             (testbed.modules["mod_user"].read_bytes(), "counter_")]  # counter not loaded
    before = _usage(hv)
    for data, why in cases:
        n = len(hv.refusals)
        r = session.load_module(data)
        assert not r.ok and "refused" in r.msg
        assert why in _refusal(hv, n), _refusal(hv, n)
    assert _usage(hv) == before
    assert hv.check_invariants(session.platform) == []


def test_module_signed_by_another_key_is_refused(testbed: TestbedImage) -> None:
    """A table signed by one key does not let a module through under another public key."""
    other = _hardened([testbed.modules["mod_hello"]])
    forged = modkeys.keys_for(Ed25519PrivateKey.generate(),
                              [testbed.modules["mod_hello"].read_bytes()])
    other.module_keys = modkeys.ModuleKeys(other.module_keys.public_key, forged.signatures)
    with TestbedSession(other, image=testbed, command_timeout_s=60) as s:
        r = s.load_module(testbed.modules["mod_hello"].read_bytes())
        assert not r.ok and "refused" in r.msg
        assert "mload-signature" in _refusal(other, 0)


def test_kernel_write_to_loaded_module_text_is_refused(session: TestbedSession,
                                                       hv: Any, testbed: TestbedImage) -> None:
    """After EL2 installed a module, a kernel store into its text does not land."""
    r = session.load_module(testbed.modules["mod_counter"].read_bytes())
    assert r.ok, r.msg
    lm = loaded_module(session.platform, session.image, r.value)
    va = lm.report.text_va
    old = session.read(va, 4).value
    n = len(hv.refusals)
    w = session.write(va, 0xD503201F, 4)                  # NOP over the first instruction
    assert w.faulted and "module-store" in _refusal(hv, n)
    assert session.read(va, 4).value == old
    assert session.unload_module(r.value).ok
