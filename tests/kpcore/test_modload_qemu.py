"""The module loader on the real testbed kernel (QEMU): HVC 30/31/32 under both policies.

One booted session per policy (invariants checked after every trap); the signature table is
made for this test run with a fresh Ed25519 key. Module init/exit run on the vCPU from the
pages EL2 installed and relocated; their `module_report` values prove it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secvma.hvabi import HVC_INVALID
from secvma.kpcore import KPCore, ModuleKeys, make_policy
from secvma.kpcore.modkeys import sign_module_bytes, sign_modules

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

INIT_MOD = '''#include "module.h"
MODULE_NAME("initmod");
static int triple(int x) { return 3 * x; }
__attribute__((section(".init.text"))) int init_module(void)
{ module_report(3, (u64)triple(14)); printk("initmod: init from .init.text\\n"); return 0; }
void cleanup_module(void) { module_report(3, 0x0e1d); }
'''
OTHER_MOD = '''#include "module.h"
MODULE_NAME("other");
int init_module(void) { return 0; }
'''


@pytest.fixture(scope="module")
def testbed() -> Any:
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed")
    from secvma.testbed.build import build_testbed

    return build_testbed()  # a build failure fails the tests, it does not skip them


@pytest.fixture(scope="module")
def blobs(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from modfakes import build_modules

    out = {n: Path(p).read_bytes() for n, p in testbed.modules.items()}
    out.update(build_modules(tmp_path_factory.mktemp("qmods"), (),
                             extra={"mod_init": INIT_MOD, "mod_other": OTHER_MOD}))
    return out


@pytest.fixture(scope="module")
def keys(blobs: dict[str, bytes]) -> ModuleKeys:
    key = Ed25519PrivateKey.generate()
    table = sign_modules(key, [blobs[n] for n in ("mod_hello", "mod_counter", "mod_user",
                                                  "mod_init")])
    name, sig = sign_module_bytes(Ed25519PrivateKey.generate(), blobs["mod_other"])
    table[name] = sig  # listed, but signed by another key
    return ModuleKeys(key.public_key(), table)


@pytest.fixture(scope="module", params=["hardened", "secvma2024"])
def session(request: pytest.FixtureRequest, testbed: Any,
            keys: ModuleKeys) -> Iterator[tuple[Any, KPCore]]:
    from secvma.testbed.commands import TestbedSession

    hv = make_policy(request.param, check_invariants=True, module_keys=keys)
    with TestbedSession(hv, image=testbed, command_timeout_s=120) as s:
        yield s, hv
    assert not hv.internal_errors, hv.internal_errors


def _report(s: Any, i: int) -> int:
    return int(s.read(s.image.va("module_reports") + 8 * i).value)


def _load(s: Any, blob: bytes, what: str = "") -> Any:
    return s.load_module(blob)


def _unload(s: Any, handle: int, what: str = "") -> Any:
    return s.unload_module(handle)


def _clean(s: Any, hv: KPCore) -> None:
    assert not hv.internal_errors, hv.internal_errors
    assert not hv.check_invariants(s.platform, full=True)
    assert not hv.invariant_violations, [str(v) for v in hv.invariant_violations[:3]]
    assert not hv.state.pages.pages_of(_usage("EL1_AUTH"))


def _usage(name: str) -> Any:
    from secvma.kpcore.pages import Usage

    return Usage[name]


def test_test_modules_init_and_exit_run_from_el2_installed_text(
        session: tuple[Any, KPCore], blobs: dict[str, bytes]) -> None:
    """hello, counter, initmod: loaded by EL2 (module ids), init and exit report their values."""
    s, hv = session
    for name, idx, init_val, exit_val in (("mod_hello", 0, 0x48454C4C4F, 0xB7E),
                                          ("mod_counter", 1, 4950 + 1000, 0xC0DE),
                                          ("mod_init", 3, 42, 0x0E1D)):
        r = _load(s, blobs[name], name)
        assert r.ok and r.ret[1] != HVC_INVALID and "protected by EL2" in r.msg, r.msg
        assert _report(s, idx) == init_val
        u = _unload(s, r.ret[0], name)
        assert u.ok, u.msg
        assert _report(s, idx) == exit_val
    assert not hv.refusals, [str(x) for x in hv.refusals]
    assert not hv.state.mod.loaded
    _clean(s, hv)


def test_module_uses_another_modules_exports(session: tuple[Any, KPCore],
                                            blobs: dict[str, bytes]) -> None:
    """`user` calls counter_add/counter_get of `counter`, resolved by EL2 from its exports."""
    s, hv = session
    c = _load(s, blobs["mod_counter"])
    u = _load(s, blobs["mod_user"], "mod_user")
    assert c.ok and u.ok, (c.msg, u.msg)
    assert _report(s, 2) == 7
    assert _unload(s, u.ret[0]).ok and _unload(s, c.ret[0]).ok
    assert _report(s, 2) == 0x05E7
    assert not hv.refusals, [str(x) for x in hv.refusals]
    _clean(s, hv)


def test_load_unload_cycles_restore_page_usage_table(session: tuple[Any, KPCore],
                                                     blobs: dict[str, bytes]) -> None:
    """Two cycles of every test module leave owner/class/subcount of all pages as before."""
    s, hv = session

    def snap() -> tuple[bytes, bytes, bytes]:
        pages = hv.state.pages  # through `state`: PTE stores done at EL2 are accounted for
        return bytes(pages.usage), bytes(pages.owner), pages.subcount.tobytes()

    before = snap()
    for _cycle in range(2):
        for name in ("mod_hello", "mod_init", "mod_counter"):
            r = _load(s, blobs[name])
            assert r.ok, r.msg
            assert _unload(s, r.ret[0]).ok
        assert snap() == before
    _clean(s, hv)


@pytest.mark.parametrize(("case", "rule"), [("modified", "mload-signature"),
                                            ("other-key", "mload-signature"),
                                            ("unknown-name", "mload-unknown-name"),
                                            ("missing-import", "mload-symbol")])
def test_bad_modules_refused_with_rule(session: tuple[Any, KPCore], blobs: dict[str, bytes],
                                       case: str, rule: str) -> None:
    """Changed bytes, another key, a name not in the table, an unresolvable import."""
    s, hv = session
    if case == "modified":
        from secvma.module.elf import ElfModule

        blob = bytearray(blobs["mod_hello"])
        text = ElfModule(bytes(blob)).section_by_name(".text")
        assert text is not None
        blob[text.offset + 4] ^= 0x01
        ko = bytes(blob)
    elif case == "other-key":
        ko = blobs["mod_other"]
    elif case == "unknown-name":
        ko = blobs["mod_hello"].replace(b"name=hello", b"name=hellp")
    else:
        ko = blobs["mod_user"]
    before = bytes(hv.state.pages.usage)
    n = len(hv.refusals)
    r = s.load_module(ko)
    assert not r.ok and "hypervisor refused" in r.msg, r.msg
    assert [x.rule for x in hv.refusals[n:]] == [rule]
    assert bytes(hv.state.pages.usage) == before
    _clean(s, hv)


def test_kernel_write_to_module_text_refused(session: tuple[Any, KPCore],
                                            blobs: dict[str, bytes]) -> None:
    """hardened: a kernel store into loaded module text faults (rule module-store)."""
    s, hv = session
    if hv.policy.name != "hardened":
        pytest.skip("secvma2024 panics on it (docs/kpcore-spec.md §7.5); covered by the fake-machine test")
    from secvma.testbed.modules import loaded_module

    r = _load(s, blobs["mod_hello"])
    assert r.ok, r.msg
    lm = loaded_module(s.platform, s.image, r.ret[0])
    n = len(hv.refusals)
    w = s.write(lm.report.text_va, 0xD503201F, width=4)
    assert w.faulted, w
    assert [x.rule for x in hv.refusals[n:]] == ["module-store"]
    hv.refusals[n:] = []
    assert _unload(s, r.ret[0]).ok
    assert _report(s, 0) == 0xB7E  # exit still ran from the untouched text
    _clean(s, hv)
