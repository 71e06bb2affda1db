"""hsmkey: sign and decrypt with private keys that never leave a PKCS#11 token.

``SessionPool`` keeps logged-in sessions warm and heals lost sessions and logins;
``HSMJWK`` is a jwcrypto JWK whose private operations run in the token; ``PoolGroup`` spreads
keys held by several HSMs over them, with failover.
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
    HSMUnavailableError,
)
from .group import GroupKey, PoolGroup
from .jwk import HSMJWK, jwks
from .pool import SessionPool, hsm_session

__all__ = [
    "HSMJWK",
    "GroupKey",
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
    "Key",
    "PoolGroup",
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
