"""The `secvma sign/verify/modinfo/relocate` and `secvma fixtures` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma.cli import main
from secvma.fixtures import FixtureSet

pytestmark = pytest.mark.debian
SEED = "100df9e44a5516fd053dc9ede29914b05d162c3faebbd1fb1897f8169c77a77b"
PUB = "07f8993d1a43239a925ad3d02124b931b7f1d0531122f35d63c85cf79f3f4eca"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "seed").write_text(SEED)
    (tmp_path / "pub").write_text(PUB)
    return tmp_path / "seed", tmp_path / "pub"


def test_sign_prints_128_hex_digits_and_verify_accepts_it(debian: FixtureSet,
                                                          keys: tuple[Path, Path]) -> None:
    """`sign` prints the signature alone on stdout; `verify --pubkey` exits 0 on it."""
    ko = str(debian.modules["libcrc32c"])
    r = CliRunner().invoke(main, ["sign", ko, "--key", str(keys[0])])
    assert r.exit_code == 0, r.output
    sig = r.stdout.strip()
    assert len(bytes.fromhex(sig)) == 64  # an Ed25519 signature, hex, nothing else
    r = CliRunner().invoke(main, ["verify", ko, "--pubkey", str(keys[1]), "--signature", sig])
    assert r.exit_code == 0 and r.stdout.startswith("valid")
    flipped = f"{int(sig[:2], 16) ^ 1:02x}" + sig[2:]
    r = CliRunner().invoke(main, ["verify", ko, "--pubkey", str(keys[1]), "--signature", flipped])
    assert r.exit_code != 0 and not r.stdout.startswith("valid")


def test_verify_rejects_signature_of_another_module(debian: FixtureSet,
                                                    keys: tuple[Path, Path]) -> None:
    """A signature for libcrc32c does not verify xfs: exit 1 with the reason."""
    sig = CliRunner().invoke(main, ["sign", str(debian.modules["libcrc32c"]),
                                    "--key", str(keys[0])]).stdout.strip()
    r = CliRunner().invoke(main, ["verify", str(debian.modules["xfs"]), "--pubkey", str(keys[1]),
                                  "--signature", sig])
    assert r.exit_code == 1 and "does not match" in r.stdout


def test_verify_cert_accepts_debian_module_and_rejects_tampered(debian: FixtureSet,
                                                                tmp_path: Path) -> None:
    """`verify --cert` checks the appended PKCS#7 signature; one flipped byte gives exit 1."""
    cert = str(debian.signing_certs[0])
    ko = debian.modules["crypto_engine"]
    r = CliRunner().invoke(main, ["verify", str(ko), "--cert", cert])
    assert r.exit_code == 0 and "sha256" in r.stdout
    bad = bytearray(ko.read_bytes())
    bad[1000] ^= 1
    (tmp_path / "bad.ko").write_bytes(bytes(bad))
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "bad.ko"), "--cert", cert])
    assert r.exit_code == 1 and "does not verify" in r.stdout
    (tmp_path / "cut.ko").write_bytes(bytes(bad[:-5]))
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "cut.ko"), "--cert", cert])
    assert r.exit_code == 1 and "trailer" in r.stdout


def test_verify_needs_exactly_one_mode(debian: FixtureSet) -> None:
    """Neither --cert nor --pubkey is a usage error (exit 2)."""
    r = CliRunner().invoke(main, ["verify", str(debian.modules["xfs"])])
    assert r.exit_code == 2


def test_modinfo_json_lists_relocations_imports_exports_signature(debian: FixtureSet) -> None:
    """`modinfo --json` reports relocation counts by type, imports, exports and signatures."""
    r = CliRunner().invoke(main, ["modinfo", str(debian.modules["libcrc32c"]), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["name"] == "libcrc32c" and info["relocation_total"] == 27
    assert {e["name"] for e in info["exports"]} == {"crc32c", "crc32c_impl"}
    assert info["linux_signature"]["digest"] == "sha256"
    assert info["secvma_message"]["checklist"][0] == ".text"
    r = CliRunner().invoke(main, ["modinfo", str(debian.modules["xfs"])])
    assert r.exit_code == 0 and "R_AARCH64_CALL26" in r.stdout


def test_relocate_writes_sections_and_layout(debian: FixtureSet, tmp_path: Path) -> None:
    """`relocate` links xfs after libcrc32c and writes every allocated section plus layout.json."""
    r = CliRunner().invoke(main, [
        "relocate", str(debian.modules["xfs"]), "--out", str(tmp_path / "out"),
        "--symvers", str(debian.symvers), "--dep", str(debian.modules["libcrc32c"]), "--json"])
    assert r.exit_code == 0, r.output
    layout = json.loads((tmp_path / "out" / "layout.json").read_text())
    assert layout["relocations"] == 39798
    text = layout["sections"][".text"]
    assert text["address"] == "0xffff800008000000"
    assert (tmp_path / "out" / text["file"]).stat().st_size == text["size"]


def test_relocate_reports_unresolved_symbols(debian: FixtureSet, tmp_path: Path) -> None:
    """Without its dependency xfs cannot resolve crc32c: exit 1 naming the symbol."""
    r = CliRunner().invoke(main, ["relocate", str(debian.modules["xfs"]), "--out",
                                  str(tmp_path / "o"), "--symvers", str(debian.symvers)])
    assert r.exit_code == 1 and "crc32c" in r.output


def test_fixtures_path_and_fetch_json(debian: FixtureSet) -> None:
    """`fixtures path --json` (no network) and `fixtures fetch --json` describe the cache."""
    r = CliRunner().invoke(main, ["fixtures", "path", "--json"])
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["available"] and info["kernel_version"] == debian.kernel_version
    r = CliRunner().invoke(main, ["fixtures", "fetch", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["modules"]["xfs"].endswith("xfs.ko")
