"""Libraries that take cryptography key objects, with HSM keys: signxml (SAML-style XML
signatures), securesystemslib's CryptoSigner and TUF metadata, and cryptography's X.509
builders (CA certificate, CSR, leaf from a CSR, CRL; PKCS#1 v1.5 and PSS)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hsmkey.keys import HSMPrivateKey


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def private(pool: SessionPool, label: str) -> HSMPrivateKey:
    return HSMJWK.from_hsm(pool, key_label=label).hsm_private_key


NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def self_signed(key: HSMPrivateKey, cn: str, ca: bool = False) -> x509.Certificate:
    algorithm = None if key.public_key().__class__.__name__.startswith("Ed") else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, algorithm)  # type: ignore[arg-type]
    )


# -- signxml ---------------------------------------------------------------------------------

SAML_ASSERTION = (
    b'<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_a1" '
    b'Version="2.0" IssueInstant="2026-12-04T12:00:00Z"><saml:Issuer>https://idp.example'
    b"</saml:Issuer><saml:Subject><saml:NameID>alice@example.com</saml:NameID></saml:Subject>"
    b"</saml:Assertion>"
)


@pytest.mark.parametrize(
    ("label", "algorithm"),
    [("rsa-key", "RSA_SHA256"), ("rsa-key", "RSA_SHA512"), ("ec-key", "ECDSA_SHA256"),
     ("ec384-key", "ECDSA_SHA384")],
)  # fmt: skip
def test_signxml_signs_a_saml_assertion_in_the_token(
    pool: SessionPool, label: str, algorithm: str
) -> None:
    from lxml import etree
    from signxml import SignatureMethod, XMLSigner, XMLVerifier

    key = private(pool, label)
    cert = self_signed(key, "idp.example").public_bytes(serialization.Encoding.PEM).decode()
    signer = XMLSigner(signature_algorithm=getattr(SignatureMethod, algorithm))
    signed = signer.sign(etree.fromstring(SAML_ASSERTION), key=key, cert=cert)
    result = XMLVerifier().verify(etree.tostring(signed), x509_cert=cert)
    assert result.signed_xml is not None
    assert result.signed_xml.find(".//{*}NameID").text == "alice@example.com"
    tampered = etree.tostring(signed).replace(b"alice@", b"mallory@")
    from signxml.exceptions import InvalidSignature as XMLInvalidSignature

    with pytest.raises(XMLInvalidSignature):
        XMLVerifier().verify(tampered, x509_cert=cert)


# -- securesystemslib and TUF ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "scheme"),
    [("rsa-key", None), ("rsa-key", "rsa-pkcs1v15-sha256"), ("rsa-key", "rsassa-pss-sha512"),
     ("ec-key", None), ("ec384-key", None), ("ed-key", None)],
)  # fmt: skip
def test_securesystemslib_crypto_signer(pool: SessionPool, label: str, scheme: str | None) -> None:
    from securesystemslib.exceptions import UnverifiedSignatureError
    from securesystemslib.signer import CryptoSigner, SSlibKey

    key = private(pool, label)
    public = SSlibKey.from_crypto(key.public_key(), scheme=scheme) if scheme else None
    signer = CryptoSigner(key, public)
    signature = signer.sign(b"in-toto link")
    signer.public_key.verify_signature(signature, b"in-toto link")
    with pytest.raises(UnverifiedSignatureError):
        signer.public_key.verify_signature(signature, b"another link")
    if scheme is not None:
        assert signer.public_key.scheme == scheme


def test_tuf_root_and_targets_signed_in_the_token(pool: SessionPool) -> None:
    from securesystemslib.signer import CryptoSigner
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root, Targets

    root_signer = CryptoSigner(private(pool, "ec384-key"))
    targets_signer = CryptoSigner(private(pool, "ed-key"))
    root = Root(expires=NOW + datetime.timedelta(days=365))
    for role in (Root.type, "snapshot", "timestamp"):
        root.add_key(root_signer.public_key, role)
    root.add_key(targets_signer.public_key, Targets.type)
    root_md = Metadata(root)
    root_md.sign(root_signer)
    root.verify_delegate(Root.type, root_md.signed_bytes, root_md.signatures)
    targets_md = Metadata(Targets(expires=NOW + datetime.timedelta(days=7)))
    targets_md.sign(targets_signer)
    root.verify_delegate(Targets.type, targets_md.signed_bytes, targets_md.signatures)
    # Round trip through JSON, as a repository publishes it.
    published = Metadata.from_bytes(root_md.to_bytes())
    root.verify_delegate(Root.type, published.signed_bytes, published.signatures)
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate(
            Targets.type, root_md.signed_bytes, root_md.signatures
        )  # signed by the wrong key


# -- cryptography's X.509 builders --------------------------------------------------------------


def test_ca_csr_leaf_and_crl(pool: SessionPool) -> None:
    ca_key = private(pool, "ec-key")
    ca = self_signed(ca_key, "Test CA", ca=True)
    ca.verify_directly_issued_by(ca)
    leaf_key = private(pool, "rsa-key")
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name("service.example"))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("service.example")]), critical=False
        )
        .sign(leaf_key, hashes.SHA256(), rsa_padding=pss)
    )
    assert csr.is_signature_valid
    leaf = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(1001)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=7))
        .sign(ca_key, hashes.SHA256())
    )
    leaf.verify_directly_issued_by(ca)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(NOW)
        .next_update(NOW + datetime.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leaf.serial_number)
            .revocation_date(NOW)
            .build()
        )
        .sign(ca_key, hashes.SHA384())
    )
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(1001) is not None
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert not crl.is_signature_valid(other)
    with pytest.raises(InvalidSignature):
        ca.public_key().verify(  # type: ignore[call-arg]
            leaf.signature, leaf.tbs_certificate_bytes + b"x", ec.ECDSA(hashes.SHA256())
        )
