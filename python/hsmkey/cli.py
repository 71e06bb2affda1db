"""The ``hsmkey`` command: look at PKCS#11 tokens, manage keys, sign a JWT.

``hsmkey --help`` lists the commands; ``hsmkey COMMAND --help`` explains one. The module
comes from ``--module`` or ``HSM_MODULE``, the token from ``--token`` / ``--serial`` /
``--slot`` or ``HSM_TOKEN``, and the user PIN from ``HSM_PIN`` or a prompt on the terminal
(never echoed, never a command-line argument). Tables are for people; ``--json`` prints
JSON for scripts. Errors are one line on stderr, ``hsmkey: error: ...``, and exit status 1
(2 when the command line itself is wrong, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ._hsmkey import Key, Pool
    from .pool import SessionPool

__all__ = ["main"]

PROG = "hsmkey"

EPILOG = """\
environment:
  HSM_MODULE   path of the PKCS#11 module (instead of --module)
  HSM_TOKEN    token label (instead of --token)
  HSM_PIN      user PIN; without it hsmkey asks on the terminal (never echoed)
  HSMKEY_DEBUG set to 1 to show a traceback on errors

examples:
  hsmkey tokens --module /usr/lib/softhsm/libsofthsm2.so
  hsmkey keys --token my-token
  hsmkey generate --type EC --curve P-256 --label signer
  echo '{"sub": "alice"}' | hsmkey sign --label signer
  hsmkey jwks > jwks.json
