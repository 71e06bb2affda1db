"""``hsmkey keys``, ``generate``, ``import``, ``delete``: the private keys in a token."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    KEY_HEADERS,
    CLIError,
    Command,
    UsageError,
    ask_secret,
    check_new_key,
    confirm,
    describe_key,
    have_terminal,
    key_id_arg,
    key_info,
    key_rows,
    matching_keys,
    open_pool,
    print_json,
    print_keys,
    sorted_keys,
    table,
)

if TYPE_CHECKING:
    from .._hsmkey import Pool

# The key types of ``generate --type``, in the words ``Key.key_type`` and ``hsmkey keys`` use
# (PKCS#11's CKK_ names), each with its curves; the curve names, as the library accepts them
# (JOSE, cryptography and OpenSSL spellings), each mapped to the name ``hsmkey keys`` shows.
KEY_TYPES = ("RSA", "EC", "EC_EDWARDS", "ML_DSA")
CURVES: dict[str, tuple[str, ...]] = {
    "P-256": ("P-256", "secp256r1", "prime256v1"),
    "P-384": ("P-384", "secp384r1"),
    "P-521": ("P-521", "secp521r1"),
    "secp256k1": ("secp256k1",),
    "Ed25519": ("Ed25519", "edwards25519"),
    "Ed448": ("Ed448", "edwards448"),
}
EC_CURVES = ("P-256", "P-384", "P-521", "secp256k1")
EDWARDS_CURVES = ("Ed25519", "Ed448")
# Shorter names for a type and curve (the names of earlier versions, kept working):
# ``--type Ed25519`` is ``--type EC_EDWARDS --curve Ed25519``.
TYPE_ALIASES: dict[str, tuple[str, str | None]] = {
    "Ed25519": ("EC_EDWARDS", "Ed25519"),
    "Ed448": ("EC_EDWARDS", "Ed448"),
    "OKP": ("EC_EDWARDS", None),  # the JOSE name
    # ML-DSA keys by parameter set (FIPS 204 and JOSE names); ML_DSA alone is ML-DSA-65.
    "ML-DSA-44": ("ML_DSA", "ML-DSA-44"),
    "ML-DSA-65": ("ML_DSA", "ML-DSA-65"),
    "ML-DSA-87": ("ML_DSA", "ML-DSA-87"),
}
ML_DSA_SETS = ("ML-DSA-65", "ML-DSA-44", "ML-DSA-87")
TYPE_HELP = (
    "RSA, EC, EC_EDWARDS or ML_DSA (the TYPE column of 'hsmkey keys'); Ed25519 and Ed448 are "
    "short for EC_EDWARDS --curve Ed25519/Ed448; ML-DSA-44, ML-DSA-65 (ML_DSA's default) and "
    "ML-DSA-87 name the post-quantum parameter sets"
)


def _squash(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "")


def _key_type(text: str) -> tuple[str, str | None]:
    """``--type``: (type, the curve the name implies or None)."""
    for name in KEY_TYPES:
        if _squash(text) == _squash(name):
            return name, None
    for alias, value in TYPE_ALIASES.items():
        if _squash(text) == _squash(alias):
            return value
    raise argparse.ArgumentTypeError(
        f"unknown key type {text!r} (RSA, EC, EC_EDWARDS, ML_DSA; or Ed25519, Ed448, "
        "ML-DSA-44, ML-DSA-65, ML-DSA-87)"
    )


def _curve(text: str) -> str:
    """``--curve``: the curve's name as ``hsmkey keys`` shows it."""
    for name, spellings in CURVES.items():
        if any(_squash(text) == _squash(s) for s in spellings):
            return name
    raise argparse.ArgumentTypeError(
        f"unknown curve {text!r} (P-256, P-384, P-521, secp256k1, Ed25519 or Ed448; "
        "OpenSSL's names such as prime256v1 and secp384r1 work too)"
    )


def _label(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a key needs a label: keys are found by it")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a label must not contain NUL characters")
    return text


