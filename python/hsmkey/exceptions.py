"""Exceptions raised by hsmkey.

Every failure that a caller can cause raises a subclass of :class:`HSMError`. Where a PKCS#11
function failed, the exception carries the name of the return code (``.rv``, for example
``"CKR_PIN_INCORRECT"``) and of the function (``.function``, for example ``"C_Login"``).
The Rust core raises these very classes.
"""

from __future__ import annotations

__all__ = [
    "HSMError",
    "HSMKeyChangedError",
    "HSMKeyNotFoundError",
    "HSMMechanismError",
    "HSMModuleError",
    "HSMPinError",
    "HSMPoolClosedError",
    "HSMPoolExhaustedError",
    "HSMSessionError",
    "HSMTokenNotFoundError",
    "HSMUnavailableError",
]


class HSMError(Exception):
    """Base class of every hsmkey error.

    :ivar rv: the PKCS#11 return code name (``"CKR_..."``), or ``None`` when the error was
        found by hsmkey itself rather than returned by the token.
    :ivar function: the PKCS#11 function that failed (``"C_Sign"``), or ``None``.
    """

    rv: str | None
    function: str | None

    def __init__(self, message: str, rv: str | None = None, function: str | None = None) -> None:
        super().__init__(message)
        self.rv = rv
        self.function = function

    def __reduce__(self) -> tuple[type[HSMError], tuple[str, str | None, str | None]]:
        return (type(self), (str(self), self.rv, self.function))


class HSMModuleError(HSMError):
    """The PKCS#11 module could not be loaded or initialized (missing file, not a PKCS#11
    library, ``C_Initialize`` failed)."""


class HSMSessionError(HSMError):
    """A session could not be opened, lent or used: token not found, session closed,
    pool closed or exhausted, device errors that one retry did not heal."""


class HSMTokenNotFoundError(HSMSessionError):
    """No token (or more than one) matches the label, serial or slot id given."""


class HSMPoolClosedError(HSMSessionError):
    """The pool (or the session, or the key's session) was closed before this use."""


class HSMPoolExhaustedError(HSMSessionError):
    """No session became free within ``acquire_timeout`` seconds."""


class HSMUnavailableError(HSMSessionError):
    """No member of a :class:`~hsmkey.PoolGroup` could serve the call: every member that holds
    the key is down (or failed during this call). Raised at once, without waiting; the group
    takes members back as soon as they answer a probe."""


class HSMPinError(HSMError):
    """Login failed because of the PIN: incorrect, locked, expired, or a pool whose PIN
    differs from the one this process is logged in with. hsmkey never retries a PIN."""


class HSMKeyNotFoundError(HSMError, LookupError):
    """No private key matches the label / id / kid searched for, or more than one does."""


class HSMMechanismError(HSMError):
    """The algorithm is not supported for this key, or the token lacks the mechanism."""


class HSMKeyChangedError(HSMError):
    """The key under this key object's label or id is not the key the object was made with
    any more: it was deleted and another key took its label or id (or the token now answers
    for its handle with another key). Nothing was signed or decrypted with the other key.
    Load the key again (``HSMJWK.from_hsm``, ``find_key``) to use, and publish, the new one."""
