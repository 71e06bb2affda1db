"""Make faults from outside: a second PKCS#11 client in the test process, through ctypes.

A shared library opened twice in one process is one instance: these functions reach the same
SoftHSM2 state as the code under test, so they can close its sessions or log it out behind
its back, the way another library of the same application would.

The library is initialized with ``CKF_OS_LOCKING_OK`` (with NULL arguments SoftHSM2 turns its
mutexes off for the whole process), ``CKR_CRYPTOKI_ALREADY_INITIALIZED`` is expected when the
code under test got there first, and it is never finalized: ``C_Finalize`` would end every
session of the process. (PyKCS11 calls ``C_Finalize`` when its last ``PyKCS11Lib`` is
unloaded; use :func:`pykcs11_lib` for a PyKCS11 handle that never is.)
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG

CKR_OK = 0x0
CKR_USER_NOT_LOGGED_IN = 0x101
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKU_USER = 1

CKS_RO_PUBLIC_SESSION = 0
CKS_RO_USER_FUNCTIONS = 1
CKS_RW_PUBLIC_SESSION = 2
CKS_RW_USER_FUNCTIONS = 3
CKS_RW_SO_FUNCTIONS = 4
LOGGED_IN_STATES = frozenset({CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS})

# The few return codes these helpers meet; anything else prints as hex.
CKR_NAMES = {
    0x0: "CKR_OK",
    0x3: "CKR_SLOT_ID_INVALID",
    0x5: "CKR_GENERAL_ERROR",
    0x7: "CKR_ARGUMENTS_BAD",
    0x32: "CKR_DEVICE_REMOVED",
    0x60: "CKR_KEY_HANDLE_INVALID",
    0x82: "CKR_OBJECT_HANDLE_INVALID",
    0xA0: "CKR_PIN_INCORRECT",
    0xB0: "CKR_SESSION_CLOSED",
    0xB3: "CKR_SESSION_HANDLE_INVALID",
    0xE0: "CKR_TOKEN_NOT_PRESENT",
    0xE1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}


def rv_name(rv: int) -> str:
    return CKR_NAMES.get(rv, f"CKR_0x{rv:08X}")


class Pkcs11CallError(Exception):
    """A PKCS#11 call made by these helpers failed."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} returned {rv_name(rv)}")
        self.function = function
        self.rv = rv
        self.rv_name = rv_name(rv)


class _CInitializeArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", CK_ULONG),
        ("pReserved", ctypes.c_void_p),
    ]


class CKSessionInfo(ctypes.Structure):
    _fields_ = [
        ("slotID", CK_ULONG),
        ("state", CK_ULONG),
        ("flags", CK_ULONG),
        ("ulDeviceError", CK_ULONG),
    ]


_F = ctypes.CFUNCTYPE
# The head of CK_FUNCTION_LIST, in the order of pkcs11f.h (on Unix the struct is not packed).
_FUNCTIONS: list[tuple[str, Any]] = [
    ("C_Initialize", _F(CK_RV, ctypes.c_void_p)),
    ("C_Finalize", _F(CK_RV, ctypes.c_void_p)),
    ("C_GetInfo", _F(CK_RV, ctypes.c_void_p)),
    ("C_GetFunctionList", _F(CK_RV, ctypes.c_void_p)),
    ("C_GetSlotList", _F(CK_RV, ctypes.c_ubyte, ctypes.c_void_p, ctypes.POINTER(CK_ULONG))),
    ("C_GetSlotInfo", _F(CK_RV, CK_ULONG, ctypes.c_void_p)),
    ("C_GetTokenInfo", _F(CK_RV, CK_ULONG, ctypes.c_void_p)),
    ("C_GetMechanismList", ctypes.c_void_p),
    ("C_GetMechanismInfo", ctypes.c_void_p),
    ("C_InitToken", ctypes.c_void_p),
    ("C_InitPIN", ctypes.c_void_p),
    ("C_SetPIN", ctypes.c_void_p),
    (
        "C_OpenSession",
        _F(CK_RV, CK_ULONG, CK_ULONG, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(CK_ULONG)),
    ),
    ("C_CloseSession", _F(CK_RV, CK_ULONG)),
    ("C_CloseAllSessions", _F(CK_RV, CK_ULONG)),
    ("C_GetSessionInfo", _F(CK_RV, CK_ULONG, ctypes.POINTER(CKSessionInfo))),
    ("C_GetOperationState", ctypes.c_void_p),
    ("C_SetOperationState", ctypes.c_void_p),
    ("C_Login", _F(CK_RV, CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG)),
    ("C_Logout", _F(CK_RV, CK_ULONG)),
]


class _CKVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _CKVersion), *_FUNCTIONS]


@dataclass(frozen=True)
class SessionInfo:
    slot_id: int
    state: int  # CKS_*
    flags: int

    @property
    def logged_in(self) -> bool:
        return self.state in LOGGED_IN_STATES

    @property
    def rw(self) -> bool:
        return bool(self.flags & CKF_RW_SESSION)


