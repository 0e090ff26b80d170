"""Linux appended module signatures: Debian's real ones and synthetic RSA/ECDSA/SHA-2 variants."""

from __future__ import annotations

import datetime
import hashlib
import struct

import pytest
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from secvma.fixtures import MODULE_PATHS, FixtureSet
from secvma.module.errors import InvalidModuleSignature, MalformedSignature
from secvma.module.linux_sig import (
    MAGIC,
    cert_matches,
    certificates_from_image,
    load_certificate,
    parse_appended_signature,
    split_appended_signature,
    verify_appended_signature,
)

HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                                           "sha512": hashes.SHA512()}
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def make_cert(key: Key, cn: str = "test module key") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))


def sign_like_kernel(content: bytes, key: Key, cert: x509.Certificate, digest: str,
                     signed_attrs: bool = False) -> bytes:
    """content ‖ PKCS#7 ‖ struct module_signature ‖ magic, as scripts/sign-file makes it."""
    to_sign = content
    attrs = None
    if signed_attrs:
        md = hashlib.new(digest, content).digest()
        attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "message_digest", "values": [md]}),
        ])
        to_sign = attrs.dump()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(to_sign, padding.PKCS1v15(), HASHES[digest])
        alg = "rsassa_pkcs1v15"
    else:
        sig = key.sign(to_sign, ec.ECDSA(HASHES[digest]))
        alg = f"{digest}_ecdsa"
    issuer = asn1_x509.Name.load(cert.issuer.public_bytes())
    si = {
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber(
            {"issuer": issuer, "serial_number": cert.serial_number})}),
        "digest_algorithm": {"algorithm": digest},
        "signature_algorithm": {"algorithm": alg},
        "signature": sig,
    }
    if attrs is not None:
        si["signed_attrs"] = attrs
    sd = cms.SignedData({"version": "v1", "digest_algorithms": [{"algorithm": digest}],
                         "encap_content_info": {"content_type": "data"},
                         "signer_infos": [cms.SignerInfo(si)]})
    p7 = bytes(cms.ContentInfo({"content_type": "signed_data", "content": sd}).dump())
    return content + p7 + struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, b"\0\0\0", len(p7)) + MAGIC


def _p7_garbage(d: bytes) -> bytes:
    """Overwrite the first 8 bytes of the PKCS#7 blob."""
    start = len(d) - len(MAGIC) - 12 - struct.unpack(">I", d[-len(MAGIC) - 4 : -len(MAGIC)])[0]
    return d[:start] + b"\xff" * 8 + d[start + 8 :]


CONTENT = b"\x7fELF" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
@pytest.mark.parametrize("attrs", [False, True])
def test_rsa_and_ecdsa_signatures_over_sha2_verify(rsa_key: rsa.RSAPrivateKey,
                                                   ec_key: ec.EllipticCurvePrivateKey,
                                                   digest: str, kind: str, attrs: bool) -> None:
    """RSA PKCS#1 v1.5 and ECDSA P-384 over SHA-256/384/512 (with and without signed
    attributes) verify against the signer's certificate."""
    key: Key = rsa_key if kind == "rsa" else ec_key
    cert = make_cert(key)
    signed = sign_like_kernel(CONTENT, key, cert, digest, attrs)
    sig = verify_appended_signature(signed, cert)
    assert sig.content == CONTENT and sig.digest_algorithm == digest
    assert cert_matches(cert, sig.signer)
    tampered = bytearray(signed)
    tampered[100] ^= 1
    with pytest.raises(InvalidModuleSignature):
        verify_appended_signature(bytes(tampered), cert)


def test_signature_by_another_key_is_invalid(rsa_key: rsa.RSAPrivateKey,
                                             ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Verifying with a certificate of a different key fails and says it is not the signer's."""
    signed = sign_like_kernel(CONTENT, rsa_key, make_cert(rsa_key), "sha256")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidModuleSignature, match="not the signer"):
        verify_appended_signature(signed, make_cert(other))
    with pytest.raises(InvalidModuleSignature):
        verify_appended_signature(signed, make_cert(ec_key))


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d[:-1], "no '~Module signature"),
    (lambda d: MAGIC, "truncated trailer"),
    (lambda d: d[:-len(MAGIC) - 4] + struct.pack(">I", 1 << 30) + MAGIC, "sig_len"),
    (lambda d: d[:-len(MAGIC) - 4] + struct.pack(">I", 0) + MAGIC, "sig_len"),
    (lambda d: d[:-len(MAGIC) - 10] + b"\x01" + d[-len(MAGIC) - 9:], "id_type"),
    (lambda d: d[:-len(MAGIC) - 12] + b"\x01" + d[-len(MAGIC) - 11:], "algo"),
    (lambda d: _p7_garbage(d), "PKCS#7"),
    (lambda d: d[:-len(MAGIC) - 16] + struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, b"\0\0\0", 30)
     + MAGIC, "PKCS#7"),
])
def test_bad_trailers_are_malformed(rsa_key: rsa.RSAPrivateKey, mutate: object,
                                    match: str) -> None:
    """Truncated or inconsistent trailers and garbage PKCS#7 raise MalformedSignature."""
    signed = sign_like_kernel(CONTENT, rsa_key, make_cert(rsa_key), "sha256")
    assert callable(mutate)
    with pytest.raises(MalformedSignature, match=match):
        parse_appended_signature(mutate(signed))


def test_unsigned_data_splits_without_signature() -> None:
    """Without the magic the whole input is the ELF and no signature is reported."""
    assert split_appended_signature(CONTENT) == (CONTENT, None)


@pytest.mark.debian
@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_debian_modules_verify_with_certificate_from_image(debian: FixtureSet,
                                                           name: str) -> None:
    """Each fixture's RSA-4096/SHA-256 signature verifies with the cert found in the Image."""
    cert = load_certificate(debian.signing_certs[0])
    data = debian.modules[name].read_bytes()
    sig = verify_appended_signature(data, cert)
    assert (sig.digest_algorithm, sig.id_type, sig.signed_attrs) == ("sha256", 2, None)
    assert cert.public_key().key_size == 4096  # type: ignore[union-attr]
    assert len(data) == len(sig.content) + sig.sig_len + 12 + len(MAGIC)
    tampered = bytearray(data)
    tampered[len(sig.content) // 2] ^= 0x40
    with pytest.raises(InvalidModuleSignature):
        verify_appended_signature(bytes(tampered), cert)


@pytest.mark.debian
def test_image_holds_exactly_the_module_signing_certificate(debian: FixtureSet) -> None:
    """The unsigned 6.1 Image embeds the build-time key that signed the modules."""
    certs = certificates_from_image(debian.kernel_image.read_bytes())
    sig = parse_appended_signature(debian.modules["xfs"].read_bytes())
    matching = [c for c in certs if cert_matches(c, sig.signer)]
    assert len(matching) == 1
    assert "Build time autogenerated kernel key" in matching[0].subject.rfc4514_string()
    assert matching[0] == load_certificate(debian.signing_certs[0])
