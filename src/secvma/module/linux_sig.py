"""Linux appended module signatures: `~Module signature appended~` + PKCS#7 (CMS) SignedData.

Layout at the end of a signed `.ko` (kernel `module_signature.h`):
    ELF bytes ‖ PKCS#7 DER (sig_len bytes) ‖ struct module_signature (12 B) ‖ magic (28 B)
with `struct module_signature { u8 algo, hash, id_type, signer_len, key_id_len, pad[3];
__be32 sig_len; }`. For PKCS#7 (`id_type == 2`) every other field must be zero
(`mod_check_sig`). Debian's blobs carry no certificates and no signed attributes, so the
signature is directly over the ELF bytes; signed attributes are handled anyway (RFC 5652
§5.4: then the signature covers the DER SET of attributes, whose messageDigest must match).

The certificate is not shipped as a file; it sits as plain DER inside the uncompressed arm64
Image (`system_certificate_list`), which `certificates_from_image` recovers by scanning.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from secvma.module.errors import (
    InvalidModuleSignature,
    KeyFormatError,
    MalformedSignature,
    ModuleError,
)

__all__ = [
    "MAGIC",
    "AppendedSignature",
    "ModuleError",
    "SignerId",
    "cert_matches",
    "cert_to_pem",
    "certificates_from_image",
    "load_certificate",
    "parse_appended_signature",
    "sign_appended",
    "split_appended_signature",
    "verify_appended_signature",
]

MAGIC = b"~Module signature appended~\n"
_TRAILER = struct.Struct(">BBBBB3sI")
PKEY_ID_PKCS7 = 2

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class SignerId:
    """Who signed: issuer + serial (the usual form) or a subject key identifier."""

    issuer: str | None
    issuer_der: bytes | None
    serial: int | None
    key_id: bytes | None

    def describe(self) -> str:
        if self.serial is not None:
            return f"issuer '{self.issuer}', serial {self.serial:X}"
        return f"subject key id {self.key_id.hex() if self.key_id else '?'}"


@dataclass(frozen=True)
class AppendedSignature:
    """A parsed trailer and the fields of its (first) PKCS#7 SignerInfo."""

    content: bytes  # the signed ELF bytes (file minus signature)
    pkcs7: bytes
    id_type: int
    sig_len: int
    signer: SignerId
    digest_algorithm: str  # "sha256" | "sha384" | "sha512"
    signature_algorithm: str  # asn1crypto name, e.g. "rsassa_pkcs1v15", "sha256_ecdsa"
    signature: bytes
    signed_attrs: bytes | None  # DER (as a SET) when present
    message_digest: bytes | None


def split_appended_signature(data: bytes) -> tuple[bytes, AppendedSignature | None]:
    """(ELF bytes, parsed signature) or (data, None) when there is no trailer magic."""
    if not data.endswith(MAGIC):
        return data, None
    sig = parse_appended_signature(data)
    return sig.content, sig


def parse_appended_signature(data: bytes) -> AppendedSignature:
    """Parse the trailer and PKCS#7 blob; raises MalformedSignature on anything odd."""
    if not data.endswith(MAGIC):
        raise MalformedSignature("no '~Module signature appended~' trailer")
    end = len(data) - len(MAGIC)
    if end < _TRAILER.size:
        raise MalformedSignature("truncated trailer: no room for struct module_signature")
    algo, hsh, id_type, signer_len, key_id_len, pad, sig_len = _TRAILER.unpack_from(
        data, end - _TRAILER.size
    )
    end -= _TRAILER.size
    if id_type != PKEY_ID_PKCS7:
        raise MalformedSignature(f"module signature id_type {id_type}, only PKCS#7 (2) supported")
    if algo or hsh or signer_len or key_id_len or pad != b"\0\0\0":
        raise MalformedSignature("struct module_signature: algo/hash/signer/key_id/pad not zero")
    if sig_len == 0 or sig_len > end:
        raise MalformedSignature(f"sig_len {sig_len} does not fit in the {end}-byte file")
    pkcs7 = bytes(data[end - sig_len : end])
    content = bytes(data[: end - sig_len])
    fields = _parse_pkcs7(pkcs7)
    return AppendedSignature(content, pkcs7, id_type, sig_len, *fields)