"""

# The JOSE algorithm `sign` uses when --alg is not given.
DEFAULT_ALGS = {
    "RSA": "RS256",
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "secp256k1": "ES256K",
    "Ed25519": "EdDSA",
    "Ed448": "EdDSA",
}
SIGN_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "ES256K",
    "EdDSA",
)
KEY_TYPES = {"rsa": "RSA", "ec": "EC", "ed25519": "Ed25519", "ed448": "Ed448"}
CURVES = ("P-256", "P-384", "P-521", "secp256k1")


class CLIError(Exception):
    """A failure to report as ``hsmkey: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CLIError):
    """The command line is wrong (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hsmkey: error: ... (see 'hsmkey keys --help')``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- command-line parsing -----------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, top: bool) -> None:
    # The options are accepted before and after the command. On the commands they default
    # to SUPPRESS so that an option given before the command is not reset by the command.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("token selection and output")
    group.add_argument(
        "--module",
        metavar="PATH",
        default=default(None),
        help="PKCS#11 module (shared library); default: $HSM_MODULE",
    )
    group.add_argument(
        "--token", metavar="LABEL", default=default(None), help="token label; default: $HSM_TOKEN"
    )
    group.add_argument(
        "--serial", metavar="SERIAL", default=default(None), help="token serial number"
    )
    group.add_argument(
        "--slot", metavar="ID", type=_slot_id, default=default(None), help="slot id of the token"
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log hsmkey's session events (-vv: debug)",
    )


def _slot_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a slot id: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a slot id: {text!r}")
    return value


def _key_id(text: str) -> bytes:
    cleaned = text.replace(":", "").replace(" ", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--id takes hex bytes (like 01 or a1:b2:c3), not {text!r}"
        ) from None
    if not value:
        raise argparse.ArgumentTypeError("--id must not be empty")
    return value


def _key_type(text: str) -> str:
    try:
        return KEY_TYPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown key type {text!r} (RSA, EC, Ed25519 or Ed448)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``hsmkey`` argument parser."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Look at PKCS#11 tokens, manage the keys in them, sign JWTs with them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hsmkey {__version__}")
    _common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        _common_options(p, top=False)
        return p

    p = command(
        "tokens",
        "list the slots and tokens of a module",
        "List the slots of the module with their tokens: label, serial, manufacturer, "
        "model, flags. --mechanisms adds the mechanisms of each token. Needs no PIN.",
    )
    p.add_argument("--mechanisms", action="store_true", help="list each token's mechanisms as well")
    p.set_defaults(func=cmd_tokens)

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
        help="RSA, EC, Ed25519 or Ed448",
    )
    p.add_argument("--bits", type=int, help="RSA modulus size (default 2048)")
    p.add_argument("--curve", choices=CURVES, help="EC curve (default P-256)")
    p.add_argument("--label", required=True, help="CKA_LABEL of the new key")
    p.add_argument(
        "--id", dest="key_id", type=_key_id, help="CKA_ID in hex (default: 16 random bytes)"
    )
    p.set_defaults(func=cmd_generate)

    p = command(
        "import",
        "import a private key from a PEM or DER file",
        "Store a private key (RSA, EC, Ed25519, Ed448; PEM or DER, PKCS#8 or traditional) "
        "in the token, with its public key beside it. The token copy is sensitive and not "
        "extractable; the file is left as it is.",
    )
    p.add_argument("file", metavar="FILE", help="the private key file ('-' for stdin)")
    p.add_argument("--label", required=True, help="CKA_LABEL of the imported key")
    p.add_argument(
        "--id", dest="key_id", type=_key_id, help="CKA_ID in hex (default: 16 random bytes)"
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
    p.add_argument("--id", dest="key_id", type=_key_id, help="CKA_ID of the key, in hex")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)

    p = command(
        "jwks",
        "print the public JWK Set of a token",
        "Print the public keys of the token as a JSON Web Key Set (RFC 7517), each with its "
        "kid (the RFC 7638 thumbprint).",
    )
    p.set_defaults(func=cmd_jwks)

    p = command(
        "sign",
        "sign a JWT with claims read from stdin",
        "Read a JSON object of claims from stdin, sign it as a JWT with a key in the token "
        "and print the compact serialization. The header has alg, kid and typ.",
    )
    p.add_argument("--label", help="CKA_LABEL of the key")
    p.add_argument("--id", dest="key_id", type=_key_id, help="CKA_ID of the key, in hex")
    p.add_argument(
        "--alg",
        help="JWS algorithm (default from the key: RS256, ES256/384/512, ES256K, EdDSA)",
    )
    p.add_argument("--kid", help="kid of the header (default: the key's RFC 7638 thumbprint)")
    p.set_defaults(func=cmd_sign)

    p = command(
        "demo",
        "sign and verify JWTs with a throwaway SoftHSM2 token",
        "Create a throwaway SoftHSM2 token, sign a JWT with every algorithm, verify each "
        "in software. Needs SoftHSM2; ignores the token options.",
    )
    p.set_defaults(func=cmd_demo)
    return parser


# -- terminal -------------------------------------------------------------------------------


def _have_terminal() -> bool:
    """True when prompts can be shown on (and answers read from) a terminal."""
    if os.name == "nt":
        return sys.stdin.isatty()
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _ask_secret(prompt: str) -> str:
    """Read a secret on the terminal without echo (getpass uses /dev/tty)."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise CLIError("no answer (end of input)") from None


def _confirm(question: str) -> bool:
    """Show ``question`` on the terminal and read a yes/no answer there."""
    if os.name == "nt":
        return input(question).strip().lower() in ("y", "yes")
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, question.encode())
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = os.read(fd, 1024)
            if not chunk:  # end of input: no
                os.write(fd, b"\n")
                break
            answer += chunk
    finally:
        os.close(fd)
    return answer.decode(errors="replace").strip().lower() in ("y", "yes")


# -- output ---------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _short_flags(flags: Iterable[str]) -> str:
    """``["CKF_RNG", "CKF_LOGIN_REQUIRED"]`` -> ``"rng,login_required"``."""
    short = [f[4:].lower() if f.startswith("CKF_") else f for f in flags]
    return ",".join(short) or "-"


# -- configuration --------------------------------------------------------------------------


def _module(args: argparse.Namespace) -> str:
    module = args.module or os.environ.get("HSM_MODULE")
    if not module:
        raise UsageError("no PKCS#11 module: pass --module PATH or set HSM_MODULE")
    if not Path(module).is_file():
        raise CLIError(f"PKCS#11 module {module} does not exist")
    return str(module)


