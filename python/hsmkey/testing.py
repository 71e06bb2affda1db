"""Throwaway SoftHSM2 tokens for tests and demos, and hsmkey's pytest plugin.

Helpers (no pytest needed):

- :func:`softhsm2_token` creates a SoftHSM2 configuration and an empty token in a temporary
  directory and points ``SOFTHSM2_CONF`` at it;
- :func:`softhsm2_test_token` does the same and generates one key of each type in the token
  (:data:`TEST_KEYS`);
- :func:`find_softhsm2_module` finds ``libsofthsm2.so``.

The pytest plugin (loaded automatically once hsmkey is installed, through the ``pytest11``
entry point ``hsmkey``) offers these fixtures:

``hsm_token`` (session scope)
    A :class:`SoftHSM2Token` made by :func:`softhsm2_test_token`: a fresh token in a
    temporary directory holding the keys of :data:`TEST_KEYS`, removed after the session.
    One token serves the whole session: keys that one test creates in it are seen by the
    tests that run after it (use ``hsm_key_label`` for keys of one test). Where SoftHSM2 is
    not installed, or ``SOFTHSM2_MODULE`` names a file that does not exist, the tests that
    request it fail with a message saying what to install; with the command-line option
    ``--hsmkey-skip-without-softhsm2`` (or ``hsmkey_skip_without_softhsm2 = true`` in the
    ini file) they are skipped instead where SoftHSM2 is not installed (a wrong
    ``SOFTHSM2_MODULE`` fails all the same).
``hsm_pool`` (session scope)
    A :class:`~hsmkey.SessionPool` logged in to that token, closed after the session.
``hsm_key_labels`` (session scope)
    The labels of the keys in the token, mapped to the JOSE algorithm each signs with:
    ``{"rsa": "RS256", "ec256": "ES256", "ec384": "ES384", "ec521": "ES512",
    "ed25519": "EdDSA"}`` (the same as :data:`TEST_KEYS`, which ``parametrize`` can use).
``hsm_key_label`` (function scope)
    A key label of this test's own (``test-<test name>-<random>``), for keys the test
    generates or imports; every object with that label is deleted after the test, so later
    tests do not see them.
``hsm_env`` (function scope)
    Sets ``HSM_MODULE``, ``HSM_TOKEN`` and ``HSM_PIN`` for the test (and clears
    ``HSM_INIT_ARGS``), for code that calls :meth:`~hsmkey.SessionPool.from_env`.

SoftHSM2 reads ``SOFTHSM2_CONF`` once per process, when the module is first initialized,
and sees only the tokens that exist then. The fixtures therefore do their work lazily, when
a test first asks for one, and set ``SOFTHSM2_CONF`` for the rest of the session (tokens of a
``SOFTHSM2_CONF`` set before are not visible meanwhile). If something in the test process
loaded SoftHSM2 before that moment, the fixture fails with a message saying so: request
``hsm_token`` (or ``hsm_pool``) before code that talks to SoftHSM2 itself. Merely creating a
:class:`~hsmkey.SessionPool` is fine: pools connect on first use. The plugin does nothing
at all in test runs that do not request its fixtures.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from .pool import SessionPool

__all__ = [
    "TEST_KEYS",
    "SoftHSM2AlreadyLoaded",
    "SoftHSM2ModuleMissing",
    "SoftHSM2NotFound",
    "SoftHSM2SetupError",
    "SoftHSM2Token",
    "find_softhsm2_module",
    "find_softhsm2_util",
    "softhsm2_loaded",
    "softhsm2_test_token",
    "softhsm2_token",
]

# Where distributions install the module; $SOFTHSM2_MODULE wins over all of them.
SOFTHSM2_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",  # Debian, Ubuntu
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora, RHEL
    "/usr/lib/pkcs11/libsofthsm2.so",  # Arch
    "/usr/local/lib/softhsm/libsofthsm2.so",  # from source, Homebrew on Intel
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",  # Homebrew on Apple silicon
)
INSTALL_HINT = (
    "install it (Debian/Ubuntu: apt-get install softhsm2; Fedora: dnf install softhsm; "
    "macOS: brew install softhsm) or set SOFTHSM2_MODULE to the path of libsofthsm2.so"
)

# The keys of softhsm2_test_token() and of the hsm_token fixture: label -> JOSE algorithm.
TEST_KEYS: Mapping[str, str] = {
    "rsa": "RS256",
    "ec256": "ES256",
    "ec384": "ES384",
    "ec521": "ES512",
    "ed25519": "EdDSA",
}
# label -> (key type, generate_key_pair arguments); CKA_ID is the 1-based position.
_TEST_KEY_SPECS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "rsa": ("RSA", {"bits": 2048}),
    "ec256": ("EC", {"curve": "P-256"}),
    "ec384": ("EC", {"curve": "P-384"}),
    "ec521": ("EC", {"curve": "P-521"}),
    "ed25519": ("Ed25519", {}),
}


class SoftHSM2NotFound(RuntimeError):
    """SoftHSM2 (its module or ``softhsm2-util``) is not installed."""


class SoftHSM2SetupError(RuntimeError):
    """``softhsm2-util`` could not make the token (the message has its output, no PIN)."""


class SoftHSM2ModuleMissing(SoftHSM2NotFound):
    """``SOFTHSM2_MODULE`` names a file that does not exist (a configuration error: the
    pytest plugin fails on it even where it is told to skip without SoftHSM2)."""


class SoftHSM2AlreadyLoaded(RuntimeError):
    """SoftHSM2 was loaded in this process before the token was created, so it would not
    see the new token."""


def find_softhsm2_module() -> str:
    """The path of ``libsofthsm2.so``: ``$SOFTHSM2_MODULE`` or a usual install location."""
    env = os.environ.get("SOFTHSM2_MODULE")
    if env:
        if not Path(env).is_file():
            what = "is a directory" if Path(env).is_dir() else "does not exist"
            raise SoftHSM2ModuleMissing(
                f"SOFTHSM2_MODULE={env} {what}; set it to the path of libsofthsm2.so "
                f"(such as {SOFTHSM2_MODULE_PATHS[0]}) or unset it to search the usual places"
            )
        return env
    for path in SOFTHSM2_MODULE_PATHS:
        if Path(path).is_file():
            return path
    raise SoftHSM2NotFound(
        f"SoftHSM2 is not installed (no libsofthsm2.so in {', '.join(SOFTHSM2_MODULE_PATHS)}); "
        + INSTALL_HINT
    )


def find_softhsm2_util() -> str:
    """The path of ``softhsm2-util`` (on ``PATH``)."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SoftHSM2NotFound(
            "softhsm2-util is not on PATH; install SoftHSM2 (Debian/Ubuntu: apt-get install "
            "softhsm2; Fedora: dnf install softhsm; macOS: brew install softhsm)"
        )
    return util


