"""The fault-injecting PKCS#11 module (``tests/faultmod``): build it, steer it, count its calls.

The module forwards every call to a real PKCS#11 module and fails, slows down or hides the
token as its control file says (syntax: ``tests/faultmod/README.md``). Use it in a test module
by importing the fixture (named ``faultmod``; the function has another name so that test
parameters called ``faultmod`` do not shadow an import)::

    from helpers.faultmod import FaultModule, faultmod_fixture  # noqa: F401

    def test_device_error(faultmod: FaultModule) -> None:
        pool = SessionPool(faultmod.path, "hsmkey-test", "123456")
        faultmod.fail("C_Sign", "CKR_DEVICE_ERROR", nth=1)
        ...
        assert faultmod.count("C_Login") == 1

The fixture builds the module once per test session (``cargo build --release``, a no-op when
it is up to date), points it at a private copy of the SoftHSM2 library (the loader treats a
copy as another library, so the fault module gets a SoftHSM2 instance of its own: its
sessions, login and "removed" tokens never disturb tests that use SoftHSM2 directly), sets
``HSMKEY_FAULT_TARGET``/``HSMKEY_FAULT_CONTROL``/``HSMKEY_FAULT_COUNTS`` before the module is
first called, and gives each test a clean control file and zeroed counters.

:class:`Pkcs11Client` is a small ctypes PKCS#11 client that reports raw return codes, for
tests of the module itself.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .softhsm import SoftHSM

FAULTMOD_DIR = Path(__file__).resolve().parent.parent / "faultmod"
MANIFEST = FAULTMOD_DIR / "Cargo.toml"
LIBRARY = FAULTMOD_DIR / "target" / "release" / "libhsmkey_faultmod.so"

ENV_TARGET = "HSMKEY_FAULT_TARGET"
ENV_CONTROL = "HSMKEY_FAULT_CONTROL"
ENV_COUNTS = "HSMKEY_FAULT_COUNTS"

# The 68 functions of the PKCS#11 2.40 CK_FUNCTION_LIST, in order.
FUNCTIONS = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
]
assert len(FUNCTIONS) == 68

# Return codes by value, for messages (the module itself knows every CKR_* name).
CKR_NAMES = {
    0x000: "CKR_OK",
    0x003: "CKR_SLOT_ID_INVALID",
    0x005: "CKR_GENERAL_ERROR",
    0x006: "CKR_FUNCTION_FAILED",
    0x007: "CKR_ARGUMENTS_BAD",
    0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY",
    0x032: "CKR_DEVICE_REMOVED",
    0x050: "CKR_FUNCTION_CANCELED",
    0x054: "CKR_FUNCTION_NOT_SUPPORTED",
    0x060: "CKR_KEY_HANDLE_INVALID",
    0x070: "CKR_MECHANISM_INVALID",
    0x082: "CKR_OBJECT_HANDLE_INVALID",
    0x090: "CKR_OPERATION_ACTIVE",
    0x091: "CKR_OPERATION_NOT_INITIALIZED",
    0x0A0: "CKR_PIN_INCORRECT",
    0x0A3: "CKR_PIN_EXPIRED",
    0x0A4: "CKR_PIN_LOCKED",
    0x0B0: "CKR_SESSION_CLOSED",
    0x0B1: "CKR_SESSION_COUNT",
    0x0B3: "CKR_SESSION_HANDLE_INVALID",
    0x0C0: "CKR_SIGNATURE_INVALID",
    0x0C1: "CKR_SIGNATURE_LEN_RANGE",
    0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}
CKR = {name: value for value, name in CKR_NAMES.items()}

CKF_TOKEN_PRESENT = 0x1
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_OS_LOCKING_OK = 0x2
CKF_USER_PIN_COUNT_LOW = 0x10000
CKF_USER_PIN_FINAL_TRY = 0x20000
CKF_USER_PIN_LOCKED = 0x40000
CKU_USER = 1
CKS_RO_PUBLIC_SESSION = 0
CKS_RO_USER_FUNCTIONS = 1
CKO_PUBLIC_KEY = 2
CKO_PRIVATE_KEY = 3
CKA_CLASS = 0x0
CKA_LABEL = 0x3
CKA_EC_POINT = 0x181
CKM_ECDSA = 0x1041


def rv_name(rv: int) -> str:
    return CKR_NAMES.get(rv, f"CKR_0x{rv:08X}")


# ---- building -------------------------------------------------------------------------------

_build_lock = threading.Lock()
_built: Path | None = None


class FaultModBuildError(RuntimeError):
    """``cargo build`` of the fault module failed."""


def _cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
    return str(home) if home.is_file() else None


def build_faultmod() -> Path:
    """Build ``tests/faultmod`` (release) once per process and return the library's path.

    Cargo makes this a no-op (a fraction of a second) when the library is up to date. Raises
    :class:`FaultModBuildError` with cargo's output when the build fails, and
    ``FileNotFoundError`` when there is no cargo.
    """
    global _built
    with _build_lock:
        if _built is not None:
            return _built
        cargo = _cargo()
        if cargo is None:
            raise FileNotFoundError("cargo not found: the fault-injection module needs Rust")
        proc = subprocess.run(
            [cargo, "build", "--release", "--quiet", "--manifest-path", str(MANIFEST)],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0 or not LIBRARY.is_file():
            raise FaultModBuildError(
                f"cargo build of {MANIFEST} failed ({proc.returncode}):\n{proc.stderr}"
            )
        _built = LIBRARY
        return LIBRARY


# ---- the control file and the counters ------------------------------------------------------


class FaultModule:
    """Steers the fault module through its control file and reads its counters.

    Every method that changes the faults rewrites the control file atomically and makes the
    module re-read it at once (a line it cannot use raises ``ValueError``). Rules are armed when
    added: ``nth=3`` is the third call from then on. ``path`` is what to give
    ``SessionPool``.
    """

    def __init__(self, library: Path, control: Path, counts_file: Path, target: Path) -> None:
        self.library = library
        self.control = control
        self.counts_file = counts_file
        self.target = target
        self._lines: list[str] = []
        self._ids = itertools.count(1)
        # The same path as the code under test loads: the same instance, the same counters.
        self._dll = ctypes.CDLL(str(library))
        for name in ("hsmkey_fault_count", "hsmkey_fault_injected"):
            getattr(self._dll, name).restype = ctypes.c_uint64
            getattr(self._dll, name).argtypes = [ctypes.c_char_p]
        self._dll.hsmkey_fault_open_sessions.restype = ctypes.c_uint64
        self._dll.hsmkey_fault_open_sessions.argtypes = []
        self._dll.hsmkey_fault_rv.restype = ctypes.c_int64
        self._dll.hsmkey_fault_rv.argtypes = [ctypes.c_char_p]
        self._dll.hsmkey_fault_dump.restype = ctypes.c_int
        self._dll.hsmkey_fault_reload.restype = ctypes.c_int
        self._dll.hsmkey_fault_reset_counts.restype = None

    @property
    def path(self) -> str:
        """The module's path, for ``SessionPool(faultmod.path, ...)``."""
        return str(self.library)

    @property
    def lines(self) -> list[str]:
        """The directives in force, in order."""
        return list(self._lines)

    # -- writing --

    def _write(self) -> None:
        text = "".join(line + "\n" for line in self._lines)
        fd, tmp = tempfile.mkstemp(dir=self.control.parent, prefix=".control-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.control)
        bad = self._dll.hsmkey_fault_reload()
        if bad:
            raise ValueError(
                f"the fault module rejected {bad} line(s) of its control file "
                f"(details on stderr):\n{text}"
            )

    def add(self, line: str) -> None:
        """Append a raw directive (README syntax) and apply it."""
        self._lines.append(line)
        try:
            self._write()
        except ValueError:
            self._lines.pop()
            self._write()
            raise

    def _check_function(self, function: str) -> None:
        if function != "*" and function not in FUNCTIONS:
            raise ValueError(f"unknown PKCS#11 function {function!r}")

    def fail(
        self,
        function: str,
        rv: str | int,
        *,
        nth: int | None = None,
        every: int | None = None,
        count: int | None = None,
        prob: float | None = None,
        seed: int | None = None,
        always: bool = False,
        mode: str | None = None,
        effect: str | None = None,
    ) -> str:
        """Make ``function`` return ``rv``: on the ``nth`` call from now, on ``every`` n-th,
        on the next ``count`` calls, with probability ``prob`` (PRNG ``seed``), or
        ``always``. ``mode``: ``"before"``/``"after"`` (does the real call run first?);
        ``effect``: ``"close_session"``, ``"logout"`` or ``"close_all"`` to make the fault
        real in the token. Returns the rule's line (for :meth:`remove`)."""
        self._check_function(function)
        code = f"0x{rv:X}" if isinstance(rv, int) else rv
        if isinstance(rv, str):
            self.rv(rv)  # raises ValueError for an unknown name
        triggers = [f"{k}={v}" for k, v in (("nth", nth), ("every", every), ("count", count)) if v]
        if prob is not None:
            triggers.append(f"prob={prob!r}")
        if always:
            triggers.append("always")
        if len(triggers) != 1:
            raise ValueError("give exactly one of nth=, every=, count=, prob=, always=True")
        words = ["fail", function, code, *triggers]
        if seed is not None:
            words.append(f"seed={seed}")
        if mode is not None:
            words.append(f"mode={mode}")
        if effect is not None:
            words.append(f"effect={effect}")
        words.append(f"id={next(self._ids)}")
        line = " ".join(words)
        self.add(line)
        return line

    def latency(self, function: str, seconds: float) -> str:
        """Sleep ``seconds`` before each call of ``function`` (``"*"``: all)."""
        self._check_function(function)
        line = f"latency {function} {round(seconds * 1e6)}us"
        self.add(line)
        return line

    def flags(self, *flags: str) -> str:
        """Token flags to report: ``"+CKF_USER_PIN_FINAL_TRY"``, ``"-CKF_LOGIN_REQUIRED"``."""
        line = "token_flags " + " ".join(flags)
        self.add(line)
        return line

    def pin_retries(self, n: int) -> str:
        """Simulate a PIN counter with ``n`` tries (see README)."""
        line = f"pin_retries {n}"
        self.add(line)
        return line

    def remove_token(self, label: str | None = None, slot: int | None = None) -> str:
        """Take the token (by label or slot id; default: every token) out of its slot."""
        if label is not None and slot is not None:
            raise ValueError("give label= or slot=, not both")
        line = "remove_token"
        if label is not None:
            line += f" label={label}"
        elif slot is not None:
            line += f" slot={slot}"
        self.add(line)
        return line

    def restore_token(self) -> None:
        """Put every removed token back."""
        self._lines = [line for line in self._lines if not line.startswith("remove_token")]
        self._write()

    def unreachable(self, code: str | None = None, delay: float | None = None) -> str:
        """Stop answering like a lost network HSM: every call fails with ``code`` (default
        ``CKR_DEVICE_ERROR``) after ``delay`` seconds, and the sessions opened through the
        module (and so the login) are gone. :meth:`remove` the returned line to bring it
        back."""
        line = "unreachable"
        if code is not None:
            self.rv(code)  # raises ValueError for an unknown name
            line += f" code={code}"
        if delay:
            line += f" delay={round(delay * 1e6)}us"
        self.add(line)
        return line

    def trace(self, path: Path) -> str:
        """Log every call (function, session, return code, injected or not) to ``path``."""
        line = f"trace {path}"
        self.add(line)
        return line

    def remove(self, line: str) -> None:
        """Drop one directive returned by another method."""
        self._lines.remove(line)
        self._write()

    def clear(self) -> None:
        """No faults any more (tokens restored, flags and latency gone)."""
        self._lines = []
        self._write()

    # -- reading --

    def rv(self, name: str) -> int:
        """The value of a ``CKR_*`` name (any the module knows)."""
        value = int(self._dll.hsmkey_fault_rv(name.encode()))
        if value < 0:
            raise ValueError(f"unknown PKCS#11 return code {name!r}")
        return value

    def count(self, function: str) -> int:
        """Calls of ``function`` through the module since the last :meth:`reset_counts`."""
        value = int(self._dll.hsmkey_fault_count(function.encode()))
        if value == 2**64 - 1:
            raise ValueError(f"unknown PKCS#11 function {function!r}")
        return value

    def injected(self, function: str) -> int:
        """Failures injected into ``function`` since the last :meth:`reset_counts`."""
        value = int(self._dll.hsmkey_fault_injected(function.encode()))
        if value == 2**64 - 1:
            raise ValueError(f"unknown PKCS#11 function {function!r}")
        return value

    def counts(self) -> dict[str, int]:
        """Every function's call count that is not zero."""
        return {f: n for f in FUNCTIONS if (n := self.count(f))}

    def reset_counts(self) -> None:
        self._dll.hsmkey_fault_reset_counts()

    def open_sessions(self) -> int:
        """Sessions opened through the module and not closed yet."""
        return int(self._dll.hsmkey_fault_open_sessions())

    def dump(self) -> dict[str, Any]:
        """Write the counters to ``HSMKEY_FAULT_COUNTS`` and return them as parsed there."""
        code = self._dll.hsmkey_fault_dump()
        if code != 0:
            raise RuntimeError(f"hsmkey_fault_dump() returned {code}")
        result: dict[str, Any] = json.loads(self.counts_file.read_text())
        return result


_setup_lock = threading.Lock()
_module: FaultModule | None = None


def fault_module(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> FaultModule:
    """The process's :class:`FaultModule`, set up on first use (see the module docstring)."""
    global _module
    with _setup_lock:
        if _module is not None:
            return _module
        try:
            library = build_faultmod()
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        work = tmp_path_factory.mktemp("faultmod")
        target = work / "libsofthsm2-faultmod-target.so"
        shutil.copy2(softhsm.library, target)
        control = work / "control"
        control.write_text("")
        counts = work / "counts.json"
        os.environ[ENV_TARGET] = str(target)
        os.environ[ENV_CONTROL] = str(control)
        os.environ[ENV_COUNTS] = str(counts)
        _module = FaultModule(library, control, counts, target)
        return _module


@pytest.fixture(name="faultmod")
def faultmod_fixture(
    softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultModule]:
    """The fault-injection module with no faults and zeroed counters; faults are cleared
    again after the test."""
    module = fault_module(softhsm, tmp_path_factory)
    module.clear()
    module.reset_counts()
    yield module
    module.clear()


# ---- a raw ctypes client ---------------------------------------------------------------------


class CallError(Exception):
    """A PKCS#11 call made by :class:`Pkcs11Client` did not return ``CKR_OK``."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} returned {rv_name(rv)}")
        self.function = function
        self.rv = rv
        self.rv_name = rv_name(rv)


_ULONG = ctypes.c_ulong
_PTR = ctypes.c_void_p
_PULONG = ctypes.POINTER(_ULONG)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version), *((name, _PTR) for name in FUNCTIONS)]


class _InitArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", _PTR),
        ("DestroyMutex", _PTR),
        ("LockMutex", _PTR),
        ("UnlockMutex", _PTR),
        ("flags", _ULONG),
        ("pReserved", _PTR),
    ]


class TokenInfoStruct(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", _ULONG),
        *((n, _ULONG) for n in ("max_s", "s", "max_rw", "rw", "maxpin", "minpin")),
        *((n, _ULONG) for n in ("tpub", "fpub", "tpriv", "fpriv")),
        ("hardwareVersion", _Version),
        ("firmwareVersion", _Version),
        ("utcTime", ctypes.c_char * 16),
    ]


class SlotInfoStruct(ctypes.Structure):
    _fields_ = [
        ("slotDescription", ctypes.c_char * 64),
        ("manufacturerID", ctypes.c_char * 32),
        ("flags", _ULONG),
        ("hardwareVersion", _Version),
        ("firmwareVersion", _Version),
    ]


class SessionInfoStruct(ctypes.Structure):
    _fields_ = [("slotID", _ULONG), ("state", _ULONG), ("flags", _ULONG), ("err", _ULONG)]


class Attribute(ctypes.Structure):
    _fields_ = [("type", _ULONG), ("pValue", _PTR), ("ulValueLen", _ULONG)]


class Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", _ULONG), ("pParameter", _PTR), ("ulParameterLen", _ULONG)]


_SIGNATURES: dict[str, Sequence[Any]] = {
    "C_Initialize": [_PTR],
    "C_Finalize": [_PTR],
    "C_GetInfo": [_PTR],
    "C_GetSlotList": [ctypes.c_ubyte, _PULONG, _PULONG],
    "C_GetSlotInfo": [_ULONG, ctypes.POINTER(SlotInfoStruct)],
    "C_GetTokenInfo": [_ULONG, ctypes.POINTER(TokenInfoStruct)],
    "C_OpenSession": [_ULONG, _ULONG, _PTR, _PTR, _PULONG],
    "C_CloseSession": [_ULONG],
    "C_CloseAllSessions": [_ULONG],
    "C_GetSessionInfo": [_ULONG, ctypes.POINTER(SessionInfoStruct)],
    "C_Login": [_ULONG, _ULONG, ctypes.c_char_p, _ULONG],
    "C_Logout": [_ULONG],
    "C_GetAttributeValue": [_ULONG, _ULONG, ctypes.POINTER(Attribute), _ULONG],
    "C_FindObjectsInit": [_ULONG, ctypes.POINTER(Attribute), _ULONG],
    "C_FindObjects": [_ULONG, _PULONG, _ULONG, _PULONG],
    "C_FindObjectsFinal": [_ULONG],
    "C_SignInit": [_ULONG, ctypes.POINTER(Mechanism), _ULONG],
    "C_Sign": [_ULONG, ctypes.c_char_p, _ULONG, _PTR, _PULONG],
    "C_GenerateRandom": [_ULONG, _PTR, _ULONG],
}


@dataclass(frozen=True)
class TokenInfo:
    label: str
    flags: int


class Pkcs11Client:
    """A minimal PKCS#11 client over ctypes that never finalizes the module.

    :meth:`call` returns the raw return code; the named methods raise :class:`CallError`.
    ctypes releases the GIL during each call, so threads really run in parallel.
    """

    def __init__(self, module_path: str | os.PathLike[str]) -> None:
        self.module_path = str(module_path)
        self._dll = ctypes.CDLL(self.module_path)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = _ULONG
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        pointer = ctypes.POINTER(_FunctionList)()
        rv = get_list(ctypes.byref(pointer))
        if rv != 0:
            raise CallError("C_GetFunctionList", rv)
        self._list = pointer.contents
        self._functions: dict[str, Any] = {}
        args = _InitArgs(flags=CKF_OS_LOCKING_OK)
        rv = self.call("C_Initialize", ctypes.cast(ctypes.byref(args), _PTR))
        if rv not in (0, CKR["CKR_CRYPTOKI_ALREADY_INITIALIZED"]):
            raise CallError("C_Initialize", rv)

    def function(self, name: str) -> Any:
        if name not in self._functions:
            address = getattr(self._list, name)
            proto = ctypes.CFUNCTYPE(_ULONG, *_SIGNATURES[name])
            self._functions[name] = proto(address)
        return self._functions[name]

    def call(self, name: str, *args: Any) -> int:
        """Call ``name`` and return its return code."""
        return int(self.function(name)(*args))

    def check(self, name: str, *args: Any) -> None:
        rv = self.call(name, *args)
        if rv != 0:
            raise CallError(name, rv)

    def finalize(self) -> int:
        return self.call("C_Finalize", None)

    def slot_list(self, token_present: bool = True) -> list[int]:
        count = _ULONG()
        self.check("C_GetSlotList", int(token_present), None, ctypes.byref(count))
        slots = (_ULONG * max(count.value, 1))()
        self.check("C_GetSlotList", int(token_present), slots, ctypes.byref(count))
        return list(slots[: count.value])

    def slot_flags(self, slot: int) -> int:
        info = SlotInfoStruct()
        self.check("C_GetSlotInfo", slot, ctypes.byref(info))
        return int(info.flags)

    def token_info(self, slot: int) -> TokenInfo:
        info = TokenInfoStruct()
        self.check("C_GetTokenInfo", slot, ctypes.byref(info))
        return TokenInfo(info.label.decode().rstrip(), int(info.flags))

    def open_session(self, slot: int, rw: bool = False) -> int:
        handle = _ULONG()
        flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
        self.check("C_OpenSession", slot, flags, None, None, ctypes.byref(handle))
        return handle.value

    def close_session(self, handle: int) -> None:
        self.check("C_CloseSession", handle)

    def close_all_sessions(self, slot: int) -> None:
        self.check("C_CloseAllSessions", slot)

    def session_state(self, handle: int) -> int:
        info = SessionInfoStruct()
        self.check("C_GetSessionInfo", handle, ctypes.byref(info))
        return int(info.state)

    def login(self, handle: int, pin: str) -> None:
        raw = pin.encode()
        self.check("C_Login", handle, CKU_USER, raw, len(raw))

    def logout(self, handle: int) -> None:
        self.check("C_Logout", handle)

    def find(self, handle: int, label: str, cls: int) -> int:
        """The one object with this label and class."""
        label_raw = ctypes.create_string_buffer(label.encode(), len(label))
        cls_raw = _ULONG(cls)
        template = (Attribute * 2)(
            Attribute(CKA_CLASS, ctypes.cast(ctypes.byref(cls_raw), _PTR), ctypes.sizeof(_ULONG)),
            Attribute(CKA_LABEL, ctypes.cast(label_raw, _PTR), len(label)),
        )
        self.check("C_FindObjectsInit", handle, template, 2)
        found = (_ULONG * 2)()
        n = _ULONG()
        try:
            self.check("C_FindObjects", handle, found, 2, ctypes.byref(n))
        finally:
            self.call("C_FindObjectsFinal", handle)
        if n.value != 1:
            raise LookupError(f"{n.value} objects labelled {label!r} of class {cls}")
        return int(found[0])

    def attribute(self, handle: int, obj: int, attr: int) -> bytes:
        template = (Attribute * 1)(Attribute(attr, None, 0))
        self.check("C_GetAttributeValue", handle, obj, template, 1)
        buf = ctypes.create_string_buffer(template[0].ulValueLen)
        template[0].pValue = ctypes.cast(buf, _PTR)
        self.check("C_GetAttributeValue", handle, obj, template, 1)
        return buf.raw[: template[0].ulValueLen]

    def sign_init(self, handle: int, key: int, mechanism: int = CKM_ECDSA) -> int:
        """``C_SignInit``; returns the return code."""
        mech = Mechanism(mechanism, None, 0)
        return self.call("C_SignInit", handle, ctypes.byref(mech), key)

    def sign_call(self, handle: int, data: bytes, size: int | None = 512) -> tuple[int, bytes]:
        """One ``C_Sign`` call: into a buffer of ``size`` bytes, or a size query (None)."""
        length = _ULONG(size or 0)
        buf = ctypes.create_string_buffer(size) if size else None
        rv = self.call("C_Sign", handle, data, len(data), buf, ctypes.byref(length))
        return rv, (buf.raw[: length.value] if buf is not None and rv == 0 else b"")

    def sign(self, handle: int, key: int, data: bytes, mechanism: int = CKM_ECDSA) -> bytes:
        """``C_SignInit`` and one ``C_Sign`` into a large enough buffer."""
        rv = self.sign_init(handle, key, mechanism)
        if rv != 0:
            raise CallError("C_SignInit", rv)
        rv, sig = self.sign_call(handle, data)
        if rv != 0:
            raise CallError("C_Sign", rv)
        return sig

    def random(self, handle: int, n: int = 16) -> int:
        """``C_GenerateRandom`` of ``n`` bytes; returns the return code (a cheap call)."""
        buf = ctypes.create_string_buffer(n)
        return self.call("C_GenerateRandom", handle, buf, n)
