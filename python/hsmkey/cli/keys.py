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

KEY_TYPES = {
    "rsa": "RSA",
    "ec": "EC",
    "ed25519": "Ed25519",
    "ed448": "Ed448",
    "ml-dsa-44": "ML-DSA-44",
    "ml-dsa-65": "ML-DSA-65",
    "ml-dsa-87": "ML-DSA-87",
}
CURVES = ("P-256", "P-384", "P-521", "secp256k1")


def _key_type(text: str) -> str:
    try:
        return KEY_TYPES[text.lower().replace("_", "-")]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown key type {text!r} (RSA, EC, Ed25519, Ed448, ML-DSA-44, ML-DSA-65 or "
            "ML-DSA-87)"
        ) from None


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
        help="RSA, EC, Ed25519, Ed448, ML-DSA-44, ML-DSA-65 or ML-DSA-87",
    )
    p.add_argument("--bits", type=int, help="RSA modulus size (default 2048)")
    p.add_argument("--curve", choices=CURVES, help="EC curve (default P-256)")
    p.add_argument("--label", required=True, help="CKA_LABEL of the new key")
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
    p.add_argument("--label", required=True, help="CKA_LABEL of the imported key")
    p.add_argument(
        "--id", dest="key_id", type=key_id_arg, help="CKA_ID in hex (default: 16 random bytes)"
    )
    p.add_argument(
        "--password",
        action="store_true",
        help="the file is encrypted: ask for its password (on the terminal, else one "
        "line of stdin)",
    )
    p.set_defaults(func=cmd_import)

    p = command(
        "delete",
        "delete a key pair from a token",
        "Delete the private key, and its public key and other objects with the same label "
        "and/or id. Asks for confirmation unless --yes.",
    )
    p.add_argument("--label", help="CKA_LABEL of the key")
    p.add_argument("--id", dest="key_id", type=key_id_arg, help="CKA_ID of the key, in hex")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)


def cmd_keys(args: argparse.Namespace) -> int:
    with open_pool(args) as pool:
        infos = [key_info(k) for k in sorted_keys(pool.list_keys())]
    if not infos and not args.json:
        print("no private keys in the token")
        return 0
    print_keys(args, infos)
    return 0


def _generate_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.key_type == "RSA":
        if args.curve is not None:
            raise UsageError("--curve is for EC keys; RSA keys take --bits")
        bits = 2048 if args.bits is None else args.bits
        if bits < 2048 or bits > 8192 or bits % 8:
            raise UsageError(f"--bits must be 2048 to 8192 (a multiple of 8), not {bits}")
        return {"bits": bits}
    if args.bits is not None:
        raise UsageError(f"--bits is for RSA keys, not {args.key_type}")
    if args.key_type == "EC":
        return {"curve": args.curve or "P-256"}
    if args.curve is not None:
        raise UsageError(f"--curve is for EC keys; {args.key_type} has its own curve")
    return {}


def cmd_generate(args: argparse.Namespace) -> int:
    kwargs = _generate_args(args)
    with open_pool(args) as pool:
        check_new_key(pool, args.label, args.key_id)
        with pool.session(rw=True) as session:
            session.generate_key_pair(args.key_type, label=args.label, key_id=args.key_id, **kwargs)
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


def _load_private_key(data: bytes, password: bytes | None, name: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    pem = data.lstrip().startswith(b"-----BEGIN")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        return load(data, password=password)
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
    with open_pool(args) as pool:
        check_new_key(pool, args.label, args.key_id)
        with pool.session(rw=True) as session:
            session.import_private_key(private_key, label=args.label, key_id=args.key_id)
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