def _token_selection(args: argparse.Namespace) -> tuple[str | None, str | None, int | None]:
    """(label, serial, slot id): --token, else $HSM_TOKEN unless --serial/--slot choose."""
    label = args.token
    if label is None and args.serial is None and args.slot is None:
        label = os.environ.get("HSM_TOKEN") or None
        if label is None:
            raise UsageError("no token: pass --token LABEL (or --serial / --slot) or set HSM_TOKEN")
    return label, args.serial, args.slot


def _describe_token(label: str | None, serial: str | None, slot: int | None) -> str:
    parts = []
    if label is not None:
        parts.append(repr(label))
    if serial is not None:
        parts.append(f"serial {serial}")
    if slot is not None:
        parts.append(f"slot {slot}")
    return "token " + " ".join(parts)


def _pin(what: str) -> str:
    pin = os.environ.get("HSM_PIN")
    if pin:
        return pin
    if not _have_terminal():
        raise UsageError("no PIN: set HSM_PIN (there is no terminal to ask for it on)")
    pin = _ask_secret(f"User PIN for {what}: ")
    if not pin:
        raise CLIError("no PIN given")
    return pin


def _pool(args: argparse.Namespace) -> SessionPool:
    from .pool import SessionPool

    module = _module(args)
    label, serial, slot = _token_selection(args)
    pin = _pin(_describe_token(label, serial, slot))
    pool = SessionPool(module, label, pin, token_serial=serial, slot_id=slot)
    pool.check()
    return pool


# -- keys -----------------------------------------------------------------------------------


def _kid(key: Key) -> str | None:
    from .jwk import HSMJWK

    try:
        return str(HSMJWK.from_hsm(key)["kid"])
    except Exception:
        return None  # a key whose public part hsmkey cannot read: listed without kid


def _sorted_keys(keys: Iterable[Key]) -> list[Key]:
    return sorted(keys, key=lambda k: (k.label or "", k.id))


def _key_info(key: Key) -> dict[str, Any]:
    return {
        "label": key.label,
        "id": key.id.hex(),
        "key_type": key.key_type,
        "curve": key.curve,
        "key_size": key.key_size,
        "kid": _kid(key),
    }


def _key_rows(infos: Iterable[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            info["label"],
            info["id"] or None,
            info["key_type"],
            info["curve"] or info["key_size"],
            info["kid"],
        ]
        for info in infos
    ]


KEY_HEADERS = ("LABEL", "ID", "TYPE", "SIZE", "KID")


def _print_keys(args: argparse.Namespace, infos: list[dict[str, Any]]) -> None:
    if args.json:
        _print_json(infos)
    else:
        print(_table(KEY_HEADERS, _key_rows(infos)))


def _matching_keys(pool: Pool, label: str | None, key_id: bytes | None) -> list[Key]:
    return [
        k
        for k in _sorted_keys(pool.list_keys())
        if (label is None or k.label == label) and (key_id is None or k.id == key_id)
    ]


def _describe_key(label: str | None, key_id: bytes | None) -> str:
    parts = []
    if label is not None:
        parts.append(f"label {label!r}")
    if key_id is not None:
        parts.append(f"id {key_id.hex()}")
    return " and ".join(parts)


def _check_new_key(pool: Pool, label: str, key_id: bytes | None) -> None:
    """Refuse a label or id that a key has already: finding keys would become ambiguous."""
    for key in pool.list_keys():
        if key.label == label:
            raise CLIError(
                f"the token has a key with label {label!r} already (id {key.id.hex()}): "
                "choose another --label, or delete that key first"
            )
        if key_id is not None and key.id == key_id:
            raise CLIError(
                f"the token has a key with id {key_id.hex()} already (label {key.label!r}): "
                "choose another --id"
            )


# -- commands -------------------------------------------------------------------------------


def _list_tokens(module: str, mechanisms: bool) -> list[dict[str, Any]]:
    """Slots, tokens and mechanisms of a module (no session, no login)."""
    from . import _hsmkey

    return list(_hsmkey.list_tokens(module, mechanisms=mechanisms))


