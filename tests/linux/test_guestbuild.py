"""The Linux guest's build: secvma_lkdtm built by Debian's kbuild, signed, matching the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from secvma import fixtures as fx
from secvma.linux.guestbuild import build_helper, build_linux_guest, build_modules, vermagic_of
from secvma.module import linux_sig
from secvma.module.elf import ElfModule

pytestmark = pytest.mark.debian


def _kernel_vermagic(debian: fx.FixtureSet) -> str:
    return vermagic_of(debian.modules["virtio_crypto"].read_bytes())


def test_vermagic_matches_the_fixture_kernel(debian: fx.FixtureSet) -> None:
    mods = build_modules(debian)
    assert mods.vermagic.startswith(debian.kernel_version + " ")
    assert mods.vermagic == _kernel_vermagic(debian)  # same as Debian's own modules
    assert vermagic_of(mods.unsigned.read_bytes()) == mods.vermagic


def test_lkdtm_is_signed_with_the_build_key_and_the_decoy_is_not(debian: fx.FixtureSet) -> None:
    mods = build_modules(debian)
    cert = x509.load_pem_x509_certificate(mods.cert.read_bytes())
    sig = linux_sig.verify_appended_signature(mods.lkdtm.read_bytes(), cert)
    assert sig.digest_algorithm == "sha256" and linux_sig.cert_matches(cert, sig.signer)
    assert not mods.unsigned.read_bytes().endswith(linux_sig.MAGIC)
    # Debian's key did not sign it
    debian_cert = linux_sig.load_certificate(debian.signing_certs[0])
    with pytest.raises(linux_sig.ModuleError):
        linux_sig.verify_appended_signature(mods.lkdtm.read_bytes(), debian_cert)


def test_lkdtm_imports_carry_the_kernels_crcs(debian: fx.FixtureSet) -> None:
    """modversions: every __versions entry has the CRC of Module.symvers (modpost ran)."""
    mods = build_modules(debian)
    content, _ = linux_sig.split_appended_signature(mods.lkdtm.read_bytes())
    elf = ElfModule(content)
    sec = next(s for s in elf.sections if s.name == "__versions")
    data = content[sec.offset:sec.offset + sec.size]
    crcs = {}
    for off in range(0, len(data), 64):
        crc = int.from_bytes(data[off:off + 8], "little")
        name = data[off + 8:off + 64].split(b"\0")[0].decode()
        crcs[name] = crc
    symvers = {}
    for line in debian.symvers.read_text().splitlines():
        f = line.split("\t")
        symvers[f[1]] = int(f[0], 16)
    assert {"vmap", "debugfs_create_file", "mac_pton", "hex_asc_upper"} <= set(crcs)
    for name, crc in crcs.items():
        if name in symvers:
            assert crc == symvers[name], name
    assert "module_layout" in crcs


def test_helper_is_a_static_aarch64_executable() -> None:
    data = Path(build_helper()).read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183  # EM_AARCH64
    assert b"/lib/ld-linux-aarch64" not in data  # no interpreter: static


def test_initramfs_holds_init_and_the_modules(debian: fx.FixtureSet) -> None:
    g = build_linux_guest(debian)
    blob = g.initramfs.read_bytes()
    for name in (b"init", b"lib/modules/secvma_lkdtm.ko", b"lib/modules/secvma_unsigned.ko",
                 b"lib/modules/crypto_engine.ko", b"lib/modules/virtio_crypto.ko", b"dev/console"):
        assert name + b"\0" in blob