class Cryptoki:
    """A minimal ctypes client of one PKCS#11 module; get it from :func:`cryptoki`."""

    def __init__(self, module_path: str) -> None:
        self.module_path = module_path
        self._dll = ctypes.CDLL(module_path)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        pointer = ctypes.POINTER(_FunctionList)()
        self._check("C_GetFunctionList", get_list(ctypes.byref(pointer)))
        self._fl = pointer.contents
        args = _CInitializeArgs(flags=CKF_OS_LOCKING_OK)
        rv = self._fl.C_Initialize(ctypes.cast(ctypes.byref(args), ctypes.c_void_p))
        if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
            raise Pkcs11CallError("C_Initialize", rv)
        self.initialized_here = rv == CKR_OK

    @staticmethod
    def _check(function: str, rv: int) -> None:
        if rv != CKR_OK:
            raise Pkcs11CallError(function, rv)

    def slot_list(self, token_present: bool = True) -> list[int]:
        count = CK_ULONG()
        self._check(
            "C_GetSlotList", self._fl.C_GetSlotList(token_present, None, ctypes.byref(count))
        )
        slots = (CK_ULONG * count.value)()
        self._check(
            "C_GetSlotList", self._fl.C_GetSlotList(token_present, slots, ctypes.byref(count))
        )
        return list(slots[: count.value])

    def open_session(self, slot_id: int, rw: bool = False) -> int:
        flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
        handle = CK_ULONG()
        self._check(
            "C_OpenSession",
            self._fl.C_OpenSession(slot_id, flags, None, None, ctypes.byref(handle)),
        )
        return handle.value

    def close_session(self, handle: int) -> None:
        self._check("C_CloseSession", self._fl.C_CloseSession(handle))

    def close_all_sessions(self, slot_id: int) -> None:
        self._check("C_CloseAllSessions", self._fl.C_CloseAllSessions(slot_id))

    def session_info(self, handle: int) -> SessionInfo:
        info = CKSessionInfo()
        self._check("C_GetSessionInfo", self._fl.C_GetSessionInfo(handle, ctypes.byref(info)))
        return SessionInfo(info.slotID, info.state, info.flags)

    def login(self, handle: int, pin: str) -> None:
        raw = pin.encode()
        self._check("C_Login", self._fl.C_Login(handle, CKU_USER, raw, len(raw)))

    def logout(self, handle: int) -> None:
        self._check("C_Logout", self._fl.C_Logout(handle))


_lock = threading.Lock()
_clients: dict[str, Cryptoki] = {}


def cryptoki(module_path: str | None = None) -> Cryptoki:
    """The process-wide ctypes client of ``module_path`` (default: the SoftHSM2 module)."""
    if module_path is None:
        from .softhsm import find_softhsm2_module

        module_path = find_softhsm2_module()
    key = os.path.realpath(module_path)
    with _lock:
        if key not in _clients:
            _clients[key] = Cryptoki(module_path)
        return _clients[key]


def close_all_sessions(slot_id: int, module_path: str | None = None) -> None:
    """``C_CloseAllSessions`` on the slot: every session of this process on that token is
    gone, and so is the login."""
    cryptoki(module_path).close_all_sessions(slot_id)


def logout(slot_id: int, module_path: str | None = None) -> None:
    """Log this process out of the token, leaving its sessions open (public sessions now).

    Opens a session of its own, calls ``C_Logout`` on it (login state is per process and
    token, so that logs out every session) and closes it. Not being logged in is fine.
    """
    client = cryptoki(module_path)
    handle = client.open_session(slot_id)
    try:
        try:
            client.logout(handle)
        except Pkcs11CallError as exc:
            if exc.rv != CKR_USER_NOT_LOGGED_IN:
                raise
    finally:
        client.close_session(handle)


def is_logged_in(slot_id: int, module_path: str | None = None) -> bool:
    """Whether this process is logged in to the token (asks a session of its own)."""
    client = cryptoki(module_path)
    handle = client.open_session(slot_id)
    try:
        return client.session_info(handle).logged_in
    finally:
        client.close_session(handle)


def session_info(handle: int, module_path: str | None = None) -> SessionInfo:
    """``C_GetSessionInfo`` on any session handle of this process (e.g. one hsmkey holds);
    raises :class:`Pkcs11CallError` (``rv_name == "CKR_SESSION_HANDLE_INVALID"``) if closed."""
    return cryptoki(module_path).session_info(handle)


_pykcs11_libs: dict[str, Any] = {}


def pykcs11_lib(module_path: str | None = None) -> Any:
    """A ``PyKCS11.PyKCS11Lib`` for ``module_path`` that is never unloaded.

    PyKCS11 calls ``C_Finalize`` when its last ``PyKCS11Lib`` of a module goes away, which
    would end every session of the process, hsmkey's included. Initializing through
    :func:`cryptoki` first makes sure SoftHSM2 runs with OS locking whoever comes next.
    """
    import PyKCS11  # type: ignore[import-untyped]

    client = cryptoki(module_path)
    with _lock:
        if client.module_path not in _pykcs11_libs:
            lib = PyKCS11.PyKCS11Lib().load(client.module_path)
            # One user more than the instances alive: the count never falls to 0, so
            # PyKCS11 never calls C_Unload/C_Finalize, even at interpreter exit.
            PyKCS11.PyKCS11Lib._loaded_libs[client.module_path]["nb_users"] += 1
            _pykcs11_libs[client.module_path] = lib
        return _pykcs11_libs[client.module_path]


class Faults:
    """The fault helpers bound to the test tokens; the ``faults`` fixture gives one."""

    def __init__(self, module_path: str, slot_id: int) -> None:
        self.module_path = module_path
        self.slot_id = slot_id

    def close_all_sessions(self, slot_id: int | None = None) -> None:
        close_all_sessions(self.slot_id if slot_id is None else slot_id, self.module_path)

    def logout(self, slot_id: int | None = None) -> None:
        logout(self.slot_id if slot_id is None else slot_id, self.module_path)

    def is_logged_in(self, slot_id: int | None = None) -> bool:
        return is_logged_in(self.slot_id if slot_id is None else slot_id, self.module_path)

    def session_info(self, handle: int) -> SessionInfo:
        return session_info(handle, self.module_path)
