"""The Debian fixture fetcher: cache contents, manifest, pin fallback, offline behaviour."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from secvma import fixtures as fx


@pytest.mark.debian
def test_fetched_set_is_complete_and_matches_its_manifest(debian: fx.FixtureSet) -> None:
    """Every extracted file exists and hashes to the manifest's SHA-256."""
    assert fx.available() == debian
    files = [debian.config, debian.symvers, *debian.modules.values(), *debian.signing_certs]
    for p in files:
        rel = str(p.relative_to(debian.root))
        assert hashlib.sha256(p.read_bytes()).hexdigest() == debian.sha256[rel]
    assert set(debian.modules) == {"xfs", "libcrc32c", "crypto_engine", "virtio_crypto"}
    assert debian.kernel_version.startswith("6.1.0-") and debian.kernel_version.endswith("-arm64")


@pytest.mark.debian
def test_kernel_image_config_and_symvers_are_the_real_files(debian: fx.FixtureSet) -> None:
    """Image carries the arm64 'ARMd' magic; config and Module.symvers are the kernel's."""
    with debian.kernel_image.open("rb") as fh:
        head = fh.read(64)
    assert head[0x38:0x3C] == b"ARMd"
    config = debian.config.read_text()
    assert "CONFIG_MODVERSIONS=y" in config and "CONFIG_ARM64_MODULE_PLTS=y" in config
    first = debian.symvers.read_text().splitlines()[0].split("\t")
    assert first[0].startswith("0x") and first[3].startswith("EXPORT_SYMBOL")
    for ko in debian.modules.values():
        assert ko.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.debian
def test_manifest_records_versions_and_no_archive_uri(debian: fx.FixtureSet) -> None:
    """The manifest names packages and versions but never an archive host."""
    text = (debian.root / fx.MANIFEST).read_text()
    meta = json.loads(text)
    assert meta["package_version"]
    # `pinned` says whether the pinned kernel was served (else the newest 6.1 with headers)
    assert meta["pinned"] is (meta["package_version"] == fx.PIN_VERSION
                              and debian.kernel_version.startswith(fx.PIN_ABI + "-"))
    assert "://" not in text
    assert "://" not in Path(fx.__file__).read_text().replace('"[a-z][a-z0-9+.-]*://', "")


@pytest.mark.debian
def test_fetch_leaves_host_dpkg_architectures_alone(debian: fx.FixtureSet) -> None:
    """The private apt state never adds arm64 as a foreign architecture of the host."""
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg not installed")
    out = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                         text=True, check=True).stdout
    assert "arm64" not in out.split()


def test_available_is_none_for_an_empty_cache(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a manifest `available()` returns None and touches no network."""
    monkeypatch.setenv("SECVMA_CACHE", str(tmp_path))
    assert fx.cache_root() == tmp_path
    assert fx.available() is None
    (tmp_path / fx.MANIFEST).write_text("{not json")
    assert fx.available() is None


def test_fetch_without_debian_sources_is_unavailable(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with no Debian apt sources gives FixturesUnavailable with the reason."""
    monkeypatch.setenv("SECVMA_CACHE", str(tmp_path))
    monkeypatch.setattr(fx, "_system_sources", lambda: [])
    with pytest.raises(fx.FixturesUnavailable, match="no Debian apt sources"):
        fx.fetch()


class _FakeApt:
    def __init__(self, served: dict[str, list[str]]) -> None:
        self.served = served

    def versions(self, pkg: str) -> list[str]:
        return self.served.get(pkg, [])

    def pkgnames(self) -> list[str]:
        return list(self.served)


def test_pinned_version_is_used_when_served() -> None:
    """When the archive serves the pin, image and headers of exactly that version are chosen."""
    img = f"linux-image-{fx.PIN_ABI}-arm64-unsigned"
    hdr = f"linux-headers-{fx.PIN_ABI}-arm64"
    apt = _FakeApt({img: [fx.PIN_VERSION], hdr: [fx.PIN_VERSION]})
    assert fx._choose_packages(apt) == (fx.PIN_ABI, fx.PIN_VERSION, img, hdr, True)  # type: ignore[arg-type]


def test_missing_pin_falls_back_to_newest_6_1_with_headers() -> None:
    """Without the pin, the newest 6.1 ABI that has both image and headers is chosen."""
    apt = _FakeApt({
        "linux-image-6.1.0-57-arm64-unsigned": ["6.1.192-3"],
        "linux-headers-6.1.0-57-arm64": ["6.1.192-3"],
        "linux-image-6.1.0-58-arm64": ["6.1.200-1"],  # no headers: skipped
        "linux-image-6.1.0-40-arm64": ["6.1.150-1"],
        "linux-headers-6.1.0-40-arm64": ["6.1.150-1"],
    })
    got = fx._choose_packages(apt)  # type: ignore[arg-type]
    assert got == ("6.1.0-57", "6.1.192-3", "linux-image-6.1.0-57-arm64-unsigned",
                   "linux-headers-6.1.0-57-arm64", False)


def test_no_6_1_kernel_at_all_is_unavailable() -> None:
    """An archive without any 6.1 arm64 kernel gives FixturesUnavailable."""
    with pytest.raises(fx.FixturesUnavailable, match=r"6\.1"):
        fx._choose_packages(_FakeApt({}))  # type: ignore[arg-type]