def softhsm2_loaded(module_path: str | None = None) -> bool:
    """True when the SoftHSM2 module is already loaded in this process (and so has read
    ``SOFTHSM2_CONF`` and its tokens already)."""
    path = module_path or find_softhsm2_module()
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:  # not a dlopen platform: cannot tell
        return False
    try:
        ctypes.CDLL(path, mode=noload | os.RTLD_NOW)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class SoftHSM2Token:
    """A SoftHSM2 token made by :func:`softhsm2_token` or :func:`softhsm2_test_token`."""

    #: the path of ``libsofthsm2.so`` (the ``module_path`` of :class:`~hsmkey.SessionPool`)
    module_path: str
    #: the token label
    label: str
    #: the user PIN (not shown by ``repr``)
    pin: str = field(repr=False)
    #: the security officer's PIN (not shown by ``repr``)
    so_pin: str = field(repr=False)
    #: the temporary directory holding the configuration file and the token's files
    directory: Path
    #: the SoftHSM2 configuration file (what ``SOFTHSM2_CONF`` names)
    conf_path: Path
    #: label -> JOSE algorithm of each key in the token (empty for :func:`softhsm2_token`)
    keys: Mapping[str, str] = field(default_factory=dict)
    #: the module's ``C_Initialize`` string (``init_args=``, ``HSM_INIT_ARGS``); SoftHSM2
    #: takes none
    init_args: str | None = None

    @property
    def env(self) -> dict[str, str]:
        """``SOFTHSM2_CONF`` and the ``HSM_MODULE``/``HSM_TOKEN``/``HSM_PIN`` (and, when
        set, ``HSM_INIT_ARGS``) variables of :meth:`~hsmkey.SessionPool.from_env`, for
        subprocesses and the ``hsmkey`` command."""
        env = {
            "SOFTHSM2_CONF": str(self.conf_path),
            "HSM_MODULE": self.module_path,
            "HSM_TOKEN": self.label,
            "HSM_PIN": self.pin,
        }
        if self.init_args is not None:
            env["HSM_INIT_ARGS"] = self.init_args
        return env

    def __getattr__(self, name: str) -> Any:
        """A wrong attribute name says which ones there are (``module`` -> ``module_path``)."""
        import difflib

        names = [*(f.name for f in fields(self)), "env", "pool"]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else f" (it has {', '.join(names)})"
        raise AttributeError(f"SoftHSM2Token has no attribute {name!r}{hint}")

    def pool(self, **kwargs: Any) -> SessionPool:
        """A new :class:`~hsmkey.SessionPool` on this token (the caller closes it)."""
        from .pool import SessionPool

        kwargs.setdefault("init_args", self.init_args)
        return SessionPool(self.module_path, self.label, self.pin, **kwargs)


