"""Throwaway SoftHSM2 tokens, for tests and demos.

:func:`softhsm2_token` creates a SoftHSM2 configuration and token in a temporary directory
and points ``SOFTHSM2_CONF`` at it. SoftHSM2 reads that variable once per process, when the
module is first initialized, so create the token before anything in the process loads
SoftHSM2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SoftHSM2NotFound", "SoftHSM2Token", "find_softhsm2_module", "softhsm2_token"]

SOFTHSM2_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


class SoftHSM2NotFound(RuntimeError):
    """SoftHSM2 (its module or ``softhsm2-util``) is not installed."""


def find_softhsm2_module() -> str:
    """The path of ``libsofthsm2.so``: ``$SOFTHSM2_MODULE`` or a usual install location."""
    env = os.environ.get("SOFTHSM2_MODULE")
    if env:
        if not Path(env).is_file():
            raise SoftHSM2NotFound(f"SOFTHSM2_MODULE={env} does not exist")
        return env
    for path in SOFTHSM2_MODULE_PATHS:
        if Path(path).is_file():
            return path
    raise SoftHSM2NotFound(
        "SoftHSM2 is not installed (no libsofthsm2.so found); on Debian/Ubuntu: "
        "apt-get install softhsm2"
    )


@dataclass(frozen=True)
class SoftHSM2Token:
    """A SoftHSM2 token made by :func:`softhsm2_token`."""

    module_path: str
    label: str
    pin: str
    so_pin: str
    directory: Path
    conf_path: Path


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
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SoftHSM2NotFound("softhsm2-util is not on PATH; apt-get install softhsm2")
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
        subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )
        yield SoftHSM2Token(module, label, pin, so_pin, root, conf)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        if made and not keep:
            shutil.rmtree(root, ignore_errors=True)