def _parse_pkcs7(
    blob: bytes,
) -> tuple[SignerId, str, str, bytes, bytes | None, bytes | None]:
    """Pull the first SignerInfo out of a ContentInfo/SignedData blob."""
    try:
        info = asn1_cms.ContentInfo.load(blob, strict=True)
        if info["content_type"].native != "signed_data":
            raise MalformedSignature(f"PKCS#7 content type {info['content_type'].native}")
        sd = info["content"]
        signers = sd["signer_infos"]
        if len(signers) == 0:
            raise MalformedSignature("PKCS#7 SignedData has no SignerInfo")
        si = signers[0]
        sid = si["sid"]
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            signer = SignerId(ias["issuer"].human_friendly, ias["issuer"].dump(),
                              int(ias["serial_number"].native), None)
        else:
            signer = SignerId(None, None, None, bytes(sid.chosen.native))
        digest = str(si["digest_algorithm"]["algorithm"].native)
        sig_alg = str(si["signature_algorithm"]["algorithm"].native)
        signature = bytes(si["signature"].native)
        attrs = si["signed_attrs"]
        signed_attrs: bytes | None = None
        message_digest: bytes | None = None
        if attrs.native is not None and len(attrs) > 0:
            # RFC 5652 §5.4: the signature covers the attributes re-encoded as a SET OF.
            der = attrs.dump()
            signed_attrs = b"\x31" + der[1:]
            for attr in attrs:
                if attr["type"].native == "message_digest":
                    message_digest = bytes(attr["values"][0].native)
    except MalformedSignature:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise MalformedSignature(f"bad PKCS#7 blob: {exc}") from exc
    if digest not in _HASHES:
        raise MalformedSignature(f"unsupported digest algorithm {digest}")
    return signer, digest, sig_alg, signature, signed_attrs, message_digest


def load_certificate(source: bytes | Path) -> x509.Certificate:
    """An X.509 certificate from PEM or DER bytes (or a file holding them)."""
    try:
        data = source.read_bytes() if isinstance(source, Path) else source
    except OSError as exc:
        raise KeyFormatError(f"cannot read certificate {source!s}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise KeyFormatError(f"not an X.509 certificate (PEM or DER): {exc}") from exc


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_matches(cert: x509.Certificate, signer: SignerId) -> bool:
    """Does `cert` identify the signer (issuer+serial, or subject key identifier)?"""
    if signer.serial is not None:
        return cert.serial_number == signer.serial and (
            signer.issuer_der is None or cert.issuer.public_bytes() == signer.issuer_der
        )
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return ski == signer.key_id


def verify_appended_signature(data: bytes, cert: x509.Certificate) -> AppendedSignature:
    """Verify a signed module against `cert`; returns the parsed signature or raises.

    Raises MalformedSignature (no/bad trailer) or InvalidModuleSignature (wrong key, tampered
    bytes, signer mismatch, unsupported key type).
    """
    sig = parse_appended_signature(data)
    h = _HASHES[sig.digest_algorithm]
    if sig.signed_attrs is not None:
        digest = hashlib.new(sig.digest_algorithm, sig.content).digest()
        if sig.message_digest != digest:
            raise InvalidModuleSignature("messageDigest attribute does not match the module")
        signed = sig.signed_attrs
    else:
        signed = sig.content
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig.signature, signed, padding.PKCS1v15(), h())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig.signature, signed, ec.ECDSA(h()))
        else:
            raise InvalidModuleSignature(f"unsupported certificate key type {type(key).__name__}")
    except InvalidSignature as exc:
        who = "" if cert_matches(cert, sig.signer) else " (certificate is not the signer's)"
        raise InvalidModuleSignature(
            f"{sig.digest_algorithm}/{type(key).__name__.removeprefix('_')} signature "
            f"does not verify{who}"
        ) from exc
    return sig


def sign_appended(data: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    """`data` (an unsigned .ko) with a Linux appended signature, as the kernel's sign-file makes.

    PKCS#7 detached SignedData over the ELF bytes, SHA-256, no signed attributes and no
    certificates in the blob (the signer is named by issuer and serial), then the 12-byte
    `struct module_signature` (id_type 2) and the magic. Raises ModuleError if `data` is
    already signed.
    """
    from cryptography.hazmat.primitives.serialization import pkcs7

    if data.endswith(MAGIC):
        raise ModuleError("module is already signed")
    opts = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes,
            pkcs7.PKCS7Options.NoCerts, pkcs7.PKCS7Options.Binary]
    blob = (pkcs7.PKCS7SignatureBuilder().set_data(data)
            .add_signer(cert, key, hashes.SHA256()).sign(serialization.Encoding.DER, opts))
    return data + blob + _TRAILER.pack(0, 0, PKEY_ID_PKCS7, 0, 0, b"\0\0\0", len(blob)) + MAGIC


_CERT_START = re.compile(rb"\x30\x82(..)\x30\x82", re.DOTALL)


def certificates_from_image(image: bytes) -> list[x509.Certificate]:
    """Every DER X.509 certificate embedded in a kernel Image, in file order, deduplicated.

    The kernel keeps `system_certificate_list` as concatenated DER; a SEQUENCE with a long
    two-byte length immediately followed by another (the TBSCertificate) marks a candidate.
    """
    out: list[x509.Certificate] = []
    seen: set[bytes] = set()
    for m in _CERT_START.finditer(image):
        length = int.from_bytes(m.group(1), "big") + 4
        if not 200 <= length <= 16384:
            continue
        blob = image[m.start() : m.start() + length]
        if blob in seen:
            continue
        try:
            cert = x509.load_der_x509_certificate(blob)
            cert.public_key()
        except (ValueError, TypeError):
            continue
        seen.add(blob)
        out.append(cert)
    return out