def register(command: Command) -> None:
    """Add the commands of this module to the parser."""
    p = command(
        "keys",
        "list the private keys in a token",
        "List the private keys in the token: label, CKA_ID (hex), type, size, and kid "
        "(the RFC 7638 thumbprint of the public key).",
    )
    p.set_defaults(func=cmd_keys)

    p = command(
        "generate",
        "generate a key pair in a token",
        "Generate a key pair in the token. The private key is sensitive and cannot be extracted.",
    )
    p.add_argument(
        "--type",
        dest="key_type",
        type=_key_type,
        required=True,
        metavar="TYPE",
        help=TYPE_HELP,
    )
    p.add_argument("--bits", type=int, help="RSA modulus size (default 2048)")
    p.add_argument(
        "--curve",
        type=_curve,
        metavar="CURVE",
        help="EC: P-256 (default), P-384, P-521, secp256k1 (OpenSSL names such as prime256v1 "
        "work too); EC_EDWARDS: Ed25519 (default) or Ed448",
    )
    p.add_argument("--label", type=_label, required=True, help="CKA_LABEL of the new key")
    p.add_argument(
        "--id", dest="key_id", type=key_id_arg, help="CKA_ID in hex (default: 16 random bytes)"
    )
    p.set_defaults(func=cmd_generate)

    p = command(
        "import",
        "import a private key from a PEM or DER file",
        "Store a private key (RSA, EC, Ed25519, Ed448, ML-DSA; PEM or DER, PKCS#8 or "
        "traditional) "
        "in the token, with its public key beside it. The token copy is sensitive and not "
        "extractable; the file is left as it is.",
    )
    p.add_argument("file", metavar="FILE", help="the private key file ('-' for stdin)")
    p.add_argument("--label", type=_label, required=True, help="CKA_LABEL of the imported key")
    p.add_argument(
        "--id", dest="key_id", type=key_id_arg, help="CKA_ID in hex (default: 16 random bytes)"
    )
    p.add_argument(
        "--password",
        action="store_true",
        help="the file is encrypted: ask for its password (on the terminal, else one "
        "line of stdin)",
    )
    p.add_argument(
        "--allow-weak",
        action="store_true",
        help="import a legacy RSA key below 2048 bits or with a public exponent below 65537 "
        "(refused by default)",
    )
    p.set_defaults(func=cmd_import)

    p = command(
        "delete",
        "delete a key pair from a token",
        "Delete the private key, and its public key and other objects with the same label "
        "and/or id. Asks for confirmation unless --yes. When several keys match (a label "
        "given to more than one key), choose one with --id, or pass --all to delete them all.",
    )
    p.add_argument("--label", help="CKA_LABEL of the key")
    p.add_argument("--id", dest="key_id", type=key_id_arg, help="CKA_ID of the key, in hex")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--all",
        action="store_true",
        help="delete every key that matches when several do (without it, several matches "
        "are an error)",
    )
    p.set_defaults(func=cmd_delete)


def cmd_keys(args: argparse.Namespace) -> int:
    with open_pool(args) as pool:
        infos = [key_info(k) for k in sorted_keys(pool.list_keys())]
    if not infos and not args.json:
        print("no private keys in the token")
        return 0
    print_keys(args, infos)
    return 0


