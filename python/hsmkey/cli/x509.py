"""``hsmkey csr`` and ``hsmkey cert``: X.509 certificate requests and certificates signed by a
token key (a self-signed CA, or a certificate issued for a CSR), PEM out."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ._common import (
    CLIError,
    Command,
    UsageError,
    find_key,
    key_id_arg,
    open_pool,
    print_json,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.padding import PSS

    from ..keys import HSMPrivateKey

    _Hash = Union[hashes.SHA256, hashes.SHA384, hashes.SHA512]

HASHES = ("sha256", "sha384", "sha512")
# The hash each key signs certificates with when --hash is not given.
DEFAULT_HASHES = {"P-384": "sha384", "P-521": "sha512"}
# OpenSSL's names (also accepted: cryptography's, like digital_signature).
KEY_USAGES = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "contentCommitment": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}
EXTENDED_KEY_USAGES = {
    "serverAuth": "SERVER_AUTH",
    "clientAuth": "CLIENT_AUTH",
    "codeSigning": "CODE_SIGNING",
    "emailProtection": "EMAIL_PROTECTION",
    "timeStamping": "TIME_STAMPING",
    "OCSPSigning": "OCSP_SIGNING",
}
SAN_KINDS = "DNS:name, IP:address, email:address, URI:uri"
MAX_DAYS = 36500


def _key_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--label", help=f"CKA_LABEL of the token key that {what}")
    p.add_argument("--id", dest="key_id", type=key_id_arg, help="CKA_ID of the key, in hex")
    p.add_argument(
        "--hash",
        choices=HASHES,
        help="signature hash (default: sha256; sha384 for P-384, sha512 for P-521 keys; "
        "Ed25519/Ed448 keys have none)",
    )
    p.add_argument(
        "--pss", action="store_true", help="RSA keys: sign with RSASSA-PSS instead of PKCS#1 v1.5"
    )
    p.add_argument("--out", metavar="FILE", help="write the PEM to FILE (default: stdout)")


def _san_option(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="TYPE:VALUE",
        help=f"subject alternative name, repeatable: {SAN_KINDS}{extra}",
    )


def register(command: Command) -> None:
    """Add the commands of this module to the parser."""
    p = command(
        "csr",
        "make a certificate signing request signed by a token key",
        "Print a PKCS#10 certificate signing request (PEM) for the public key of a token key, "
        "signed by that key: --subject, --san. The private key stays in the token.",
    )
    p.add_argument(
        "--subject",
        required=True,
        help="subject name, RFC 4514 ('CN=service.example,O=Example') or OpenSSL style "
        "('/O=Example/CN=service.example')",
    )
    _san_option(p)
    _key_options(p, "the request is for (and signed by)")
    p.set_defaults(func=cmd_csr)

    p = command(
        "cert",
        "issue an X.509 certificate signed by a token key",
        "Print an X.509 certificate (PEM) signed by a token key: either self-signed "
        "(--self-signed --subject, e.g. a root CA with --ca), or issued for a CSR (--csr FILE) "
        "by the CA whose certificate is --issuer-cert and whose private key is the token key. "
        "The subject key identifier, authority key identifier, basic constraints and key usage "
        "are set.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--self-signed",
        action="store_true",
        help="a self-signed certificate for the token key (needs --subject)",
    )
    what.add_argument("--csr", metavar="FILE", help="issue a certificate for this CSR (PEM or DER)")
    p.add_argument(
        "--issuer-cert",
        metavar="FILE",
        help="with --csr: the certificate of the issuing CA, whose key is the token key",
    )
    p.add_argument(
        "--subject",
        help="subject name (RFC 4514 or OpenSSL style); with --csr: replaces the CSR's subject",
    )
    _san_option(p, "; with --csr: replaces the CSR's names")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument(
        "--ca", action="store_true", help="a CA certificate: basic constraints CA:TRUE, keyCertSign"
    )
    p.add_argument(
        "--path-length", type=int, metavar="N", help="with --ca: the CA's path length constraint"
    )
    p.add_argument(
        "--key-usage",
        metavar="LIST",
        help="comma-separated key usages, OpenSSL names: " + ", ".join(KEY_USAGES) + " "
        "(default: with --ca keyCertSign,cRLSign,digitalSignature; else digitalSignature, "
        "plus keyEncipherment for an RSA subject key)",
    )
    p.add_argument(
        "--extended-key-usage",
        metavar="LIST",
        help="comma-separated extended key usages: "
        + ", ".join(EXTENDED_KEY_USAGES)
        + ", or dotted OIDs (default: none)",
    )
    p.add_argument(
        "--serial-number",
        type=_serial,
        metavar="N",
        help="the certificate's serial number, decimal or 0x hex (default: 159 random bits; "
        "--serial selects a token)",
    )
    _key_options(p, "signs the certificate")
    p.set_defaults(func=cmd_cert)


# -- parsing --------------------------------------------------------------------------------


def _serial(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a serial number: {text!r}") from None
    if value <= 0 or value.bit_length() > 159:
        raise argparse.ArgumentTypeError("the serial number must be positive, at most 20 bytes")
    return value


NAME_EXAMPLE = (
    "write it as CN=service.example,O=Example (RFC 4514) or /O=Example/CN=service.example"
)


def _name_overrides() -> dict[str, x509.ObjectIdentifier]:
    """OpenSSL's attribute names that RFC 4514 lacks (emailAddress, serialNumber, ...)."""
    from cryptography.x509.oid import NameOID

    return {
        "emailAddress": NameOID.EMAIL_ADDRESS,
        "serialNumber": NameOID.SERIAL_NUMBER,
        "GN": NameOID.GIVEN_NAME,
        "givenName": NameOID.GIVEN_NAME,
        "SN": NameOID.SURNAME,
        "title": NameOID.TITLE,
        "businessCategory": NameOID.BUSINESS_CATEGORY,
        "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
    }


