"""Debian's out-of-tree module build tree for the fixture kernel, runnable on this host.

Debian's `linux-headers-<abi>-arm64` holds the configured arm64 headers and a Makefile that
includes `linux-headers-<abi>-common`; its `scripts` and `tools` are symlinks into
`linux-kbuild-6.1`, whose helpers (modpost, fixdep, ...) are host binaries. So the three
packages are unpacked side by side under the cache: the arm64 headers from the fixtures, the
common headers (arch all) and `linux-kbuild` *for this host's architecture*, fetched through
a private apt state of that architecture (fixtures._PrivateApt). The Makefile's absolute
include path is pointed at the unpacked common tree; nothing is installed on the host.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from secvma import fixtures
from secvma.fixtures import FixturesUnavailable, _PrivateApt


def _host_arch() -> str:
    if shutil.which("dpkg") is None:
        raise FixturesUnavailable("dpkg is not installed (needs a Debian host)")
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _unpack(deb: Path, dest: Path) -> None:
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FixturesUnavailable(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")


def kbuild_dir(fx: fixtures.FixtureSet | None = None) -> Path:
    """The directory to pass to `make -C` (cached; fetched and unpacked on first use).

    Raises FixturesUnavailable when the archive or dpkg cannot be reached.
    """
    fx = fx or fixtures.fetch()
    release = fx.kernel_version  # e.g. 6.1.0-50-arm64
    abi = release.removesuffix("-" + fixtures.FLAVOUR)
    root = fixtures.cache_root()
    out = root / f"kbuild-{release}"
    hdir = out / "usr" / "src" / f"linux-headers-{release}"
    stamp = out / ".complete"
    if stamp.is_file():
        return hdir
    debs = root / "debs"
    arm = sorted(debs.glob(f"linux-headers-{release}_*_arm64.deb"))
    if not arm:
        raise FixturesUnavailable(f"no linux-headers-{release} package in {debs}; "
                                  "run `secvma fixtures fetch --force`")
    host = _host_arch()
    apt = _PrivateApt(root / f"apt-{host}", arch=host)
    apt.update()
    version = fx.package_version
    series = ".".join(release.split(".")[:2])  # "6.1"
    common = apt.download(f"linux-headers-{abi}-common", version, debs)
    kb_pkg = f"linux-kbuild-{series}"
    kb_versions = apt.versions(kb_pkg)
    kb_version = version if version in kb_versions else (kb_versions[0] if kb_versions else version)
    kbuild = apt.download(kb_pkg, kb_version, debs)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for deb in (arm[0], common, kbuild):
        _unpack(deb, out)
    mk = hdir / "Makefile"
    text = mk.read_text()
    absolute = f"/usr/src/linux-headers-{abi}-common"
    if absolute not in text:
        raise FixturesUnavailable(f"{mk} does not include {absolute}: unknown headers layout")
    mk.write_text(text.replace(absolute, str(out / absolute.lstrip("/"))))
    if not (hdir / "scripts" / "mod" / "modpost").exists():
        raise FixturesUnavailable(f"{kb_pkg} did not provide scripts/mod/modpost for {host}")
    stamp.write_text(f"{version} {kb_version}\n")
    return hdir
