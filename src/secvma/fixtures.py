"""Debian arm64 fixtures: a real signed kernel, its config, Module.symvers and four modules.

Why real Debian files: the module toolchain and the machine both need third-party AArch64
objects that nobody in this project built, so bugs cannot cancel out between a builder and a
checker (docs/debian-modules.md §0). The archive is reached through apt with a *private* state
(own lists, own status, arm64 only) derived from the host's configured Debian sources, so the
host's apt configuration and foreign architectures are never touched (docs/debian-modules.md §1).
No archive host name appears here: the URIs are whatever the host's sources file says.

Pinned: bookworm's 6.1 ABI `PIN_ABI` at `PIN_VERSION`. If the archive no longer serves it,
the newest 6.1 ABI that has both an image and a headers package is used, and the manifest
records the fallback. Everything lands under `cache_root()` (default
`~/.cache/secvma/debian`, override with `SECVMA_CACHE`), never inside the repository.

Public API (used by tests and by the machine work): `fetch`, `available`, `FixtureSet`,
`FixturesUnavailable`, `cache_root`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PIN_ABI = "6.1.0-50"
PIN_VERSION = "6.1.176-1"
FLAVOUR = "arm64"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1

# Module name -> path below lib/modules/<release>/ (SECvma's run-mod.sh set, docs/eval-spec.md §2).
MODULE_PATHS: dict[str, str] = {
    "xfs": "kernel/fs/xfs/xfs.ko",
    "libcrc32c": "kernel/lib/libcrc32c.ko",
    "crypto_engine": "kernel/crypto/crypto_engine.ko",
    "virtio_crypto": "kernel/drivers/crypto/virtio/virtio_crypto.ko",
}

_APT_TIMEOUT_S = 300
_URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


class FixturesUnavailable(RuntimeError):
    """The Debian archive (or apt/dpkg-deb) cannot be reached; the message says why."""


REQUIRE_ENV = "SECVMA_REQUIRE_FIXTURES"


def required() -> bool:
    """Whether the fixtures must be there (`SECVMA_REQUIRE_FIXTURES=1`: CI, scripts/test.sh):
    then a test that needs them fails instead of skipping when they cannot be fetched."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class FixtureSet:
    """Paths of one extracted fixture set; every path is inside `root`.

    `kernel_version` is the kernel release string (`uname -r`, e.g. `6.1.0-50-arm64`);
    `package_version` the Debian package version it came from. `sha256` maps a path relative
    to `root` (and each `.deb` name) to its SHA-256 hex digest.
    """

    root: Path
    kernel_version: str
    kernel_image: Path
    config: Path
    symvers: Path
    modules: dict[str, Path]
    signing_certs: list[Path]
    sha256: dict[str, str]
    package_version: str = ""
    pinned: bool = True
    packages: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A JSON-able summary (what `secvma fixtures fetch --json` prints)."""
        return {
            "root": str(self.root),
            "kernel_version": self.kernel_version,
            "package_version": self.package_version,
            "pinned": self.pinned,
            "packages": self.packages,
            "kernel_image": str(self.kernel_image),
            "config": str(self.config),
            "symvers": str(self.symvers),
            "modules": {k: str(v) for k, v in self.modules.items()},
            "signing_certs": [str(p) for p in self.signing_certs],
            "sha256": self.sha256,
        }


def cache_root() -> Path:
    """Where fixtures live: `$SECVMA_CACHE` or `~/.cache/secvma/debian`."""
    env = os.environ.get("SECVMA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "secvma" / "debian"


def _redact(text: str) -> str:
    """Drop archive URIs from tool output before it is shown or stored."""
    return _URI_RE.sub("<archive>", text)


def available() -> FixtureSet | None:
    """The cached fixture set, or None if it was never fetched or is incomplete (no network)."""
    root = cache_root()
    try:
        meta = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != MANIFEST_FORMAT:
        return None
    try:
        fs = FixtureSet(
            root=root,
            kernel_version=str(meta["kernel_version"]),
            kernel_image=root / meta["kernel_image"],
            config=root / meta["config"],
            symvers=root / meta["symvers"],
            modules={k: root / v for k, v in meta["modules"].items()},
            signing_certs=[root / p for p in meta["signing_certs"]],
            sha256=dict(meta["sha256"]),
            package_version=str(meta["package_version"]),
            pinned=bool(meta["pinned"]),
            packages=list(meta["packages"]),
        )
    except (KeyError, TypeError, AttributeError):
        return None
    paths = [fs.kernel_image, fs.config, fs.symvers, *fs.modules.values(), *fs.signing_certs]
    if set(fs.modules) != set(MODULE_PATHS) or not fs.signing_certs:
        return None
    if not all(p.is_file() for p in paths):
        return None
    return fs


def fetch(force: bool = False) -> FixtureSet:
    """Fetch and extract the fixtures (idempotent: a complete cache is returned as is).

    Raises `FixturesUnavailable` when apt cannot reach the archive or a tool is missing.
    """
    if not force:
        cached = available()
        if cached is not None:
            return cached
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    apt = _PrivateApt(root / "apt")
    apt.update()
    abi, version, image_pkg, headers_pkg, pinned = _choose_packages(apt)
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    image_deb = apt.download(image_pkg, version, debs)
    headers_deb = apt.download(headers_pkg, version, debs)
    release = f"{abi}-{FLAVOUR}"
    out = root / release
    if out.exists():
        shutil.rmtree(out)
    (out / "modules").mkdir(parents=True)
    _extract_image_package(image_deb, release, out)
    _extract_headers_package(headers_deb, release, out)
    certs = _extract_certificates(out)
    fs = _write_manifest(root, out, release, version, pinned, [image_deb, headers_deb], certs)
    return fs


# --------------------------------------------------------------------------- apt


class _PrivateApt:
    """apt-get/apt-cache with their own lists, status and sources: one architecture (arm64)."""

    def __init__(self, base: Path, arch: str = "arm64") -> None:
        self.base = base
        for sub in ("lists/partial", "archives/partial", "cache", "prefs.d", "sources"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "status").touch()
        _write_private_sources(base / "sources")
        conf = base / "apt.conf"
        conf.write_text(
            "\n".join(
                [
                    f'APT::Architecture "{arch}";',
                    f'APT::Architectures {{ "{arch}"; }};',
                    f'Dir::State::Lists "{base}/lists";',
                    f'Dir::State::status "{base}/status";',
                    f'Dir::Cache "{base}/cache";',
                    f'Dir::Cache::archives "{base}/archives";',
                    f'Dir::Etc::SourceParts "{base}/sources";',
                    'Dir::Etc::SourceList "/dev/null";',
                    'Dir::Etc::Preferences "/dev/null";',
                    f'Dir::Etc::PreferencesParts "{base}/prefs.d";',
                    'Acquire::Languages "none";',
                    'APT::Sandbox::User "root";',
                    "",
                ]
            )
        )
        self.env = {**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C"}

    def run(self, *args: str, cwd: Path | None = None) -> str:
        """Run an apt tool; any failure becomes FixturesUnavailable with a redacted reason."""
        if shutil.which(args[0]) is None:
            raise FixturesUnavailable(f"{args[0]} is not installed (needs a Debian host)")
        try:
            proc = subprocess.run(
                args, env=self.env, cwd=cwd, capture_output=True, text=True,
                timeout=_APT_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise FixturesUnavailable(f"{args[0]} {args[1]} timed out") from exc
        if proc.returncode != 0:
            tail = _redact(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")
            raise FixturesUnavailable(f"{' '.join(args[:2])} failed ({proc.returncode}): {tail}")
        return proc.stdout

    def update(self) -> None:
        """Refresh the private arm64 lists; apt prints W:/E: lines for unreachable mirrors."""
        self.run("apt-get", "-q", "update")
        if not any((self.base / "lists").glob("*Packages*")):
            raise FixturesUnavailable("apt-get update fetched no arm64 package lists")

    def pkgnames(self) -> list[str]:
        return self.run("apt-cache", "pkgnames").split()

    def versions(self, pkg: str) -> list[str]:
        """Versions of `pkg` the archive serves (apt-cache madison)."""
        try:
            out = self.run("apt-cache", "madison", pkg)
        except FixturesUnavailable:
            return []
        return [ln.split("|")[1].strip() for ln in out.splitlines() if ln.count("|") >= 2]

    def download(self, pkg: str, version: str, dest: Path) -> Path:
        """apt-get download (apt checks the SHA-256 from the signed index); reuse if cached."""
        ver = version.split(":", 1)[-1]
        existing = sorted(dest.glob(f"{pkg}_{ver}_*.deb"))
        if existing:
            return existing[0]
        self.run("apt-get", "-q", "download", f"{pkg}={version}", cwd=dest)
        got = sorted(dest.glob(f"{pkg}_*_*.deb"))
        got = [p for p in got if f"_{ver.replace(':', '%3a')}_" in p.name or f"_{ver}_" in p.name]
        if not got:
            raise FixturesUnavailable(f"apt-get download {pkg}={version} produced no .deb")
        return got[0]


def _system_sources() -> list[Path]:
    found = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    return [p for p in found if p.is_file() and p.stat().st_size > 0]


def _write_private_sources(dest: Path) -> None:
    """Copy the host's Debian sources, minus architecture restrictions (we want arm64)."""
    srcs = _system_sources()
    if not srcs:
        raise FixturesUnavailable("no Debian apt sources on this host "
                                  "(/etc/apt/sources.list.d/debian.sources or sources.list)")
    for old in dest.iterdir():
        old.unlink()
    for src in srcs:
        text = src.read_text()
        if src.suffix == ".sources":
            lines = [ln for ln in text.splitlines() if not ln.lower().startswith("architectures:")]
            (dest / "debian.sources").write_text("\n".join(lines) + "\n")
        else:
            keep = []
            for ln in text.splitlines():
                if ln.strip().startswith("deb "):
                    keep.append(re.sub(r"\barch=[^ \]]+\s*", "", ln).replace("[ ]", ""))
            if keep:
                (dest / "debian.list").write_text("\n".join(keep) + "\n")