def cmd_tokens(args: argparse.Namespace) -> int:
    module = _module(args)
    slots = _list_tokens(module, mechanisms=args.mechanisms or args.json)
    # Only options given on the command line filter (HSM_TOKEN does not).
    if args.token is not None:
        slots = [s for s in slots if s.get("label") == args.token]
    if args.serial is not None:
        slots = [s for s in slots if s.get("serial") == args.serial]
    if args.slot is not None:
        slots = [s for s in slots if s.get("slot_id") == args.slot]
    if args.json:
        _print_json(slots)
        return 0
    if not slots:
        print("no slots" if args.token is args.serial is args.slot is None else "no match")
        return 0
    rows = []
    for s in slots:
        if not s.get("token_present", True):
            rows.append([s["slot_id"], "(no token)", None, None, None, None])
            continue
        label = s.get("label")
        initialized = "CKF_TOKEN_INITIALIZED" in s.get("flags", ())
        rows.append(
            [
                s["slot_id"],
                label if initialized else "(not initialized)",
                s.get("serial") or None,
                s.get("manufacturer") or None,
                s.get("model") or None,
                _short_flags(s.get("flags", ())),
            ]
        )
    print(_table(("SLOT", "LABEL", "SERIAL", "MANUFACTURER", "MODEL", "FLAGS"), rows))
    if args.mechanisms:
        for s in slots:
            mechs = s.get("mechanisms") or []
            if not mechs:
                continue
            label = s.get("label") or "(not initialized)"
            print(f"\nslot {s['slot_id']} ({label}): {len(mechs)} mechanisms")
            print(
                _table(
                    ("MECHANISM", "MIN", "MAX", "FLAGS"),
                    [
                        [
                            m["name"],
                            m.get("min_key_size"),
                            m.get("max_key_size"),
                            _short_flags(m.get("flags", ())),
                        ]
                        for m in mechs
                    ],
                )
            )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    with _pool(args) as pool:
        infos = [_key_info(k) for k in _sorted_keys(pool.list_keys())]
    if not infos and not args.json:
        print("no private keys in the token")
        return 0
    _print_keys(args, infos)
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
    with _pool(args) as pool:
        _check_new_key(pool, args.label, args.key_id)
        with pool.session(rw=True) as session:
            session.generate_key_pair(args.key_type, label=args.label, key_id=args.key_id, **kwargs)
        return _report_new_key(args, pool, args.label)


def _report_new_key(args: argparse.Namespace, pool: Pool, label: str) -> int:
    from .jwk import HSMJWK

    key = pool.find_key(key_label=label)
    info = _key_info(key)
    if args.json:
        info["jwk"] = json.loads(HSMJWK.from_hsm(key).export_public())
        _print_json(info)
    else:
        print(_table(KEY_HEADERS, _key_rows([info])))
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
    if _have_terminal():
        text = _ask_secret("Password of the key file: ")
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
    with _pool(args) as pool:
        _check_new_key(pool, args.label, args.key_id)
        with pool.session(rw=True) as session:
            session.import_private_key(private_key, label=args.label, key_id=args.key_id)
        return _report_new_key(args, pool, args.label)


def cmd_delete(args: argparse.Namespace) -> int:
    if args.label is None and args.key_id is None:
        raise UsageError("delete needs --label and/or --id")
    if not args.yes and not _have_terminal():
        raise UsageError("no terminal to confirm on: pass --yes to delete without asking")
    which = _describe_key(args.label, args.key_id)
    with _pool(args) as pool:
        keys = _matching_keys(pool, args.label, args.key_id)
        if not keys:
            raise CLIError(f"no private key with {which} in the token")
        infos = [_key_info(k) for k in keys]
        if not args.yes:
            what = "this key" if len(keys) == 1 else f"these {len(keys)} keys"
            shown = _table(KEY_HEADERS, _key_rows(infos))
            if not _confirm(f"{shown}\nDelete {what} (private and public objects)? [y/N] "):
                raise CLIError("nothing deleted")
        with pool.session(rw=True) as session:
            count = session.delete_key(key_label=args.label, key_id=args.key_id)
    if args.json:
        _print_json({"deleted_objects": count, "keys": infos})
    else:
        print(f"deleted {count} objects with {which}")
    return 0