def _generate_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(the key type for ``generate_key_pair``, its keyword arguments)."""
    key_type, implied = args.key_type
    name = implied or key_type  # as the user called it, for messages
    if key_type == "RSA":
        if args.curve is not None:
            raise UsageError("--curve is for EC and EC_EDWARDS keys; RSA keys take --bits")
        bits = 2048 if args.bits is None else args.bits
        if bits < 2048 or bits > 8192 or bits % 8:
            raise UsageError(f"--bits must be 2048 to 8192 (a multiple of 8), not {bits}")
        return key_type, {"bits": bits}
    if key_type == "ML_DSA":
        if args.bits is not None or args.curve is not None:
            raise UsageError(
                f"--bits and --curve are not for {name} keys: the parameter set is the type "
                "(--type ML-DSA-44, ML-DSA-65 or ML-DSA-87)"
            )
        return implied or ML_DSA_SETS[0], {}
    if args.bits is not None:
        raise UsageError(f"--bits is for RSA keys, not {name}; {name} keys take --curve")
    curves = EC_CURVES if key_type == "EC" else EDWARDS_CURVES
    curve = args.curve or implied or curves[0]
    if implied is not None and args.curve is not None and args.curve != implied:
        raise UsageError(f"--curve {args.curve} does not fit --type {name} (its curve is {name})")
    if curve not in curves:
        hint = " (for Ed25519 and Ed448 use --type EC_EDWARDS)" if key_type == "EC" else ""
        raise UsageError(
            f"--curve {curve} is not a curve of {key_type} keys: {', '.join(curves)}{hint}"
        )
    return key_type, {"curve": curve}


def cmd_generate(args: argparse.Namespace) -> int:
    key_type, kwargs = _generate_args(args)
    with open_pool(args) as pool:
        check_new_key(pool, args.label, args.key_id)
        with pool.session(rw=True) as session:
            session.generate_key_pair(key_type, label=args.label, key_id=args.key_id, **kwargs)
        return _report_new_key(args, pool, args.label)


def _report_new_key(args: argparse.Namespace, pool: Pool, label: str) -> int:
    from ..jwk import HSMJWK

    key = pool.find_key(key_label=label)
    info = key_info(key)
    if args.json:
        info["jwk"] = json.loads(HSMJWK.from_hsm(key).export_public())
        print_json(info)
    else:
        print(table(KEY_HEADERS, key_rows([info])))
    return 0


ACCEPTED_FILES = (
    "hsmkey imports private keys from PEM files (-----BEGIN PRIVATE KEY-----, -----BEGIN "
    "ENCRYPTED PRIVATE KEY-----, -----BEGIN RSA/EC PRIVATE KEY-----) and DER files (PKCS#8 "
    "or traditional)"
)
IMPORTABLE = (
    "RSA, EC (P-256, P-384, P-521, secp256k1), Ed25519, Ed448 and ML-DSA (with cryptography "
    ">= 50.0.2) private keys"
)
# What other PEM blocks hold (the "-----BEGIN <kind>-----" of files that are not private keys).
_PEM_KINDS = {
    "CERTIFICATE": "a certificate",
    "TRUSTED CERTIFICATE": "a certificate",
    "X509 CRL": "a certificate revocation list",
    "CERTIFICATE REQUEST": "a certificate signing request",
    "NEW CERTIFICATE REQUEST": "a certificate signing request",
    "PUBLIC KEY": "a public key",
    "RSA PUBLIC KEY": "a public key",
    "OPENSSH PRIVATE KEY": "an OpenSSH private key (convert it with ssh-keygen -p -m PKCS8)",
    "PGP PRIVATE KEY BLOCK": "an OpenPGP key",
}


def _not_a_key_file(data: bytes, name: str) -> CLIError | None:
    """The error for a file that is plainly not a private key (text, other PEM blocks)."""
    import re

    first = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    if first is not None:
        kind = first.group(1).decode()
        if "PRIVATE KEY" in kind and kind not in _PEM_KINDS:
            return None
        what = _PEM_KINDS.get(kind, f"a PEM block of type {kind!r}")
        return CLIError(f"{name} holds {what}, not a private key; {ACCEPTED_FILES}")
    # DER starts with a SEQUENCE (0x30); text has no control bytes beyond whitespace.
    if not data.strip():
        return CLIError(f"{name} is empty; {ACCEPTED_FILES}")
    if data[:1] != b"\x30":
        try:
            data.decode("utf-8")
            kind = "a text file"
        except UnicodeDecodeError:
            kind = "a binary file but not DER"
        return CLIError(f"{name} is {kind}, not a private key file; {ACCEPTED_FILES}")
    return None


def _check_importable(key: object, name: str) -> None:
    """Refuse, in the command's words, the key types that hsmkey cannot store."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1", "secp256k1"):
            raise CLIError(
                f"{name} holds an EC key on curve {key.curve.name}, which hsmkey cannot "
                f"import; it imports {IMPORTABLE}"
            )
        return
    if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return
    try:  # cryptography >= 50.0.2
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError:
        pass
    else:
        mldsa_keys = (mldsa.MLDSA44PrivateKey, mldsa.MLDSA65PrivateKey, mldsa.MLDSA87PrivateKey)
        if isinstance(key, mldsa_keys):
            return
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
    raise CLIError(
        f"{name} holds a key of type {kind}, which hsmkey cannot import; it imports {IMPORTABLE}"
    )