def _name_problem(text: str, overrides: dict[str, Any]) -> str | None:
    """Why ``text`` is not an RFC 4514 name, or None when its attributes look right."""
    import re

    from cryptography.x509 import name as x509_name

    known = {n.upper() for n in (*x509_name._NAME_TO_NAMEOID, *overrides)}  # any case
    # Split on the commas and plus signs that are not escaped with a backslash.
    for part in re.split(r"(?<!\\)[,+]", text):
        attribute, sep, value = part.partition("=")
        attribute = attribute.strip()
        if not sep or not attribute:
            return f"{part.strip()!r} is not ATTRIBUTE=value"
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)+", attribute) and attribute.upper() not in known:
            names = ", ".join(sorted({*x509_name._NAME_TO_NAMEOID, *overrides}))
            return f"unknown attribute {attribute!r} (known: {names}, or a dotted OID)"
        if not value.strip():
            return f"{attribute} has an empty value"
    return None


def _canonical_attributes(text: str, overrides: dict[str, Any]) -> str:
    """``cn=a,o=b`` -> ``CN=a,O=b``: cryptography knows the names in one spelling only."""
    import re

    from cryptography.x509 import name as x509_name

    spelling = {n.upper(): n for n in (*x509_name._NAME_TO_NAMEOID, *overrides)}

    def fix(m: re.Match[str]) -> str:
        return m.group(1) + spelling.get(m.group(2).upper(), m.group(2)) + "="

    return re.sub(r"(^|(?<!\\)[,+])\s*([A-Za-z][A-Za-z0-9-]*)\s*=", fix, text)


def parse_name(text: str) -> x509.Name:
    """An X.509 name from RFC 4514 (``CN=a,O=b``: the most specific first) or OpenSSL's
    ``/O=b/CN=a`` (the most specific last)."""
    from cryptography import x509

    original = text
    text = text.strip()
    if not text:
        raise UsageError("the subject name is empty: " + NAME_EXAMPLE)
    if text.startswith("/"):
        parts = [part for part in text[1:].split("/") if part]
        if not parts or any("=" not in part for part in parts):
            raise UsageError(f"cannot read the name {original!r}: {NAME_EXAMPLE}")
        text = ",".join(part.replace(",", "\\,") for part in reversed(parts))
    overrides = _name_overrides()
    problem = _name_problem(text, overrides)
    if problem is not None:
        raise UsageError(f"cannot read the name {original!r}: {problem}; {NAME_EXAMPLE}")
    text = _canonical_attributes(text, overrides)
    try:
        name = x509.Name.from_rfc4514_string(text, overrides)
    except ValueError as exc:
        reason = str(exc) or "not an RFC 4514 name"
        raise UsageError(f"cannot read the name {original!r}: {reason}; {NAME_EXAMPLE}") from None
    if not list(name):
        raise UsageError("the subject name is empty: " + NAME_EXAMPLE)
    return name


