"""What the ``hsmkey`` commands share: errors, the argument parser class and common options,
terminal prompts, output, the token configuration (module, token, PIN, pool) and key listings.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

if TYPE_CHECKING:
    from .._hsmkey import Key, Pool
    from ..pool import SessionPool

PROG = "hsmkey"


class Command(Protocol):
    """``command(name, help, description=None)``: adds a sub-command with the common options
    and returns its parser (what each command module's ``register`` receives)."""

    def __call__(
        self, name: str, help: str, description: str | None = None
    ) -> argparse.ArgumentParser: ...


class CLIError(Exception):
    """A failure to report as ``hsmkey: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CLIError):
    """The command line is wrong (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hsmkey: error: ... (see 'hsmkey keys --help')``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- command-line parsing -----------------------------------------------------------------


def common_options(parser: argparse.ArgumentParser, top: bool) -> None:
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
        "--init-args",
        metavar="TEXT",
        dest="init_args",
        default=default(None),
        help="the module's C_Initialize string (NSS, kmsp11, YubiHSM); default: $HSM_INIT_ARGS",
    )
    group.add_argument(
        "--serial", metavar="SERIAL", default=default(None), help="token serial number"
    )
    group.add_argument(
        "--slot", metavar="ID", type=slot_id_arg, default=default(None), help="slot id of the token"
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


def slot_id_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a slot id: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a slot id: {text!r}")
    return value


def key_id_arg(text: str) -> bytes:
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


# -- terminal -------------------------------------------------------------------------------


def have_terminal() -> bool:
    """True when prompts can be shown on (and answers read from) a terminal."""
    if os.name == "nt":
        return sys.stdin.isatty()
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def ask_secret(prompt: str) -> str:
    """Read a secret on the terminal without echo (getpass uses /dev/tty)."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise CLIError("no answer (end of input)") from None


def confirm(question: str) -> bool:
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


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def short_flags(flags: Iterable[str]) -> str:
    """``["CKF_RNG", "CKF_LOGIN_REQUIRED"]`` -> ``"rng,login_required"``."""
    short = [f[4:].lower() if f.startswith("CKF_") else f for f in flags]
    return ",".join(short) or "-"


# -- configuration --------------------------------------------------------------------------


def module_path(args: argparse.Namespace) -> str:
    module = args.module or os.environ.get("HSM_MODULE")
    if not module:
        hint = ""
        try:
            from ..testing import find_softhsm2_module

            hint = f" (SoftHSM2 is {find_softhsm2_module()} here)"
        except Exception:
            pass  # no SoftHSM2 here: nothing to suggest
        raise UsageError(f"no PKCS#11 module: pass --module PATH or set HSM_MODULE{hint}")
    path = Path(module)
    # The same words as the library's (hsmkey.SessionPool checks the path the same way).
    if path.is_dir():
        raise CLIError(f"PKCS#11 module {module} is a directory, not a shared library")
    if not path.exists():
        raise CLIError(f"PKCS#11 module {module} does not exist")
    return str(module)


def init_args(args: argparse.Namespace) -> str | None:
    """--init-args, else $HSM_INIT_ARGS, else None."""
    return getattr(args, "init_args", None) or os.environ.get("HSM_INIT_ARGS") or None


def token_needs_login(
    module: str, label: str | None, serial: str | None, slot: int | None, args_text: str | None
) -> bool:
    """False only if the token is found and says it needs no login (CKF_LOGIN_REQUIRED off)."""
    from .. import _hsmkey

    for entry in _hsmkey.list_tokens(module, mechanisms=False, init_args=args_text):
        if not entry.get("token_present"):
            continue
        if label is not None and entry.get("label") != label:
            continue
        if serial is not None and entry.get("serial") != serial:
            continue
        if slot is not None and entry.get("slot_id") != slot:
            continue
        return "CKF_LOGIN_REQUIRED" in entry.get("flags", [])
    return True


def token_selection(
    args: argparse.Namespace, module: str | None = None
) -> tuple[str | None, str | None, int | None]:
    """(label, serial, slot id): --token, else $HSM_TOKEN unless --serial/--slot choose.
    Without any, the usage error lists the labels of ``module``'s tokens."""
    label = args.token
    if label is None and args.serial is None and args.slot is None:
        label = os.environ.get("HSM_TOKEN") or None
        if label is None:
            raise UsageError(
                "no token: pass --token LABEL (or --serial / --slot) or set HSM_TOKEN"
                + _token_labels(module)
            )
    return label, args.serial, args.slot


def _token_labels(module: str | None) -> str:
    """``"; the module's tokens: 'a', 'b'"``, or nothing when they cannot be listed."""
    if module is None:
        return ""
    from .. import _hsmkey

    try:
        slots = _hsmkey.list_tokens(module, mechanisms=False)
    except Exception:
        return ""
    labels = [
        repr(s["label"])
        for s in slots
        if "CKF_TOKEN_INITIALIZED" in s.get("flags", ()) and s.get("label")
    ]
    return f"; the module's tokens: {', '.join(labels)}" if labels else ""


def describe_token(label: str | None, serial: str | None, slot: int | None) -> str:
    parts = []
    if label is not None:
        parts.append(repr(label))
    if serial is not None:
        parts.append(f"serial {serial}")
    if slot is not None:
        parts.append(f"slot {slot}")
    return "token " + " ".join(parts)


def user_pin(what: str) -> str:
    pin = os.environ.get("HSM_PIN")
    if pin:
        return pin
    if not have_terminal():
        raise UsageError("no PIN: set HSM_PIN (there is no terminal to ask for it on)")
    pin = ask_secret(f"User PIN for {what}: ")
    if not pin:
        raise CLIError("no PIN given")
    return pin


def open_pool(args: argparse.Namespace) -> SessionPool:
    from ..pool import SessionPool

    module = module_path(args)
    label, serial, slot = token_selection(args, module)
    text = init_args(args)
    needs_pin = bool(os.environ.get("HSM_PIN")) or token_needs_login(
        module, label, serial, slot, text
    )
    # The PIN goes straight into the pool (wiped memory): no local of this frame holds it when
    # the login fails (tracebacks with locals would record it).
    pool = SessionPool(
        module,
        label,
        user_pin(describe_token(label, serial, slot)) if needs_pin else None,
        token_serial=serial,
        slot_id=slot,
        init_args=text,
    )
    pool.check()
    return pool


# -- keys -----------------------------------------------------------------------------------


def key_kid(key: Key) -> str | None:
    from ..jwk import HSMJWK

    try:
        return str(HSMJWK.from_hsm(key)["kid"])
    except Exception:
        return None  # a key whose public part hsmkey cannot read: listed without kid


def sorted_keys(keys: Iterable[Key]) -> list[Key]:
    return sorted(keys, key=lambda k: (k.label or "", k.id))


def key_info(key: Key) -> dict[str, Any]:
    info = {
        "label": key.label,
        "id": key.id.hex(),
        "key_type": key.key_type,
        "curve": key.curve,
        "key_size": key.key_size,
        "kid": key_kid(key),
    }
    if key.parameter_set is not None:  # ML-DSA
        info["parameter_set"] = key.parameter_set
    return info


def key_rows(infos: Iterable[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            info["label"],
            info["id"] or None,
            info["key_type"],
            info["curve"] or info.get("parameter_set") or info["key_size"],
            info["kid"],
        ]
        for info in infos
    ]


KEY_HEADERS = ("LABEL", "ID", "TYPE", "SIZE", "KID")


def print_keys(args: argparse.Namespace, infos: list[dict[str, Any]]) -> None:
    if args.json:
        print_json(infos)
    else:
        print(table(KEY_HEADERS, key_rows(infos)))


def matching_keys(pool: Pool, label: str | None, key_id: bytes | None) -> list[Key]:
    return [
        k
        for k in sorted_keys(pool.list_keys())
        if (label is None or k.label == label) and (key_id is None or k.id == key_id)
    ]


def describe_key(label: str | None, key_id: bytes | None) -> str:
    parts = []
    if label is not None:
        parts.append(f"label {label!r}")
    if key_id is not None:
        parts.append(f"id {key_id.hex()}")
    return " and ".join(parts)


def find_key(pool: Pool, label: str | None, key_id: bytes | None, command: str) -> Key:
    """The one private key with ``label`` and/or ``key_id``; a usage error without either,
    and a message listing the ids when several keys match."""
    from ..exceptions import HSMKeyNotFoundError

    if label is None and key_id is None:
        raise UsageError(f"{command} needs --label and/or --id")
    try:
        return pool.find_key(key_label=label, key_id=key_id)
    except HSMKeyNotFoundError as exc:
        matches = matching_keys(pool, label, key_id)
        if not matches:
            # Say which keys there are, as a person would look next ('hsmkey keys').
            labels = sorted({k.label for k in pool.list_keys() if k.label})
            shown = ", ".join(repr(lb) for lb in labels[:10]) + (
                ", ..." if len(labels) > 10 else ""
            )
            raise CLIError(
                f"{exc}; the token's keys: {shown or 'none'} (see 'hsmkey keys')"
            ) from None
        if len(matches) < 2:
            raise
        ids = ", ".join(k.id.hex() for k in matches)
        raise CLIError(
            f"{len(matches)} keys have {describe_key(label, key_id)} (ids {ids}): "
            "choose one with --id"
        ) from None


def check_new_key(pool: Pool, label: str, key_id: bytes | None) -> None:
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
