"""Building what runs inside the Debian kernel: the userspace helper, secvma_lkdtm, the initramfs.

The helper (guest/linux-user/helper.c) is a static glibc program built with the cross
compiler; it is /init. The modules (guest/linux-lkdtm/) are built by Debian's own kbuild for
the fixture kernel (`kbuild.kbuild_dir`), so vermagic and symbol CRCs are the kernel's.
`secvma_lkdtm.ko` is signed (Linux PKCS#7, `module.linux_sig.sign_appended`) with a
build-local key whose certificate a run hands to the hypervisor as trusted;
`secvma_unsigned.ko` stays unsigned on purpose (attack UNSIGNED_MODULE). Outputs are cached
under the build directory by the digest of their inputs.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from secvma import fixtures
from secvma.linux.kbuild import kbuild_dir
from secvma.machine.build import CROSS, build_dir, guest_dir, tool
from secvma.machine.errors import ToolchainError
from secvma.machine.initramfs import VIRTIO_BLK_MODULES, debian_virtio_blk_modules, pack_cpio
from secvma.module import linux_sig

MODULE_SOURCES = ("secvma_lkdtm.c", "secvma_unsigned.c", "Kbuild")
FIXTURE_MODULES = ("crypto_engine", "virtio_crypto")
"""Debian's own signed modules the `modules` workload loads and unloads (in this order)."""


@dataclass(frozen=True)
class GuestModules:
    lkdtm: Path  # signed with `cert`
    unsigned: Path
    cert: Path  # PEM of the build-local module-signing certificate
    vermagic: str


@dataclass(frozen=True)
class LinuxGuest:
    initramfs: Path
    modules: GuestModules


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def signing_key() -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    """The build-local module-signing key and its self-signed certificate (created once)."""
    d = build_dir() / "linux"
    d.mkdir(parents=True, exist_ok=True)
    kp, cp = d / "module_signing_key.pem", d / "module_signing_cert.pem"
    if kp.is_file() and cp.is_file():
        key = serialization.load_pem_private_key(kp.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key, x509.load_pem_x509_certificate(cp.read_bytes()), cp
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secvma"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "secvma build-local module signing")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=36500))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    kp.chmod(0o600)
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, cp


def vermagic_of(ko: bytes) -> str:
    """The `vermagic=` string of a .ko's .modinfo ('' when absent)."""
    i = ko.find(b"vermagic=")
    if i < 0:
        return ""
    return ko[i + 9:ko.index(b"\0", i)].decode(errors="replace")


def build_modules(fx: fixtures.FixtureSet | None = None) -> GuestModules:
    """Build secvma_lkdtm.ko and secvma_unsigned.ko against the fixture kernel's headers."""
    fx = fx or fixtures.fetch()
    src = guest_dir() / "linux-lkdtm"
    key, cert, cert_path = signing_key()
    der = cert.public_bytes(serialization.Encoding.DER)
    tag = _digest(*(((src / f).read_bytes()) for f in MODULE_SOURCES), fx.kernel_version.encode(),
                  der)
    out = build_dir() / "linux" / f"modules-{tag}"
    lk, un = out / "secvma_lkdtm.ko", out / "secvma_unsigned.ko"
    if not (lk.is_file() and un.is_file()):
        work = build_dir() / "linux" / f"kbuild-work-{tag}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for f in MODULE_SOURCES:
            shutil.copy(src / f, work / f)
        tool("gcc")
        proc = subprocess.run(["make", "-C", str(kbuild_dir(fx)), f"M={work}", "ARCH=arm64",
                               f"CROSS_COMPILE={CROSS}", "modules"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(f"building secvma_lkdtm failed:\n{proc.stderr.strip()[-2000:]}")
        out.mkdir(parents=True, exist_ok=True)
        raw = (work / "secvma_lkdtm.ko").read_bytes()
        lk.write_bytes(linux_sig.sign_appended(raw, key, cert))
        shutil.copy(work / "secvma_unsigned.ko", un)
        shutil.rmtree(work, ignore_errors=True)
    return GuestModules(lk, un, cert_path, vermagic_of(lk.read_bytes()))


def build_helper() -> Path:
    """Compile guest/linux-user/helper.c into a static AArch64 executable (cached)."""
    src = guest_dir() / "linux-user" / "helper.c"
    key = _digest(src.read_bytes())
    out = build_dir() / "linux" / f"helper-{key}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([tool("gcc"), "-O2", "-static", "-Wall", "-o", str(out), str(src),
                           "-lpthread"], capture_output=True, text=True)
    if proc.returncode != 0:
        hint = "" if "cannot find -lc" not in proc.stderr else \
            " (static libc for arm64 missing: apt-get install libc6-dev-arm64-cross)"
        raise ToolchainError(f"building the Linux userspace helper failed{hint}:\n"
                             f"{proc.stderr.strip()[-2000:]}")
    return out


def build_linux_guest(fx: fixtures.FixtureSet | None = None) -> LinuxGuest:
    """The initramfs: /init = helper, Debian's fixture modules (incl. the virtio-blk stack of
    the dma-* attacks) and ours in /lib/modules."""
    fx = fx or fixtures.fetch()
    helper = build_helper()
    mods = build_modules(fx)
    files = {"init": helper.read_bytes(),
             "lib/modules/secvma_lkdtm.ko": mods.lkdtm.read_bytes(),
             "lib/modules/secvma_unsigned.ko": mods.unsigned.read_bytes()}
    for name in FIXTURE_MODULES:
        files[f"lib/modules/{name}.ko"] = fx.modules[name].read_bytes()
    for path, data in zip(VIRTIO_BLK_MODULES, debian_virtio_blk_modules(), strict=True):
        files[f"lib/modules/{Path(path).name}"] = data  # the dma-* attacks' disk driver
    key = _digest(*(k.encode() + v for k, v in sorted(files.items())))
    cpio = build_dir() / "linux" / f"initramfs-{key}.cpio"
    if not cpio.is_file():
        d = stat.S_IFDIR | 0o755
        entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
            ("dev", d, b"", (0, 0)), ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
            ("proc", d, b"", (0, 0)), ("sys", d, b"", (0, 0)), ("tmp", d, b"", (0, 0)),
            ("lib", d, b"", (0, 0)), ("lib/modules", d, b"", (0, 0)),
        ]
        entries += [(n, stat.S_IFREG | (0o755 if n == "init" else 0o644), data, (0, 0))
                    for n, data in sorted(files.items())]
        cpio.write_bytes(pack_cpio(entries))
    return LinuxGuest(cpio, mods)
