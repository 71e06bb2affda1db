"""Throwaway tokens of the other PKCS#11 implementations the suite runs on
(``HSMKEY_TEST_TOKEN=kryoptic|nss|opencryptoki``, see tests/test_backends.py):

- ``kryoptic``: kryoptic 1.5.4 (Rust, crates.io), built once per machine by
  ``scripts/build-kryoptic`` (``HSMKEY_KRYOPTIC`` names the module when it is elsewhere); a
  sqlite token in a temporary directory named by ``KRYOPTIC_CONF``, initialized with
  pkcs11-tool (PINs of 8 characters or more).
- ``nss``: Debian's NSS softokn (``libsoftokn3.so``, package libnss3) with a key database made
  by ``certutil -N`` (package libnss3-tools) in a temporary directory; the module needs
  ``init_args`` (``configdir='sql:DIR' ...``); the token is ``NSS Certificate DB``. The
  database is written with one PBKDF2 round (``NSS_M*_MP_PBE_ITERATION_COUNT=1``), else each
  signature costs 10,000 rounds.
- ``opencryptoki``: Debian's opencryptoki soft token (slot 3), which needs its daemon: the
  state at its fixed paths (/var/lib/opencryptoki/swtok) is wiped, ``pkcsslotd`` started,
  the token initialized with ``pkcsconf``; :meth:`Backend.stop` stops the daemon by the pid it
  wrote. Needs root.

Each gives a :class:`Backend`: module path, token label, PIN, init args, and ``gaps``: what
the implementation does not do, with the reason a test skips for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NSS_MODULE_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
    "/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
    "/usr/lib64/libsoftokn3.so",
)
OPENCRYPTOKI_MODULE_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib64/pkcs11/libopencryptoki.so",
)
OPENCRYPTOKI_STATE = Path("/var/lib/opencryptoki/swtok")
OPENCRYPTOKI_PIDFILE = Path("/var/run/pkcsslotd.pid")
OPENCRYPTOKI_SLOT = 3
OPENCRYPTOKI_DEFAULT_SO_PIN = "87654321"

BACKENDS = ("kryoptic", "nss", "opencryptoki")


class BackendUnavailable(RuntimeError):
    """The implementation is not installed here (the message says what to install)."""


@dataclass
class Backend:
    name: str
    module: str
    label: str
    pin: str = field(repr=False)
    init_args: str | None = None
    #: environment the module needs (KRYOPTIC_CONF)
    env: dict[str, str] = field(default_factory=dict)
    #: key family or algorithm -> why this implementation cannot do it (a test skips)
    gaps: dict[str, str] = field(default_factory=dict)
    stop: Callable[[], None] = lambda: None


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result  # type: ignore[no-any-return]


def _first(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def kryoptic(tmp: Path) -> Backend:
    module = os.environ.get("HSMKEY_KRYOPTIC")
    if not module:
        try:
            out = _run(["bash", str(ROOT / "scripts" / "build-kryoptic")])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise BackendUnavailable(f"kryoptic could not be built: {exc}") from exc
        module = out.stdout.strip().splitlines()[-1]
    if shutil.which("pkcs11-tool") is None:
        raise BackendUnavailable("pkcs11-tool not found (Debian: opensc)")
    conf = tmp / "kryoptic.conf"
    conf.write_text(f'[[slots]]\nslot = 0\ndbtype = "sqlite"\ndbargs = "{tmp / "token.sql"}"\n')
    env = {"KRYOPTIC_CONF": str(conf)}
    tool = ["pkcs11-tool", "--module", module, "--slot", "0"]
    full_env = {**os.environ, **env}
    _run([*tool, "--init-token", "--label", "hsmkey-test", "--so-pin", "12345678"], env=full_env)
    _run([*tool, "--init-pin", "--so-pin", "12345678", "--pin", "1234abcd"], env=full_env)
    return Backend("kryoptic", module, "hsmkey-test", "1234abcd", env=env)


def nss(tmp: Path) -> Backend:
    module = _first(NSS_MODULE_CANDIDATES)
    if module is None or shutil.which("certutil") is None:
        raise BackendUnavailable(
            "NSS softokn or certutil not found (Debian: libnss3 libnss3-tools)"
        )
    db = tmp / "nssdb"
    db.mkdir()
    pwfile = tmp / "password"
    pwfile.write_text("1234abcd\n")
    _run(
        ["certutil", "-N", "-d", f"sql:{db}", "-f", str(pwfile)],
        env={
            **os.environ,
            "NSS_MIN_MP_PBE_ITERATION_COUNT": "1",
            "NSS_MAX_MP_PBE_ITERATION_COUNT": "1",
        },
    )
    pwfile.unlink()
    args = f"configdir='sql:{db}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
    return Backend(
        "nss",
        module,
        "NSS Certificate DB",
        "1234abcd",
        init_args=args,
        gaps={
            "Ed25519": "NSS 3.87's softokn lists neither CKM_EC_EDWARDS_KEY_PAIR_GEN nor CKM_EDDSA",
        },
    )


def opencryptoki(tmp: Path) -> Backend:
    module = _first(OPENCRYPTOKI_MODULE_CANDIDATES)
    daemon = shutil.which("pkcsslotd") or "/usr/sbin/pkcsslotd"
    if module is None or not Path(daemon).is_file() or shutil.which("pkcsconf") is None:
        raise BackendUnavailable("opencryptoki not found (Debian: opencryptoki libopencryptoki0)")
    if os.geteuid() != 0:
        raise BackendUnavailable("opencryptoki's daemon and token state need root")
    if OPENCRYPTOKI_PIDFILE.is_file():
        text = OPENCRYPTOKI_PIDFILE.read_text().strip()
        try:
            os.kill(int(text), 0)
        except (ValueError, ProcessLookupError):
            OPENCRYPTOKI_PIDFILE.unlink()  # stale: the daemon does not remove it
        else:
            raise BackendUnavailable(
                f"pkcsslotd is already running (pid {text}); the tests start their own"
            )
    # A fresh soft token: its state lives at fixed paths.
    if OPENCRYPTOKI_STATE.is_dir():
        for entry in OPENCRYPTOKI_STATE.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
                (OPENCRYPTOKI_STATE / entry.name).mkdir()
            else:
                entry.unlink()
    _run([daemon])
    pid = 0
    for _ in range(100):
        if OPENCRYPTOKI_PIDFILE.is_file() and OPENCRYPTOKI_PIDFILE.read_text().strip():
            pid = int(OPENCRYPTOKI_PIDFILE.read_text().strip())
            break
        time.sleep(0.05)

    def stop() -> None:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            # It ignores SIGTERM while a client (this process's module) is connected.
            for attempt in range(80):
                try:
                    os.kill(pid, signal.SIGKILL if attempt == 40 else 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        OPENCRYPTOKI_PIDFILE.unlink(missing_ok=True)

    try:
        slot = str(OPENCRYPTOKI_SLOT)
        _run(
            ["pkcsconf", "-I", "-c", slot, "-S", OPENCRYPTOKI_DEFAULT_SO_PIN],
            input="hsmkey-test\n",
        )
        _run(["pkcsconf", "-u", "-c", slot, "-S", OPENCRYPTOKI_DEFAULT_SO_PIN, "-n", "1234abcd"])
    except Exception:
        stop()
        raise
    reason = "opencryptoki's soft token has no EC at all (CKR_MECHANISM_INVALID)"
    return Backend(
        "opencryptoki",
        module,
        "hsmkey-test",
        "1234abcd",
        gaps={"EC": reason, "Ed25519": reason},
        stop=stop,
    )


def make(name: str, tmp: Path) -> Backend:
    """The :class:`Backend` called ``name``, its token created under ``tmp``."""
    makers = {"kryoptic": kryoptic, "nss": nss, "opencryptoki": opencryptoki}
    if name not in makers:
        raise ValueError(f"HSMKEY_TEST_TOKEN={name!r}: one of {', '.join(BACKENDS)}")
    return makers[name](tmp)
