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