@contextmanager
def softhsm2_token(
    label: str = "hsmkey-demo",
    pin: str = "123456",
    so_pin: str = "12345678",
    directory: Path | None = None,
    keep: bool = False,
) -> Iterator[SoftHSM2Token]:
    """Create a fresh SoftHSM2 token in a temporary directory and set ``SOFTHSM2_CONF``.

    The directory is removed on exit unless ``keep`` is true; ``SOFTHSM2_CONF`` is restored.
    """
    module = find_softhsm2_module()
    util = find_softhsm2_util()
    made = directory is None
    root = Path(tempfile.mkdtemp(prefix="hsmkey-softhsm2-")) if directory is None else directory
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        token = SoftHSM2Token(module, label, pin, so_pin, root, conf)
        # From here on the PINs live in the token object (whose repr hides them), not in this
        # frame's locals (tracebacks with locals would record them).
        del pin, so_pin
        argv = [util, "--init-token", "--free", "--label", label, "--so-pin", token.so_pin]
        argv += ["--pin", token.pin]
        init = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )
        del argv
        if init.returncode != 0:
            # Not CalledProcessError: its cmd (in the traceback) would carry the PINs.
            raise SoftHSM2SetupError(
                f"softhsm2-util --init-token failed ({init.returncode}): {init.stderr.strip()}"
            )
        del init
        yield token
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        if made and not keep:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def softhsm2_test_token(
    label: str = "hsmkey-pytest",
    pin: str = "123456",
    so_pin: str = "12345678",
    directory: Path | None = None,
    keep: bool = False,
) -> Iterator[SoftHSM2Token]:
    """:func:`softhsm2_token` with the keys of :data:`TEST_KEYS` generated in the token
    (with hsmkey: sensitive, not extractable; CKA_ID ``01`` to ``05`` in that order).

    This process must not have loaded SoftHSM2 yet (see the module's documentation):
    :class:`SoftHSM2AlreadyLoaded` is raised when it has.
    """
    module = find_softhsm2_module()
    if softhsm2_loaded(module):
        raise SoftHSM2AlreadyLoaded(
            f"SoftHSM2 ({module}) was loaded in this process before the throwaway token "
            "could be created; SoftHSM2 reads SOFTHSM2_CONF and finds its tokens only when "
            "it is first initialized, so it would not see the new token. Create the token "
            "(request the hsm_token or hsm_pool fixture) before anything in the process "
            "talks to SoftHSM2, or use a separate process"
        )
    from .pool import SessionPool

    made = softhsm2_token(label, pin, so_pin, directory, keep)
    del pin, so_pin  # in the token object from here on, not in this frame
    with made as token:
        with (
            SessionPool(token.module_path, token.label, token.pin) as pool,
            pool.session(rw=True) as session,
        ):
            for i, (key_label, (key_type, kwargs)) in enumerate(_TEST_KEY_SPECS.items(), 1):
                session.generate_key_pair(key_type, label=key_label, key_id=bytes([i]), **kwargs)
        yield replace(token, keys=dict(TEST_KEYS))


# -- the pytest plugin ---------------------------------------------------------------------
# Registered as the pytest11 entry point "hsmkey". Importing it costs nothing: the fixtures
# only run when a test requests them. pytest is optional for the helpers above, and it is
# imported by name so that type checkers need not have it (nor parse its sources).

try:
    _pytest: Any = importlib.import_module("pytest")
except ImportError:  # pragma: no cover - the helpers work without pytest
    _pytest = None

_F = TypeVar("_F", bound=Callable[..., Any])


def _fixture(scope: str = "function") -> Callable[[_F], _F]:
    """``pytest.fixture(scope=...)``, typed."""
    return cast("Callable[[_F], _F]", _pytest.fixture(scope=scope))


