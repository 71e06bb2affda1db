"""Count PKCS#11 calls: run code in a fresh process through OpenSC's pkcs11-spy module.

pkcs11-spy.so is a PKCS#11 module that forwards every call to the module named by
``PKCS11SPY`` and logs it to the file named by ``PKCS11SPY_OUTPUT``. The log has one block per
call, numbered from 0 in the order of the calls::

    7: C_Login
    2026-11-28 21:25:42.761
    [in] hSession = 0x1
    [in] userType = CKU_USER
    [in] pPin[ulPinLen] 000055d0c0a1e2f0 / 6
        00000000  31 32 33 34 35 36                                123456
    Returned:  0 CKR_OK

It logs PINs in clear: for tests only. Each run gets a new process, so counts start at zero
and the module is initialized by the code under test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .softhsm import SoftHSM

_CALL = re.compile(r"^\d+: (C_\w+)\s*$")
_RETURNED = re.compile(r"^Returned:\s+\d+ (\w+)")


@dataclass(frozen=True)
class Call:
    function: str  # "C_Login"
    rv: str | None  # "CKR_OK"; None when the process died inside the call


@dataclass
class SpyRun:
    """The result of one process run through the spy."""

    calls: Counter[str]  # function name -> number of calls
    sequence: list[Call]  # every call, in order, with its return code
    returncode: int
    stdout: str
    stderr: str
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def __getitem__(self, function: str) -> int:
        """``run["C_Login"]``: how many times the function was called (0 if never)."""
        return self.calls[function]

    def returned(self, function: str) -> list[str | None]:
        """The return codes of every call to ``function``, in order."""
        return [c.rv for c in self.sequence if c.function == function]

    def failed_calls(self) -> list[Call]:
        """The calls that returned something other than ``CKR_OK``."""
        return [c for c in self.sequence if c.rv != "CKR_OK"]


def parse_spy_log(text: str) -> list[Call]:
    """The calls in a pkcs11-spy log, in order."""
    calls: list[Call] = []
    function: str | None = None
    for line in text.splitlines():
        match = _CALL.match(line)
        if match:
            if function is not None:  # previous call never returned
                calls.append(Call(function, None))
            function = match.group(1)
            continue
        match = _RETURNED.match(line)
        if match and function is not None:
            calls.append(Call(function, match.group(1)))
            function = None
    if function is not None:
        calls.append(Call(function, None))
    return calls


def spy_env(hsm: SoftHSM, log_path: Path) -> dict[str, str]:
    """The environment of a process that loads ``hsm.spy_module`` in place of SoftHSM2.

    ``HSM_MODULE`` names the spy, so ``SessionPool.from_env()`` (or any code that reads
    ``os.environ["HSM_MODULE"]``) goes through it.
    """
    if hsm.spy_module is None:
        pytest.skip("OpenSC's pkcs11-spy.so is not installed")
    return {
        **hsm.env,
        "HSM_MODULE": hsm.spy_module,
        "PKCS11SPY": hsm.module,
        "PKCS11SPY_OUTPUT": str(log_path),
    }


class Spy:
    """Runs commands or Python snippets through the spy; see the ``spy`` fixture."""

    def __init__(self, hsm: SoftHSM, log_dir: Path) -> None:
        self.hsm = hsm
        self.log_dir = log_dir
        self._runs = 0

    def command(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> SpyRun:
        """Run ``argv`` with the spy's environment. A ``{module}`` in an argument becomes the
        spy module's path, e.g. ``["pkcs11-tool", "--module", "{module}", "-O"]``."""
        self._runs += 1
        log_path = self.log_dir / f"spy-{self._runs}.log"
        full_env = {**os.environ, **spy_env(self.hsm, log_path), **(env or {})}
        module = full_env["HSM_MODULE"]
        argv = [a.replace("{module}", module) for a in argv]
        try:
            proc = subprocess.run(
                argv,
                env=full_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"spy run timed out after {timeout}s: {argv}\n{_output(exc)}")
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        sequence = parse_spy_log(log)
        result = SpyRun(
            calls=Counter(c.function for c in sequence),
            sequence=sequence,
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            log_path=log_path,
            argv=argv,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"spy run failed with exit code {proc.returncode}: {argv}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
                pytrace=False,
            )
        return result

    def __call__(
        self,
        snippet: str,
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> SpyRun:
        """Run a Python snippet (dedented) in a new interpreter through the spy.

        The snippet finds the spy module in ``os.environ["HSM_MODULE"]``, the token in
        ``HSM_TOKEN`` and the PIN in ``HSM_PIN``.
        """
        script = self.log_dir / f"snippet-{self._runs + 1}.py"
        script.write_text(textwrap.dedent(snippet))
        return self.command([sys.executable, str(script)], env=env, check=check, timeout=timeout)


def _output(exc: subprocess.TimeoutExpired) -> str:
    def text(data: object) -> str:
        if isinstance(data, bytes):
            return data.decode(errors="replace")
        return str(data or "")

    return f"--- stdout ---\n{text(exc.stdout)}\n--- stderr ---\n{text(exc.stderr)}"