def _choose_packages(apt: _PrivateApt) -> tuple[str, str, str, str, bool]:
    """(abi, version, image package, headers package, pinned?) for a 6.1 arm64 kernel."""
    img, hdr = f"linux-image-{PIN_ABI}-{FLAVOUR}-unsigned", f"linux-headers-{PIN_ABI}-{FLAVOUR}"
    if PIN_VERSION in apt.versions(img) and PIN_VERSION in apt.versions(hdr):
        return PIN_ABI, PIN_VERSION, img, hdr, True
    names = set(apt.pkgnames())
    abis = sorted(
        (int(m.group(1)) for n in names
         if (m := re.fullmatch(rf"linux-headers-6\.1\.0-(\d+)-{FLAVOUR}", n))),
        reverse=True,
    )
    for n in abis:
        abi = f"6.1.0-{n}"
        hdr = f"linux-headers-{abi}-{FLAVOUR}"
        for img in (f"linux-image-{abi}-{FLAVOUR}-unsigned", f"linux-image-{abi}-{FLAVOUR}"):
            if img not in names:
                continue
            common = [v for v in apt.versions(img) if v in set(apt.versions(hdr))]
            if common:
                return abi, common[0], img, hdr, False
    raise FixturesUnavailable("the archive serves no 6.1 arm64 kernel with matching headers")


