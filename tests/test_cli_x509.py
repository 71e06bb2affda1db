"""``hsmkey csr`` and ``hsmkey cert`` end to end: certificates made with token keys, checked
by ``openssl verify -x509_strict`` (a root CA, an RSA-PSS intermediate, leaves)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from test_cli import assert_error, ok, run

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def verified(chain: list[Path], leaf: Path, *extra: str) -> str:
    """``openssl verify -x509_strict``: the root first, then intermediates, then the leaf."""
    argv = ["verify", "-x509_strict", *extra, "-CAfile", str(chain[0])]
    for intermediate in chain[1:]:
        argv += ["-untrusted", str(intermediate)]
    proc = openssl(*argv, str(leaf))
    assert proc.returncode == 0, proc
    assert proc.stdout.strip() == f"{leaf}: OK", proc
    return proc.stdout


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate | x509.CertificateSigningRequest, cls: type) -> object:
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Root CA (token key ec384-key), intermediate (rsa-key, RSA-PSS), two leaves."""
    d = tmp_path_factory.mktemp("pki")
    ok(
        "cert", "--self-signed", "--ca", "--subject", "CN=hsmkey Test Root CA,O=hsmkey",
        "--days", "3650", "--label", "ec384-key", "--out", str(d / "root.pem"),
    )  # fmt: skip
    ok(
        "csr", "--label", "rsa-key", "--subject", "/O=hsmkey/CN=hsmkey Intermediate", "--pss",
        "--out", str(d / "int.csr"),
    )  # fmt: skip
    ok(
        "cert", "--csr", str(d / "int.csr"), "--issuer-cert", str(d / "root.pem"),
        "--label", "ec384-key", "--ca", "--path-length", "0", "--days", "1825",
        "--out", str(d / "int.pem"),
    )  # fmt: skip
    csr = ok(
        "csr", "--label", "ed-key", "--subject", "CN=service.example",
        "--san", "DNS:service.example", "--san", "DNS:www.service.example",
        "--san", "IP:127.0.0.1",
    ).stdout  # fmt: skip
    (d / "leaf.csr").write_text(csr)
    ok(
        "cert", "--csr", str(d / "leaf.csr"), "--issuer-cert", str(d / "int.pem"),
        "--label", "rsa-key", "--pss", "--days", "90",
        "--extended-key-usage", "serverAuth,clientAuth", "--out", str(d / "leaf.pem"),
    )  # fmt: skip
    # A second leaf, an EC P-256 key, issued by the intermediate with PKCS#1 v1.5.
    ok("csr", "--label", "ec-key", "--subject", "CN=client", "--out", str(d / "client.csr"))
    ok(
        "cert", "--csr", str(d / "client.csr"), "--issuer-cert", str(d / "int.pem"),
        "--label", "rsa-key", "--extended-key-usage", "clientAuth", "--out", str(d / "client.pem"),
    )  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def test_root_ca_is_self_signed_and_verifies(pki: dict[str, Path], pool_key: object) -> None:
    root = load(pki["root_pem"])
    verified([pki["root_pem"]], pki["root_pem"])
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "hsmkey Test Root CA"
    )
    assert root.signature_hash_algorithm is not None
    assert root.signature_hash_algorithm.name == "sha384"  # the P-384 default
    basic = ext(root, x509.BasicConstraints)
    assert basic.critical and basic.value == x509.BasicConstraints(ca=True, path_length=None)  # type: ignore[attr-defined]
    usage = ext(root, x509.KeyUsage).value  # type: ignore[attr-defined]
    assert usage.key_cert_sign and usage.crl_sign and usage.digital_signature
    ski = ext(root, x509.SubjectKeyIdentifier).value  # type: ignore[attr-defined]
    aki = ext(root, x509.AuthorityKeyIdentifier).value  # type: ignore[attr-defined]
    assert aki.key_identifier == ski.digest
    assert root.public_key() == pool_key
    root.verify_directly_issued_by(root)
    days = (root.not_valid_after_utc - root.not_valid_before_utc).days
    assert days == 3650


@pytest.fixture(scope="module")
def pool_key(softhsm: SoftHSM) -> object:
    """The public key of the root CA's token key."""
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as pool:
        return HSMJWK.from_hsm(pool, key_label="ec384-key").hsm_private_key.public_key()


