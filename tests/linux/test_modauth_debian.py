"""Debian's own modules authenticated by their real signatures under `transparent` (issue 10
item 4): one boot of the stock kernel loads xfs with its dependencies and virtio_crypto with
its, an unsigned and a tampered module, then unloads virtio_crypto."""

from __future__ import annotations

import re

import pytest

from secvma import fixtures as fx
from secvma.kpcore.pages import Usage
from secvma.kpcore.transparent import TransparentKPCore
from secvma.linux.guestbuild import build_modules
from secvma.linux.trust import module_authority
from secvma.machine.initramfs import INIT_BANNER, XFS_MODULES, build_initramfs, debian_modules
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.module.api import open_module

pytestmark = [pytest.mark.qemu, pytest.mark.debian]

_MOD = re.compile(r"SECVMA-INIT: mod /m/(\d)\.ko (exit|signal) (\d+)")


def _tampered(ko: bytes) -> bytes:
    """The signed module with one instruction of .text changed (the signature left as is)."""
    sec = open_module(ko).elf.section_by_name(".text")
    assert sec is not None
    out = bytearray(ko)
    out[sec.offset + 16:sec.offset + 20] = (0xD503201F).to_bytes(4, "little")  # a NOP
    assert bytes(out) != ko
    return bytes(out)


def test_signed_modules_load_unsigned_and_tampered_refused(debian: fx.FixtureSet) -> None:
    own = build_modules(debian)
    lkdtm = own.lkdtm.read_bytes()
    mods = [*debian_modules(XFS_MODULES), debian.modules["crypto_engine"].read_bytes(),
            debian.modules["virtio_crypto"].read_bytes(), own.unsigned.read_bytes(),
            _tampered(lkdtm)]
    image = debian.kernel_image.read_bytes()
    auth = module_authority(image, trust_certs=[own.cert], modules=[own.lkdtm, own.unsigned],
                            fx=debian)
    hv = TransparentKPCore(image=image, modules=auth)
    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(mods),
                             append="console=ttyAMA0 panic=-1 SECVMA_MODS=2", timeout_s=600),
               hv, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.reason
    got = {int(m.group(1)): (m.group(2), int(m.group(3))) for m in _MOD.finditer(res.console)}
    assert [got.get(i) for i in range(5)] == [("exit", 0)] * 5, res.console[-3000:]
    # refused: its init is never executable, the loading task is killed by the oops
    assert got[5][0] == "signal" and got[6][0] == "signal", got
    assert "secvma_unsigned: init ran" not in res.console
    assert "SGI XFS" in res.console  # xfs's init ran
    assert "SECVMA-INIT: unloaded virtio_crypto" in res.console
    assert "SECVMA-INIT: alive after modules" in res.console
    assert not hv.internal_errors, hv.internal_errors
    assert sorted(r.rule for r in hv.refusals) == ["mod-mismatch", "mod-unsigned"], \
        [str(r) for r in hv.refusals]
    prot = hv.protection_summary()
    assert prot["modules_authenticated"] == 5 and prot["modules_refused"] == 2
    recs = {r.name: r for r in hv.mod_records}
    assert recs["virtio_crypto"].state == "released"
    assert recs["xfs"].state == "authenticated" and recs["xfs"].init is None  # init freed
    st = hv.state
    live = [p for p, (_va, r) in hv.mod_pages.items() if r.name == "xfs"]
    xfs = next(c for c in auth.candidates if c.name == "xfs")
    assert xfs.layout is not None and len(live) == xfs.layout.core.text_size // 4096
    assert all(st.pages.usage_of(p) is Usage.EL1_MOD_TXT for p in live)
    assert all(st.pages.usage_of(p) is not Usage.EL1_MOD_TXT
               for p in recs["virtio_crypto"].core.pfns)  # type: ignore[union-attr]
    assert recs["secvma_lkdtm"].rule == "mod-mismatch"