def parse_sans(values: list[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for value in values:
        kind, sep, rest = value.partition(":")
        kind = kind.strip().lower()
        rest = rest.strip()
        if not sep or not rest:
            raise UsageError(f"--san {value!r}: use {SAN_KINDS}")
        try:
            if kind == "dns":
                names.append(x509.DNSName(rest))
            elif kind == "ip":
                names.append(x509.IPAddress(ipaddress.ip_address(rest)))
            elif kind == "email":
                names.append(x509.RFC822Name(rest))
            elif kind == "uri":
                names.append(x509.UniformResourceIdentifier(rest))
            else:
                raise UsageError(f"--san {value!r}: unknown type {kind!r}; use {SAN_KINDS}")
        except ValueError as exc:
            raise UsageError(f"--san {value!r}: {exc}") from None
    return names


def parse_key_usage(text: str) -> x509.KeyUsage:
    from cryptography import x509

    chosen = set()
    known = set(KEY_USAGES.values())
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name = KEY_USAGES.get(item, item if item in known else None)
        if name is None:
            raise UsageError(f"--key-usage: unknown usage {item!r}; use " + ", ".join(KEY_USAGES))
        chosen.add(name)
    if not chosen:
        raise UsageError("--key-usage: no usage given")
    if ("encipher_only" in chosen or "decipher_only" in chosen) and "key_agreement" not in chosen:
        raise UsageError("--key-usage: encipherOnly and decipherOnly need keyAgreement")
    flags = {name: name in chosen for name in known}
    return x509.KeyUsage(**flags)


def parse_extended_key_usage(text: str) -> x509.ExtendedKeyUsage:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    oids = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if item in EXTENDED_KEY_USAGES:
            oids.append(getattr(ExtendedKeyUsageOID, EXTENDED_KEY_USAGES[item]))
            continue
        try:
            oids.append(x509.ObjectIdentifier(item))
        except ValueError:
            raise UsageError(
                f"--extended-key-usage: unknown usage {item!r}; use "
                + ", ".join(EXTENDED_KEY_USAGES)
                + " or a dotted OID"
            ) from None
    if not oids:
        raise UsageError("--extended-key-usage: no usage given")
    return x509.ExtendedKeyUsage(oids)


# -- signing --------------------------------------------------------------------------------


def _signing_args(
    args: argparse.Namespace, private: HSMPrivateKey
) -> tuple[_Hash | None, PSS | None]:
    """The hash and (for ``--pss``) the RSA padding to sign with."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.asymmetric.padding import MGF1, PSS

    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        if args.hash is not None or args.pss:
            raise UsageError(
                "Ed25519, Ed448 and ML-DSA keys sign without a hash: leave out --hash/--pss"
            )
        return None, None
    if args.pss and not isinstance(private, rsa.RSAPrivateKey):
        raise UsageError("--pss is for RSA keys")
    curve = getattr(private, "curve", None)
    name = args.hash or DEFAULT_HASHES.get(_curve_name(curve), "sha256")
    algorithm: _Hash
    if name == "sha512":
        algorithm = hashes.SHA512()
    elif name == "sha384":
        algorithm = hashes.SHA384()
    else:
        algorithm = hashes.SHA256()
    padding = PSS(MGF1(algorithm), PSS.DIGEST_LENGTH) if args.pss else None
    return algorithm, padding


def _curve_name(curve: Any) -> str:
    names = {"secp384r1": "P-384", "secp521r1": "P-521"}
    return names.get(getattr(curve, "name", ""), "")


def _private_key(args: argparse.Namespace, pool: Any, command: str) -> HSMPrivateKey:
    from ..keys import private_key_for

    return private_key_for(find_key(pool, args.label, args.key_id, command))


def _write_pem(args: argparse.Namespace, pem: bytes, facts: dict[str, Any]) -> None:
    if args.out:
        try:
            Path(args.out).write_bytes(pem)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    if args.json:
        print_json({**facts, "pem": pem.decode("ascii")})
    elif not args.out:
        sys.stdout.write(pem.decode("ascii"))


def cmd_csr(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    subject = parse_name(args.subject)
    sans = parse_sans(args.san)
    if args.label is None and args.key_id is None:
        raise UsageError("csr needs --label and/or --id")
    with open_pool(args) as pool:
        private = _private_key(args, pool, "csr")
        algorithm, padding = _signing_args(args, private)
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(private, algorithm, rsa_padding=padding)
    pem = csr.public_bytes(Encoding.PEM)
    facts = {"subject": subject.rfc4514_string(), "san": [str(n.value) for n in sans]}
    _write_pem(args, pem, facts)
    return 0


def _load_csr(path: str) -> x509.CertificateSigningRequest:
    from cryptography import x509

    data = _read(path, "CSR")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CLIError(f"cannot read a certificate signing request from {path}: {exc}") from None
    if not csr.is_signature_valid:
        raise CLIError(f"the signature of the CSR in {path} does not verify: not issuing")
    return csr


def _load_certificate(path: str) -> x509.Certificate:
    from cryptography import x509

    data = _read(path, "certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CLIError(f"cannot read a certificate from {path}: {exc}") from None


def _read(path: str, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _default_key_usage(ca: bool, subject_key: Any) -> x509.KeyUsage:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    flags = dict.fromkeys(set(KEY_USAGES.values()), False)
    flags["digital_signature"] = True
    if ca:
        flags["key_cert_sign"] = flags["crl_sign"] = True
    elif isinstance(subject_key, rsa.RSAPublicKey):
        flags["key_encipherment"] = True
    return x509.KeyUsage(**flags)


def _check_issuer_is_ca(issuer: x509.Certificate, path: str) -> None:
    from cryptography import x509

    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CLIError(f"the issuer certificate {path} is not a CA certificate (CA:TRUE)")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise CLIError(f"the key usage of the issuer certificate {path} lacks keyCertSign")


def _check_issuer_key(issuer: x509.Certificate, private: HSMPrivateKey, path: str) -> None:
    if _public_der(issuer.public_key()) != _public_der(private.public_key()):
        raise CLIError(
            f"the token key is not the key of the issuer certificate {path}: choose the CA's "
            "key with --label/--id"
        )


def cmd_cert(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if args.label is None and args.key_id is None:
        raise UsageError("cert needs --label and/or --id (the signing key)")
    if not 1 <= args.days <= MAX_DAYS:
        raise UsageError(f"--days must be 1 to {MAX_DAYS}, not {args.days}")
    if args.path_length is not None and (not args.ca or args.path_length < 0):
        raise UsageError("--path-length needs --ca and a number >= 0")
    if args.self_signed:
        if args.issuer_cert is not None:
            raise UsageError("--issuer-cert is for --csr; a self-signed certificate has none")
        if args.subject is None:
            raise UsageError("--self-signed needs --subject")
    elif args.issuer_cert is None:
        raise UsageError("--csr needs --issuer-cert (the certificate of the issuing CA)")
    subject = parse_name(args.subject) if args.subject is not None else None
    sans = parse_sans(args.san)
    key_usage = parse_key_usage(args.key_usage) if args.key_usage else None
    eku = parse_extended_key_usage(args.extended_key_usage) if args.extended_key_usage else None
    csr = _load_csr(args.csr) if args.csr else None
    issuer_cert = _load_certificate(args.issuer_cert) if args.issuer_cert else None
    if issuer_cert is not None:
        _check_issuer_is_ca(issuer_cert, str(args.issuer_cert))

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_after = now + datetime.timedelta(days=args.days)
    if issuer_cert is not None and not_after > issuer_cert.not_valid_after_utc:
        raise CLIError(
            f"the certificate would outlive its issuer (valid until "
            f"{issuer_cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC): choose fewer --days"
        )

    with open_pool(args) as pool:
        private = _private_key(args, pool, "cert")
        algorithm, padding = _signing_args(args, private)
        subject_key: Any
        if csr is not None and issuer_cert is not None:
            _check_issuer_key(issuer_cert, private, str(args.issuer_cert))
            subject_key = csr.public_key()
            subject_name = subject or csr.subject
            issuer_name = issuer_cert.subject
            sans = sans or _csr_sans(csr)
            issuer_ski = _subject_key_identifier(issuer_cert)
        elif subject is not None:
            subject_key = private.public_key()
            subject_name = issuer_name = subject
            issuer_ski = x509.SubjectKeyIdentifier.from_public_key(subject_key)
        else:  # the argument checks above exclude this
            raise UsageError("--self-signed needs --subject")
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(issuer_name)
            .public_key(subject_key)
            .serial_number(args.serial_number or x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(
                x509.BasicConstraints(ca=args.ca, path_length=args.path_length), critical=True
            )
            .add_extension(key_usage or _default_key_usage(args.ca, subject_key), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if eku is not None:
            builder = builder.add_extension(eku, critical=False)
        certificate = builder.sign(private, algorithm, rsa_padding=padding)
    pem = certificate.public_bytes(Encoding.PEM)
    facts = {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }
    _write_pem(args, pem, facts)
    return 0


def _csr_sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    from cryptography import x509

    try:
        return list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _subject_key_identifier(certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