def test_csr_is_signed_by_the_token_key(pki: dict[str, Path]) -> None:
    proc = openssl("req", "-in", str(pki["leaf_csr"]), "-noout", "-verify")
    assert proc.returncode == 0 and "verify OK" in proc.stdout + proc.stderr, proc
    csr = x509.load_pem_x509_csr(pki["leaf_csr"].read_bytes())
    assert csr.is_signature_valid
    assert isinstance(csr.public_key(), ed25519.Ed25519PublicKey)
    sans = ext(csr, x509.SubjectAlternativeName).value  # type: ignore[attr-defined]
    assert sans.get_values_for_type(x509.DNSName) == ["service.example", "www.service.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # OpenSSL-style names list the most specific last, like openssl -subj.
    intermediate = x509.load_pem_x509_csr(pki["int_csr"].read_bytes())
    assert intermediate.subject.rfc4514_string() == "CN=hsmkey Intermediate,O=hsmkey"
    assert isinstance(intermediate.signature_algorithm_parameters, padding.PSS)
    proc = openssl("req", "-in", str(pki["int_csr"]), "-noout", "-verify")
    assert proc.returncode == 0, proc


def test_chain_with_an_rsa_pss_intermediate_verifies(pki: dict[str, Path]) -> None:
    chain = [pki["root_pem"], pki["int_pem"]]
    verified([pki["root_pem"]], pki["int_pem"])
    verified(chain, pki["leaf_pem"], "-purpose", "sslserver")
    verified(chain, pki["client_pem"], "-purpose", "sslclient")
    intermediate = load(pki["int_pem"])
    assert ext(intermediate, x509.BasicConstraints).value == x509.BasicConstraints(  # type: ignore[attr-defined]
        ca=True, path_length=0
    )
    assert isinstance(intermediate.public_key(), rsa.RSAPublicKey)
    leaf = load(pki["leaf_pem"])
    assert isinstance(leaf.signature_algorithm_parameters, padding.PSS)
    leaf.verify_directly_issued_by(intermediate)
    assert leaf.issuer == intermediate.subject
    assert ext(leaf, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
    usage = ext(leaf, x509.KeyUsage).value  # type: ignore[attr-defined]
    assert usage.digital_signature and not usage.key_cert_sign and not usage.key_encipherment
    eku = ext(leaf, x509.ExtendedKeyUsage).value  # type: ignore[attr-defined]
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # The SANs come from the CSR; the AKI is the issuer's SKI.
    sans = ext(leaf, x509.SubjectAlternativeName).value  # type: ignore[attr-defined]
    assert "www.service.example" in sans.get_values_for_type(x509.DNSName)
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value  # type: ignore[attr-defined]
    assert aki.key_identifier == ext(intermediate, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    client = load(pki["client_pem"])
    assert isinstance(client.signature_algorithm_parameters, padding.PKCS1v15)
    assert isinstance(client.public_key(), ec.EllipticCurvePublicKey)
    # The intermediate (path length 0) cannot make another CA that verifies.


def test_a_ca_below_path_length_zero_fails_openssl(pki: dict[str, Path], tmp_path: Path) -> None:
    """openssl really checks what the command writes: a CA issued by the pathlen:0
    intermediate does not verify."""
    ok("csr", "--label", "ec-key", "--subject", "CN=too deep", "--out", str(tmp_path / "x.csr"))
    ok(
        "cert", "--csr", str(tmp_path / "x.csr"), "--issuer-cert", str(pki["int_pem"]),
        "--label", "rsa-key", "--ca", "--days", "30", "--out", str(tmp_path / "deep.pem"),
    )  # fmt: skip
    ok("csr", "--label", "ed-key", "--subject", "CN=leaf", "--out", str(tmp_path / "l.csr"))
    ok(
        "cert", "--csr", str(tmp_path / "l.csr"), "--issuer-cert", str(tmp_path / "deep.pem"),
        "--label", "ec-key", "--days", "10", "--out", str(tmp_path / "l.pem"),
    )  # fmt: skip
    proc = openssl(
        "verify", "-x509_strict", "-CAfile", str(pki["root_pem"]),
        "-untrusted", str(pki["int_pem"]), "-untrusted", str(tmp_path / "deep.pem"),
        str(tmp_path / "l.pem"),
    )  # fmt: skip
    assert proc.returncode != 0 and "path length" in (proc.stdout + proc.stderr), proc


def test_json_key_usage_serial_and_hash(pki: dict[str, Path], tmp_path: Path) -> None:
    out = ok(
        "cert", "--self-signed", "--subject", "CN=signer,O=hsmkey", "--label", "ec-key",
        "--key-usage", "digitalSignature,nonRepudiation", "--serial-number", "0x1234",
        "--hash", "sha512", "--days", "7", "--json",
    ).json()  # fmt: skip
    assert out["subject"] == out["issuer"] == "CN=signer,O=hsmkey"
    assert out["serial"] == "1234"
    cert = x509.load_pem_x509_certificate(out["pem"].encode())
    assert cert.serial_number == 0x1234
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA512)
    usage = ext(cert, x509.KeyUsage).value  # type: ignore[attr-defined]
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign
    assert ext(cert, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
    (tmp_path / "signer.pem").write_text(out["pem"])
    verified([tmp_path / "signer.pem"], tmp_path / "signer.pem")
    csr = ok(
        "csr", "--label", "rsa-key", "--subject", "CN=x", "--san", "email:a@example.com",
        "--san", "URI:https://example.com/x", "--json",
    ).json()  # fmt: skip
    assert csr["subject"] == "CN=x" and csr["san"] == ["a@example.com", "https://example.com/x"]
    assert x509.load_pem_x509_csr(csr["pem"].encode()).is_signature_valid


def test_help_lists_the_x509_commands() -> None:
    out = ok("--help").stdout
    assert "csr" in out and "cert" in out
    assert "--issuer-cert" in ok("cert", "--help").stdout


SELF_SIGNED = ["cert", "--self-signed", "--subject", "CN=x", "--label", "ec-key"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["csr", "--subject", "CN=x"], "--label"),
        (["csr", "--label", "ec-key", "--subject", "nonsense"], "cannot read the name"),
        (["csr", "--label", "ec-key", "--subject", "/O=x/junk"], "cannot read the name"),
        (["csr", "--label", "ec-key", "--subject", "CN=x", "--san", "host"], "--san"),
        (["csr", "--label", "ec-key", "--subject", "CN=x", "--san", "IP:999.1.1.1"], "--san"),
        (["csr", "--label", "ec-key", "--subject", "CN=x", "--san", "foo:bar"], "unknown type"),
        (["csr", "--label", "ec-key", "--subject", "CN=x", "--pss"], "--pss is for RSA"),
        (["csr", "--label", "ed-key", "--subject", "CN=x", "--hash", "sha256"], "without a hash"),
        (["cert", "--self-signed", "--label", "ec-key"], "--subject"),
        (["cert", "--csr", "x.csr", "--label", "ec-key"], "--issuer-cert"),
        (["cert", "--self-signed", "--csr", "x.csr", "--label", "ec-key"], "not allowed"),
        (["cert", "--self-signed", "--subject", "CN=x"], "--label"),
        ([*SELF_SIGNED, "--days", "0"], "--days"),
        ([*SELF_SIGNED, "--path-length", "1"], "--ca"),
        ([*SELF_SIGNED, "--key-usage", "fly"], "unknown usage"),
        ([*SELF_SIGNED, "--key-usage", "decipherOnly"], "need keyAgreement"),
        ([*SELF_SIGNED, "--extended-key-usage", "x"], "unknown usage"),
        ([*SELF_SIGNED, "--serial-number", "-1"], "serial"),
        ([*SELF_SIGNED, "--issuer-cert", "ca.pem"], "--issuer-cert is for --csr"),
    ],
)  # fmt: skip
def test_usage_errors(args: list[str], fragment: str) -> None:
    assert_error(run(*args), 2, fragment)


def test_issuing_errors(pki: dict[str, Path], tmp_path: Path) -> None:
    issue = ["cert", "--csr", str(pki["leaf_csr"]), "--issuer-cert"]
    # The token key must be the issuer certificate's key.
    assert_error(run(*issue, str(pki["root_pem"]), "--label", "ec-key"), 1, "not the key")
    # The issuer must be a CA.
    assert_error(
        run(*issue, str(pki["client_pem"]), "--label", "ec-key", "--days", "1"), 1, "not a CA"
    )
    # A certificate cannot outlive its issuer.
    assert_error(
        run(*issue, str(pki["int_pem"]), "--label", "rsa-key", "--days", "4000"), 1, "outlive"
    )
    # A CSR whose signature does not verify is refused.
    csr = x509.load_pem_x509_csr(pki["leaf_csr"].read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-1] ^= 1
    (tmp_path / "bad.csr").write_bytes(bytes(der))
    assert_error(
        run("cert", "--csr", str(tmp_path / "bad.csr"), "--issuer-cert", str(pki["int_pem"]),
            "--label", "rsa-key"),
        1,
        "does not verify",
    )  # fmt: skip
    assert_error(
        run("cert", "--csr", str(tmp_path / "none.csr"), "--issuer-cert", str(pki["int_pem"]),
            "--label", "rsa-key"),
        1,
        "none.csr",
    )  # fmt: skip
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert_error(
        run(*issue, str(tmp_path / "junk.pem"), "--label", "rsa-key"),
        1,
        "cannot read a certificate",
    )
    assert_error(run("csr", "--label", "no-such-key", "--subject", "CN=x"), 1, "no-such-key")
    assert_error(run("csr", "--label", "dup-key", "--subject", "CN=x"), 1, "choose one with --id")
    out = tmp_path / "missing-dir" / "x.pem"
    assert_error(
        run("csr", "--label", "ec-key", "--subject", "CN=x", "--out", str(out)), 1, "cannot write"
    )


def test_cert_output_is_json_when_asked(pki: dict[str, Path]) -> None:
    result = ok(
        "cert", "--csr", str(pki["client_csr"]), "--issuer-cert", str(pki["int_pem"]),
        "--label", "rsa-key", "--days", "1", "--json",
    )  # fmt: skip
    facts = json.loads(result.stdout)
    assert facts["issuer"] == "CN=hsmkey Intermediate,O=hsmkey" and facts["subject"] == "CN=client"
    assert facts["pem"].startswith("-----BEGIN CERTIFICATE-----")
