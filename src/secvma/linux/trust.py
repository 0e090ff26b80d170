"""What a run hands kpcore to authenticate the stock kernel's modules (`kpcore.modauth`).

kpcore is told, never finds out by itself: the trusted certificates (Debian's module-signing
certificate recovered from the fixture Image, the run's build-local certificate that signs
secvma_lkdtm, and every `--trust-cert PEM`), the candidate module files (the fixture's Debian
modules, the run's own modules, extra files) and the kernel's exports read from the Image
file. Exports are cached per Image (reading them takes ~0.5 s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509

from secvma import fixtures
from secvma.kpcore import kbtf
from secvma.kpcore.kexports import image_exports
from secvma.kpcore.modauth import ModuleAuthority
from secvma.machine.initramfs import VIRTIO_BLK_MODULES, XFS_MODULES, debian_module_files
from secvma.module import linux_sig
from secvma.module.errors import ModuleError
from secvma.module.symbols import Export, parse_symvers

_EXPORTS: dict[str, dict[str, Export]] = {}
_STRUCTS: dict[str, dict[str, int]] = {}
DEBIAN_CANDIDATES = (*XFS_MODULES[:1], *VIRTIO_BLK_MODULES)
"""Debian modules beyond the fixture manifest's four that our guests load."""


class TrustError(ValueError):
    """A --trust-cert or candidate module file that cannot be used."""


def load_certs(paths: Sequence[Path]) -> list[x509.Certificate]:
    out = []
    for p in paths:
        try:
            out.append(linux_sig.load_certificate(Path(p)))
        except (OSError, ModuleError, ValueError) as exc:
            raise TrustError(f"cannot use certificate {p}: {exc}") from exc
    return out


def kernel_exports(image: bytes, fx: fixtures.FixtureSet) -> dict[str, Export]:
    key = hashlib.sha256(image).hexdigest()
    got = _EXPORTS.get(key)
    if got is None:
        got = _EXPORTS[key] = image_exports(image, parse_symvers(fx.symvers.read_text()))
    return got


def module_struct(image: bytes) -> dict[str, int]:
    """Byte offsets of `struct module`'s fields from the Image's BTF ({} without BTF: modules
    with per-CPU data are then refused `mod-layout`)."""
    key = hashlib.sha256(image).hexdigest()
    got = _STRUCTS.get(key)
    if got is None:
        try:
            got = kbtf.parse(image).offsets("module")
        except kbtf.BtfError:
            got = {}
        _STRUCTS[key] = got
    return got


def module_authority(image: bytes, *, trust_certs: Sequence[Path] = (),
                     modules: Sequence[Path] = (), fx: fixtures.FixtureSet | None = None,
                     default_trust: bool = True,
                     module_bytes: Mapping[str, bytes] | None = None) -> ModuleAuthority:
    """Certificates: the fixture's (unless `default_trust` is off) + `trust_certs`;
    candidates: the fixture's modules, what they need to load (crc32c_generic for xfs) and
    the virtio-blk modules, + `modules`, + `module_bytes` (label -> file contents: e.g. the
    boot modules an initramfs carries). A candidate only selects; it is trusted only if its
    signature verifies."""
    fx = fx or fixtures.fetch()
    certs = load_certs([*(fx.signing_certs if default_trust else []), *trust_certs])
    tree = debian_module_files(DEBIAN_CANDIDATES)
    files: dict[str, bytes] = {}
    for p in [*fx.modules.values(), *tree, *modules]:
        try:
            files[str(p)] = Path(p).read_bytes()
        except OSError as exc:
            raise TrustError(f"cannot read module {p}: {exc}") from exc
    files.update(module_bytes or {})
    return ModuleAuthority(certs, files.items(), kernel_exports(image, fx),
                           module_struct=module_struct(image))


__all__ = ["TrustError", "kernel_exports", "load_certs", "module_authority", "module_struct"]