# --------------------------------------------------------------------------- extraction


def _deb_members(deb: Path, wanted: Iterable[str]) -> dict[str, bytes]:
    """Read selected members (exact paths, './'-relative) of a .deb's data tarball."""
    want = set(wanted)
    if shutil.which("dpkg-deb") is None:
        raise FixturesUnavailable("dpkg-deb is not installed (needs a Debian host)")
    found: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name in want and member.isfile():
                        fh = tar.extractfile(member)
                        if fh is not None:
                            found[name] = fh.read()
                        if len(found) == len(want):
                            break
        except tarfile.TarError as exc:
            raise FixturesUnavailable(f"{deb.name}: bad data tarball: {exc}") from exc
        finally:
            proc.stdout.close()
            proc.kill()
    missing = want - set(found)
    if missing:
        raise FixturesUnavailable(f"{deb.name} lacks {sorted(missing)}")
    return found


def _extract_image_package(deb: Path, release: str, out: Path) -> None:
    mods = {f"lib/modules/{release}/{p}": name for name, p in MODULE_PATHS.items()}
    wanted = {f"boot/vmlinuz-{release}": "Image", f"boot/config-{release}": "config"}
    # A later ABI may ship compressed modules: accept .ko, .ko.xz (decompressed here).
    got = _deb_members_any(deb, {**wanted, **mods})
    for member, data in got.items():
        if member.endswith(".xz"):
            data = lzma.decompress(data)
        target = wanted.get(member)
        if target is not None:
            (out / target).write_bytes(data)
        else:
            key = member.removesuffix(".xz")
            (out / "modules" / f"{mods[key]}.ko").write_bytes(data)