SKIP_OPTION = "--hsmkey-skip-without-softhsm2"
SKIP_INI = "hsmkey_skip_without_softhsm2"


def pytest_addoption(parser: Any) -> None:
    """The plugin's option: skip, instead of failing, where SoftHSM2 is not installed."""
    help = (
        "skip the tests that use hsmkey's SoftHSM2 fixtures where SoftHSM2 is not installed "
        "(by default they fail, so that a test run without SoftHSM2 is not taken for a pass)"
    )
    parser.addoption(SKIP_OPTION, action="store_true", default=False, help=help)
    parser.addini(SKIP_INI, help=help, type="bool", default=False)


def _skip_without_softhsm2(config: Any) -> bool:
    return bool(config.getoption(SKIP_OPTION) or config.getini(SKIP_INI))


if _pytest is not None:

    @_fixture(scope="session")
    def hsm_token(pytestconfig: Any) -> Iterator[SoftHSM2Token]:
        """A throwaway SoftHSM2 token with an RSA 2048, a P-256, a P-384, a P-521 and an
        Ed25519 key (labels ``rsa``, ``ec256``, ``ec384``, ``ec521``, ``ed25519``), created
        on first use in a temporary directory; ``SOFTHSM2_CONF`` points at it until the end
        of the session. One token for the whole session: keys a test makes stay for later
        tests (see ``hsm_key_label``). Fails where SoftHSM2 is not installed, unless
        ``--hsmkey-skip-without-softhsm2`` (or the ini setting
        ``hsmkey_skip_without_softhsm2``) asks to skip."""
        with ExitStack() as stack:
            try:
                token = stack.enter_context(softhsm2_test_token())
            except SoftHSM2ModuleMissing as exc:
                _pytest.fail(f"hsmkey: {exc}", pytrace=False)
                raise  # not reached: fail() raises
            except SoftHSM2NotFound as exc:
                message = f"hsmkey: a SoftHSM2 test token needs SoftHSM2: {exc}"
                if _skip_without_softhsm2(pytestconfig):
                    _pytest.skip(message)
                _pytest.fail(
                    f"{message} (or pass {SKIP_OPTION} to skip these tests without it)",
                    pytrace=False,
                )
                raise
            except SoftHSM2AlreadyLoaded as exc:
                _pytest.fail(f"hsmkey: {exc}", pytrace=False)
                raise
            except subprocess.CalledProcessError as exc:
                output = (exc.stderr or exc.stdout or "").strip()
                _pytest.fail(
                    f"hsmkey: softhsm2-util failed ({exc.returncode}): {output}", pytrace=False
                )
                raise
            yield token

    @_fixture(scope="session")
    def hsm_pool(hsm_token: SoftHSM2Token) -> Iterator[SessionPool]:
        """A :class:`~hsmkey.SessionPool` logged in to the ``hsm_token`` token (it has
        connected and logged in already), closed at the end of the session."""
        pool = hsm_token.pool()
        try:
            pool.check()
            yield pool
        finally:
            pool.close()

    @_fixture(scope="session")
    def hsm_key_labels(hsm_token: SoftHSM2Token) -> Mapping[str, str]:
        """The labels of the ``hsm_token`` keys, each mapped to the JOSE algorithm it signs
        with (``{"rsa": "RS256", "ec256": "ES256", ...}``)."""
        return hsm_token.keys

    @_fixture()
    def hsm_key_label(hsm_pool: SessionPool, request: Any) -> Iterator[str]:
        """A key label of this test's own (``test-<test name>-<random>``): the objects with
        that label, such as keys the test generates under it, are deleted after the test."""
        import re
        import uuid

        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:40]
        label = f"test-{name}-{uuid.uuid4().hex[:8]}"
        yield label
        with hsm_pool.session(rw=True) as session:
            session.delete_key(key_label=label)

    @_fixture()
    def hsm_env(hsm_token: SoftHSM2Token, monkeypatch: Any) -> dict[str, str]:
        """Set ``HSM_MODULE``, ``HSM_TOKEN`` and ``HSM_PIN`` (and ``SOFTHSM2_CONF``; and
        ``HSM_INIT_ARGS``, removed when the token needs none) to the ``hsm_token`` token for
        one test; returns them."""
        env = hsm_token.env
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if "HSM_INIT_ARGS" not in env:
            monkeypatch.delenv("HSM_INIT_ARGS", raising=False)
        return env
