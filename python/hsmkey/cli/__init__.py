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
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from . import demo, jose, keys, tokens, x509
from ._common import PROG, CLIError, Parser, UsageError, common_options

__all__ = ["CLIError", "UsageError", "build_parser", "main"]

EPILOG = """\
environment:
  HSM_MODULE   path of the PKCS#11 module (instead of --module)
  HSM_TOKEN    token label (instead of --token)
  HSM_PIN      user PIN; without it hsmkey asks on the terminal (never echoed), unless
               the token needs no login
  HSM_INIT_ARGS the module's C_Initialize string (instead of --init-args)
  HSMKEY_DEBUG set to 1 to show a traceback on errors

examples:
  hsmkey tokens --module /usr/lib/softhsm/libsofthsm2.so
  hsmkey keys --token my-token
  hsmkey generate --type EC --curve P-256 --label signer
  echo '{"sub": "alice"}' | hsmkey sign --label signer
  hsmkey jwks > jwks.json
  hsmkey cert --self-signed --ca --subject "CN=Example Root CA" --days 3650 --label ca-key
  hsmkey csr --subject "CN=service.example" --san DNS:service.example --label signer
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``hsmkey`` argument parser."""
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Look at PKCS#11 tokens, manage the keys in them, sign JWTs, certificate "
        "requests and certificates with them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hsmkey {__version__}")
    common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        common_options(p, top=False)
        return p

    # In the order of `hsmkey --help`.
    tokens.register(command)
    keys.register(command)
    jose.register(command)
    x509.register(command)
    demo.register(command)
    return parser


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
    from ..exceptions import HSMError

    message = str(exc) or type(exc).__name__
    if isinstance(exc, HSMError) and exc.rv and exc.rv not in message:
        message = f"{message} ({exc.rv})"
    return " ".join(message.split())  # one line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hsmkey`` command; returns the exit status."""
    from ..exceptions import HSMError

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