def _deb_members_any(deb: Path, wanted: dict[str, str]) -> dict[str, bytes]:
    """Like `_deb_members` but a `.ko` may also be present as `.ko.xz`."""
    try:
        return _deb_members(deb, wanted)
    except FixturesUnavailable:
        alt = [m + ".xz" if m.endswith(".ko") else m for m in wanted]
        return _deb_members(deb, alt)


def _extract_headers_package(deb: Path, release: str, out: Path) -> None:
    sym = f"usr/src/linux-headers-{release}/Module.symvers"
    got = _deb_members(deb, [sym])
    (out / "Module.symvers").write_bytes(got[sym])


def _extract_certificates(out: Path) -> list[Path]:
    """Module-signing certificates from the Image (the build-time key; docs/debian-modules.md §3)."""
    from secvma.module import linux_sig  # local: keeps `secvma fixtures path` import-light
    from secvma.module.errors import ModuleError

    image = (out / "Image").read_bytes()
    certs = linux_sig.certificates_from_image(image)
    xfs = (out / "modules" / "xfs.ko").read_bytes()
    signer = None
    try:
        signer = linux_sig.parse_appended_signature(xfs).signer
    except ModuleError:
        signer = None
    chosen = [c for c in certs if signer is not None and linux_sig.cert_matches(c, signer)]
    if not chosen:
        chosen = certs
    if not chosen:
        raise FixturesUnavailable("no X.509 certificate found in the kernel Image")
    paths = []
    (out / "certs").mkdir(exist_ok=True)
    for i, cert in enumerate(chosen):
        p = out / "certs" / f"signing_key_{i}.pem"
        p.write_bytes(linux_sig.cert_to_pem(cert))
        paths.append(p)
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(root: Path, out: Path, release: str, version: str, pinned: bool,
                    debs: list[Path], certs: list[Path]) -> FixtureSet:
    def rel(p: Path) -> str:
        return str(p.relative_to(root))

    modules = {name: out / "modules" / f"{name}.ko" for name in MODULE_PATHS}
    files = [out / "Image", out / "config", out / "Module.symvers", *modules.values(), *certs]
    sha = {rel(p): _sha256(p) for p in files}
    sha.update({d.name: _sha256(d) for d in debs})
    pkgs = [d.name for d in debs]
    meta = {
        "format": MANIFEST_FORMAT,
        "kernel_version": release,
        "package_version": version,
        "pinned": pinned,
        "pin": f"{PIN_ABI} {PIN_VERSION}",
        "packages": pkgs,
        "kernel_image": rel(out / "Image"),
        "config": rel(out / "config"),
        "symvers": rel(out / "Module.symvers"),
        "modules": {k: rel(v) for k, v in modules.items()},
        "signing_certs": [rel(p) for p in certs],
        "sha256": sha,
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(root / MANIFEST)
    fs = available()
    assert fs is not None, "manifest just written must load"
    return fs
