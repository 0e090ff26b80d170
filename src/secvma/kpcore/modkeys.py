"""The hypervisor's module signature table (`ModuleKeys`) and the signing helper for tests.

C: kint/HostModule.c:verify_mod and its static `struct sig_info sig[5]` {name, hex}; the
public key is a compile-time constant there. Here nothing is embedded: the key and the table
come from files given at policy creation (`make_policy(..., module_keys=...)`, `secvma run
--module-keys PUBKEY --module-sigs TABLE`).

Files::

    public key   Ed25519: PEM (SubjectPublicKeyInfo, or a PKCS#8 private key: its public half),
                 32 raw bytes, or 64 hex digits
    table        JSON {"name": "128 hex digits", ...}, or lines "name hex" (blank lines and
                 lines starting with '#' ignored)

Lookup (`ModuleKeys.lookup`): `hardened` matches the `.modinfo` name exactly; `secvma2024`
(quirk `mod_name_prefix`, spec §11 gap 6) reproduces `strncmp(name, entry, strlen(name))` over
the table in order, so a prefix of a table name (and the empty name) selects that entry.

Signing (tests, bench, `secvma run`'s per-run key): the signed message is the one of
docs/eval-spec.md §3.3 as `secvma.module.secvma_sig.build_message(elf, SECVMA_4_18)` computes
it, which is the kernel view the testbed kernel hands EL2 (see docs/modload-contract.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secvma.module import secvma_sig
from secvma.module.api import open_module
from secvma.module.config import SECVMA_4_18, LoaderConfig
from secvma.module.errors import KeyFormatError, MalformedSignature

MAX_NAME = 99
"""`el2_get_modinfo` copies the name into a 100-byte buffer (with its NUL)."""


@dataclass(frozen=True)
class ModuleKeys:
    """Ed25519 public key + name -> 64-byte signature (insertion order kept for the C lookup)."""

    public_key: Ed25519PublicKey
    signatures: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, sig in self.signatures.items():
            if not name or len(name) > MAX_NAME:
                raise KeyFormatError(f"module name {name!r}: 1..{MAX_NAME} characters")
            if len(sig) != secvma_sig.SIGNATURE_BYTES:
                raise MalformedSignature(f"{name}: signature is {len(sig)} bytes, need 64")

    @classmethod
    def from_files(cls, pubkey_path: Path | str, table_path: Path | str) -> ModuleKeys:
        """Load the public key and the signature table (module docstring for the formats)."""
        key = secvma_sig.load_public_key(pubkey_path)
        try:
            text = Path(table_path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFormatError(f"cannot read signature table {table_path}: {exc}") from exc
        return cls(key, parse_table(text))

    def lookup(self, name: str, *, prefix: bool) -> tuple[str, bytes] | None:
        """(table name, signature) for module `name`; None if no entry matches."""
        if not prefix:
            sig = self.signatures.get(name)
            return None if sig is None else (name, sig)
        for entry, sig in self.signatures.items():  # strncmp(name, entry, strlen(name)) == 0
            if entry[:len(name)] == name:
                return entry, sig
        return None

    def public_bytes(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)


def parse_table(text: str) -> dict[str, bytes]:
    """The signature table: JSON object or `name hex` lines (KeyFormatError if malformed)."""
    stripped = text.strip()
    pairs: list[tuple[str, str]] = []
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise KeyFormatError(f"signature table: bad JSON: {exc}") from exc
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise KeyFormatError("signature table: JSON must map names to hex strings")
        pairs = [(str(k), v) for k, v in obj.items()]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            cols = line.split()
            if len(cols) != 2:
                raise KeyFormatError(f"signature table line {n}: expected 'name hex'")
            pairs.append((cols[0], cols[1]))
    out: dict[str, bytes] = {}
    for name, hx in pairs:
        if name in out:
            raise KeyFormatError(f"signature table: {name} listed twice")
        out[name] = secvma_sig.parse_signature_hex(hx)
    return out


def format_table(signatures: Mapping[str, bytes]) -> str:
    """The `name hex` text form of a table."""
    return "".join(f"{n} {s.hex()}\n" for n, s in signatures.items())


# --- signing ---------------------------------------------------------------------------------


def sign_module_bytes(private_key: Ed25519PrivateKey, data: bytes,
                      cfg: LoaderConfig = SECVMA_4_18) -> tuple[str, bytes]:
    """(`.modinfo` name, SECvma signature) of a module file (`.ko`, `.ko.xz`, `.ko.zst`)."""
    image = open_module(data)
    return image.name, secvma_sig.sign_module(image.elf, private_key, cfg)


def sign_modules(private_key: Ed25519PrivateKey, modules: Iterable[bytes],
                 cfg: LoaderConfig = SECVMA_4_18) -> dict[str, bytes]:
    """A signature table for `modules` (name -> signature)."""
    table: dict[str, bytes] = {}
    for data in modules:
        name, sig = sign_module_bytes(private_key, data, cfg)
        table[name] = sig
    return table


def keys_for(private_key: Ed25519PrivateKey, modules: Iterable[bytes],
             cfg: LoaderConfig = SECVMA_4_18) -> ModuleKeys:
    """`ModuleKeys` accepting exactly `modules`, signed with `private_key`."""
    return ModuleKeys(private_key.public_key(), sign_modules(private_key, modules, cfg))


def write_key_files(directory: Path | str, private_key: Ed25519PrivateKey,
                    signatures: Mapping[str, bytes]) -> tuple[Path, Path, Path]:
    """Write `module-key.pem` (private, mode 0600), `module-key.pub` (PEM) and
    `module-sigs.txt` into `directory`; returns (private, public, table) paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv = d / "module-key.pem"
    pub = d / "module-key.pub"
    table = d / "module-sigs.txt"
    priv.write_bytes(private_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    table.write_text(format_table(signatures))
    return priv, pub, table