def cmd_jwks(args: argparse.Namespace) -> int:
    from .jwk import HSMJWK

    keys = []
    with _pool(args) as pool:
        for key in _sorted_keys(pool.list_keys()):
            try:
                jwk = HSMJWK.from_hsm(key)
            except Exception as exc:
                print(
                    f"hsmkey: warning: key {key.label!r} (id {key.id.hex()}) left out: {exc}",
                    file=sys.stderr,
                )
                continue
            keys.append(json.loads(jwk.export_public()))
    _print_json({"keys": keys})
    return 0


def _read_claims() -> dict[str, Any]:
    if sys.stdin.isatty():
        print("reading the JWT claims (a JSON object) from stdin; end with Ctrl-D", file=sys.stderr)
    text = sys.stdin.read()
    try:
        claims = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"the claims on stdin are not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise CLIError(f"the claims must be a JSON object, not {type(claims).__name__}")
    return claims


def cmd_sign(args: argparse.Namespace) -> int:
    from jwcrypto import jwt  # type: ignore[import-untyped]

    from .exceptions import HSMError, HSMKeyNotFoundError
    from .jwk import HSMJWK

    if args.label is None and args.key_id is None:
        raise UsageError("sign needs --label and/or --id")
    if args.alg is not None and args.alg not in SIGN_ALGS:
        raise UsageError(
            f"--alg {args.alg} is not a signing algorithm of hsmkey: " + ", ".join(SIGN_ALGS)
        )
    claims = _read_claims()
    with _pool(args) as pool:
        try:
            key = HSMJWK.from_hsm(pool, key_label=args.label, key_id=args.key_id)
        except HSMKeyNotFoundError:
            matches = _matching_keys(pool, args.label, args.key_id)
            if len(matches) < 2:
                raise
            ids = ", ".join(k.id.hex() for k in matches)
            raise CLIError(
                f"{len(matches)} keys have {_describe_key(args.label, args.key_id)} "
                f"(ids {ids}): choose one with --id"
            ) from None
        hsm_key = key.hsm_key
        alg = args.alg or DEFAULT_ALGS.get(hsm_key.curve or hsm_key.key_type)
        if alg is None:
            raise CLIError(f"no default algorithm for this key ({hsm_key.curve}): pass --alg")
        header = {"alg": alg, "kid": args.kid or key["kid"], "typ": "JWT"}
        token = jwt.JWT(header=header, claims=claims)
        try:
            token.make_signed_token(key)
        except HSMError:
            raise
        except Exception as exc:  # jwcrypto: algorithm not allowed for this key type
            raise CLIError(f"cannot sign with {alg}: {exc}") from None
        compact = token.serialize()
    if args.json:
        _print_json({"jwt": compact, "alg": alg, "kid": header["kid"]})
    else:
        print(compact)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main()


# -- main -----------------------------------------------------------------------------------


class _LogFormatter(logging.Formatter):
    """``hsmkey: warning: ...``, like the error lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


@contextmanager
def _logging(verbose: int) -> Iterator[None]:
    """hsmkey's log records as ``hsmkey: warning: ...`` lines on stderr while the command
    runs (INFO with -v, DEBUG with -vv); the logger is restored afterwards."""
    logger = logging.getLogger("hsmkey")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    logger.addHandler(handler)
    logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG))
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _error_line(exc: BaseException) -> str:
    from .exceptions import HSMError

    message = str(exc) or type(exc).__name__
    if isinstance(exc, HSMError) and exc.rv and exc.rv not in message:
        message = f"{message} ({exc.rv})"
    return " ".join(message.split())  # one line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hsmkey`` command; returns the exit status."""
    from .exceptions import HSMError

    debug = os.environ.get("HSMKEY_DEBUG", "") not in ("", "0")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        with _logging(args.verbose):
            status: int = args.func(args)
            sys.stdout.flush()
        return status
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`hsmkey keys | head -1`): no message, no flush error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (HSMError, OSError, ValueError, TypeError, LookupError) as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(
            f"{PROG}: error: unexpected {type(exc).__name__}: {_error_line(exc)} "
            "(set HSMKEY_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
