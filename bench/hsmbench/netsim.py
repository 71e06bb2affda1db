"""A simulated network HSM: the fault module (``tests/faultmod``) in front of a private copy of
SoftHSM2, sleeping before every call a network client would send (``latency *``: everything
but ``C_Initialize``, ``C_Finalize`` and ``C_GetFunctionList``), as a round trip would take.

The round trip is set in the module's control file, which this process and the limit's
process both read (it is re-read whenever it changes), so one run measures several round
trips. The module counts every call: :meth:`SimulatedNetwork.calls` is what reached the
"network".
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import BENCH_DIR
from .report import say

FAULTMOD_DIR = BENCH_DIR.parent / "tests" / "faultmod"
FAULTMOD_LIB = FAULTMOD_DIR / "target" / "release" / "libhsmkey_faultmod.so"


def build_faultmod() -> Path:
    cargo = shutil.which("cargo")
    if cargo is None:
        sys.exit("cargo not found: the simulated network HSM (tests/faultmod) is Rust")
    say("building tests/faultmod (cargo build --release) ...")
    subprocess.run(
        [
            cargo,
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
            str(FAULTMOD_DIR / "Cargo.toml"),
        ],
        check=True,
    )
    return FAULTMOD_LIB


class SimulatedNetwork:
    """The fault module over a copy of ``softhsm_module`` (a copy is another library to the
    loader: its own SoftHSM2 instance, whose sessions and login are apart from the other
    pools of this process). Set up before anything in this process loads the fault module."""

    def __init__(self, work: Path, softhsm_module: str) -> None:
        self.path = str(build_faultmod())
        target = work / "libsofthsm2-remote.so"
        shutil.copy2(softhsm_module, target)
        self.control = work / "faultmod-control"
        self.counts_file = work / "faultmod-counts.json"
        self.env = {
            "HSMKEY_FAULT_TARGET": str(target),
            "HSMKEY_FAULT_CONTROL": str(self.control),
            "HSMKEY_FAULT_COUNTS": str(self.counts_file),
        }
        os.environ.update(self.env)
        self.round_trip = 0.0
        self._write("")
        self._dll: Any = None

    def _write(self, text: str) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.control)  # atomic: readers see the old file or the new one

    def set_round_trip(self, seconds: float) -> None:
        """Every call through the module sleeps ``seconds`` first, from its next call on."""
        self.round_trip = seconds
        self._write(f"latency * {round(seconds * 1e6)}us\n" if seconds > 0 else "")

    def _lib(self) -> Any:
        if self._dll is None:
            # The same path as the pools load: the same instance, the same counters.
            self._dll = ctypes.CDLL(self.path)
            self._dll.hsmkey_fault_reset_counts.restype = None
            self._dll.hsmkey_fault_dump.restype = ctypes.c_int
        return self._dll

    def reset_counts(self) -> None:
        self._lib().hsmkey_fault_reset_counts()

    def calls(self) -> dict[str, int]:
        """Calls of each function through the module since :meth:`reset_counts` (non-zero)."""
        if self._lib().hsmkey_fault_dump() != 0:
            raise RuntimeError("hsmkey_fault_dump() failed")
        data = json.loads(self.counts_file.read_text())
        return {name: n for name, n in data["calls"].items() if n}


class SimulatedHSM:
    """One of several simulated network HSMs in this process: a *copy* of the fault module
    (another library to the loader, so another instance with its own settings, given through
    ``hsmkey_fault_configure`` since all copies see one environment) in front of its own copy
    of SoftHSM2 (its own sessions and login; the token files are the bench token's, so every
    member holds the same keys). ``round_trip`` seconds before every call; :meth:`set_reachable`
    switches it off (every call fails with ``CKR_DEVICE_ERROR``, its sessions are gone) and on.
    """

    def __init__(self, work: Path, name: str, softhsm_module: str, round_trip: float) -> None:
        self.name = name
        home = work / name
        home.mkdir(parents=True, exist_ok=True)
        self.path = str(home / "libhsmkey_faultmod.so")
        shutil.copy2(build_faultmod(), self.path)
        target = home / "libsofthsm2-member.so"
        shutil.copy2(softhsm_module, target)
        self.control = home / "control"
        self.counts_file = home / "counts.json"
        self.round_trip = round_trip
        self.reachable = True
        self._write()
        self._dll: Any = ctypes.CDLL(self.path)
        self._dll.hsmkey_fault_configure.restype = ctypes.c_int
        self._dll.hsmkey_fault_configure.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self._dll.hsmkey_fault_reload.restype = ctypes.c_int
        self._dll.hsmkey_fault_count.restype = ctypes.c_uint64
        self._dll.hsmkey_fault_count.argtypes = [ctypes.c_char_p]
        for env, value in (
            ("HSMKEY_FAULT_TARGET", str(target)),
            ("HSMKEY_FAULT_CONTROL", str(self.control)),
            ("HSMKEY_FAULT_COUNTS", str(self.counts_file)),
            ("HSMKEY_FAULT_LATENCY", ""),
        ):
            if self._dll.hsmkey_fault_configure(env.encode(), value.encode()) != 0:
                raise RuntimeError(f"{self.path}: hsmkey_fault_configure({env}) failed")

    def _write(self) -> None:
        lines = [f"latency * {round(self.round_trip * 1e6)}us"] if self.round_trip > 0 else []
        if not self.reachable:
            lines.append("unreachable")
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.control)

    def set_reachable(self, reachable: bool) -> None:
        self.reachable = reachable
        self._write()
        self._dll.hsmkey_fault_reload()

    def signs(self) -> int:
        """``C_Sign`` calls through this member so far."""
        return int(self._dll.hsmkey_fault_count(b"C_Sign"))
