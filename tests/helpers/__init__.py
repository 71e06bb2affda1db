"""Test helpers for hsmkey: a throwaway SoftHSM2 token, PKCS#11 call counting, fault making.

- :mod:`.softhsm`: :func:`build_softhsm` and the :class:`SoftHSM` the ``softhsm`` fixture gives.
- :mod:`.spy`: :class:`Spy`, run code in a new process through pkcs11-spy and count calls.
- :mod:`.faults`: close sessions or log out behind the code under test's back (ctypes).
- :mod:`.vectors`: published JWS vectors whose keys the token holds.
"""

from .faults import (
    Faults,
    Pkcs11CallError,
    SessionInfo,
    close_all_sessions,
    cryptoki,
    is_logged_in,
    logout,
    pykcs11_lib,
    session_info,
)
from .softhsm import (
    GENERATED_KEYS,
    RFC7515_KEY,
    RFC8037_KEY,
    TEST_KEYS,
    TOKEN2_KEYS,
    UNIQUE_KEYS,
    KeySpec,
    SoftHSM,
    Token,
)
from .spy import Call, Spy, SpyRun, parse_spy_log
from .vectors import RFC7515_A2, RFC8037_A4, JWSVector

# The counters SessionPool.stats() reports (DESIGN.md, plus recoveries/logins/max_in_use/epoch).
STATS_KEYS = frozenset(
    {
        "in_use",
        "idle",
        "created",
        "reused",
        "waits",
        "timeouts",
        "relogins",
        "discarded",
        "recoveries",
        "logins",
        "max_in_use",
        "epoch",
    }
)

__all__ = [
    "GENERATED_KEYS",
    "RFC7515_A2",
    "RFC7515_KEY",
    "RFC8037_A4",
    "RFC8037_KEY",
    "STATS_KEYS",
    "TEST_KEYS",
    "TOKEN2_KEYS",
    "UNIQUE_KEYS",
    "Call",
    "Faults",
    "JWSVector",
    "KeySpec",
    "Pkcs11CallError",
    "SessionInfo",
    "SoftHSM",
    "Spy",
    "SpyRun",
    "Token",
    "close_all_sessions",
    "cryptoki",
    "is_logged_in",
    "logout",
    "parse_spy_log",
    "pykcs11_lib",
    "session_info",
]