def _load_private_key(data: bytes, password: bytes | None, name: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    refused = _not_a_key_file(data, name)
    if refused is not None:
        raise refused
    pem = data.lstrip().startswith(b"-----BEGIN")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        key = load(data, password=password)
    except TypeError as exc:
        text = str(exc)
        if "not encrypted" in text:
            raise CLIError(f"the key in {name} is not encrypted: leave out --password") from None
        if "encrypted" in text:
            raise CLIError(
                f"the key in {name} is encrypted: pass --password to be asked for its password"
            ) from None
        raise CLIError(f"cannot read a private key from {name}: {exc}") from None
    except ValueError as exc:
        if password is not None and "password" in str(exc).lower():
            raise CLIError(f"wrong password for {name}") from None
        kind = "PEM" if pem else "DER"
        reason = str(exc).split(". ")[0]  # cryptography's first sentence says enough
        raise CLIError(f"cannot read a private key ({kind}) from {name}: {reason}") from None
    except Exception as exc:  # cryptography raises other types for unusual input
        raise CLIError(f"cannot read a private key from {name}: {exc}") from None
    _check_importable(key, name)
    return key


def _read_password(stdin_busy: bool) -> bytes:
    if have_terminal():
        text = ask_secret("Password of the key file: ")
    elif not stdin_busy:
        text = sys.stdin.readline().rstrip("\r\n")
    else:
        raise CLIError("no terminal to ask for the password on")
    return text.encode()


def cmd_import(args: argparse.Namespace) -> int:
    name = "stdin" if args.file == "-" else args.file
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    password = _read_password(stdin_busy=args.file == "-") if args.password else None
    private_key = _load_private_key(data, password, name)
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(private_key, rsa.RSAPrivateKey) and not args.allow_weak:
        from .._import import check_rsa_strength

        try:  # before the PIN is asked for
            e = private_key.public_key().public_numbers().e
            check_rsa_strength(private_key.key_size, e, opt_in="--allow-weak")
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    with open_pool(args) as pool:
        check_new_key(pool, args.label, args.key_id)
        with pool.session(rw=True) as session:
            session.import_private_key(
                private_key, label=args.label, key_id=args.key_id, allow_weak=args.allow_weak
            )
        return _report_new_key(args, pool, args.label)


def cmd_delete(args: argparse.Namespace) -> int:
    if args.label is None and args.key_id is None:
        raise UsageError("delete needs --label and/or --id")
    if not args.yes and not have_terminal():
        raise UsageError("no terminal to confirm on: pass --yes to delete without asking")
    which = describe_key(args.label, args.key_id)
    with open_pool(args) as pool:
        keys = matching_keys(pool, args.label, args.key_id)
        if not keys:
            raise CLIError(f"no private key with {which} in the token")
        if len(keys) > 1 and not args.all:
            ids = ", ".join(k.id.hex() or "(none)" for k in keys)
            raise CLIError(
                f"{len(keys)} keys have {which} (ids {ids}): choose one with --id, or pass "
                "--all to delete them all"
            )
        infos = [key_info(k) for k in keys]
        if not args.yes:
            what = "this key" if len(keys) == 1 else f"these {len(keys)} keys"
            shown = table(KEY_HEADERS, key_rows(infos))
            if not confirm(f"{shown}\nDelete {what} (private and public objects)? [y/N] "):
                raise CLIError("nothing deleted")
        with pool.session(rw=True) as session:
            count = session.delete_key(key_label=args.label, key_id=args.key_id)
    if args.json:
        print_json({"deleted_objects": count, "keys": infos})
    else:
        print(f"deleted {count} objects with {which}")
    return 0
