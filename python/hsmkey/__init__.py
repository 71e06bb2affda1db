"""hsmkey: sign and decrypt with private keys that never leave a PKCS#11 token.

``SessionPool`` keeps logged-in sessions warm and heals lost sessions and logins;
``HSMJWK`` is a jwcrypto JWK whose private operations run in the token.
"""

from __future__ import annotations

import atexit

from . import exceptions
from ._hsmkey import Key, Session, __version__, _close_all_pools
from .exceptions import (
    HSMError,
    HSMKeyChangedError,
    HSMKeyNotFoundError,
    HSMMechanismError,
    HSMModuleError,
    HSMPinError,
    HSMPoolClosedError,
    HSMPoolExhaustedError,
    HSMSessionError,
    HSMTokenNotFoundError,
)
from .jwk import HSMJWK, jwks
from .pool import SessionPool, hsm_session

__all__ = [
    "HSMJWK",
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
    "Key",
    "Session",
    "SessionPool",
    "__version__",
    "exceptions",
    "hsm_session",
    "jwks",
]

# Close every pool at interpreter exit: sessions are closed and the token logged out, even
# for pools that are still referenced (module globals are not reliably collected at exit).
atexit.register(_close_all_pools)
