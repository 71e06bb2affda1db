"""Type stubs for the Rust core of hsmkey (``hsmkey._hsmkey``).

Most users never import this module: :class:`hsmkey.SessionPool` subclasses :class:`Pool`,
and :class:`hsmkey.HSMJWK` wraps :class:`Key`.
"""

import asyncio
import os
from types import TracebackType
from typing import Any, Literal, final

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "Key",
    "Pool",
    "Session",
    "__version__",
    "_close_all_pools",
    "_forget_failed_logins",
    "list_tokens",
]
__version__: str
DEFAULT_MAX_SESSIONS: int

_Alg = str  # a JOSE algorithm name: RS256/384/512, PS256/384/512, ES256/384/512, ES256K, EdDSA,
# ML-DSA-44/65/87
_Hash = Literal["sha1", "sha224", "sha256", "sha384", "sha512"]

class Pool:
    """A lazy pool of logged-in PKCS#11 sessions on one token.

    The constructor validates its arguments and makes no PKCS#11 call; the first use loads
    the module, finds the token and logs in.
    """

    def __new__(
        cls,
        module_path: str | os.PathLike[str],
        token_label: str | None = None,
        user_pin: str | bytes | None = None,
        *,
        token_serial: str | None = None,
        slot_id: int | None = None,
        max_sessions: int | None = None,
        acquire_timeout: float = 30.0,
        max_idle: float | None = 300.0,
        allow_final_pin_try: bool = False,
        init_args: str | None = None,
        key_cache_ttl: float | None = 60.0,
        verify_signatures: bool = False,
    ) -> Pool: ...
    @property
    def module_path(self) -> str:
        """The module path as given (canonicalized on first use)."""
    @property
    def token_label(self) -> str | None:
        """The token label searched for."""
    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
    @property
    def init_args(self) -> str | None:
        """The ``C_Initialize`` reserved string the module is initialized with, or None."""
    @property
    def max_sessions(self) -> int:
        """The most sessions lent out at once."""
    @property
    def verify_signatures(self) -> bool:
        """True if every signature is verified in software before it is returned."""
    @property
    def key_cache_ttl(self) -> float:
        """Seconds a key lookup by label or id is trusted before it is searched again."""
    def refresh(self) -> None:
        """Forget every cached key lookup: the next ``from_hsm``, ``find_key``,
        ``list_keys`` or ``jwks()`` sees the token as it is now."""
    def session(self, rw: bool = False) -> Session:
        """A context manager that borrows a warm session on entry and returns it on exit."""
    def open_session(self, rw: bool = False) -> Session:
        """Borrow a session now; the caller returns it with :meth:`Session.close`."""
    def check(self) -> None:
        """Connect and log in now; raise what the first block would raise."""
    def find_key(self, *, key_label: str | None = None, key_id: bytes | str | None = None) -> Key:
        """A pool-bound private key: each operation borrows a session from the pool."""
    def list_keys(self) -> list[Key]:
        """Every private key in the token that hsmkey can use, as pool-bound keys."""
    def stats(self) -> dict[str, int]:
        """Counters: in_use, idle, created, reused, waits, timeouts, relogins, discarded,
        recoveries, logins, max_in_use, epoch."""
    def close(self) -> None:
        """Close idle sessions and release this pool's share of the token login."""
    def __enter__(self) -> Pool: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Session:
    """A session borrowed from a pool; used by one thread at a time."""

    @property
    def rw(self) -> bool:
        """True for a read-write session."""
    @property
    def closed(self) -> bool:
        """True once the session went back to its pool."""
    def find_key(self, *, key_label: str | None = None, key_id: bytes | str | None = None) -> Key:
        """A private key valid while this session is open."""
    def generate_key_pair(
        self,
        key_type: str,
        *,
        label: str,
        key_id: bytes | None = None,
        bits: int | None = None,
        curve: str | None = None,
    ) -> Key:
        """Generate a key pair in the token (read-write sessions only); the private key is
        sensitive and not extractable. ``key_type``: RSA, EC, Ed25519, Ed448, ML-DSA-44,
        ML-DSA-65, ML-DSA-87, or an SLH-DSA parameter set (``SLH-DSA-SHA2-128s`` ...
        ``SLH-DSA-SHAKE-256f``). ``key_id`` defaults to 16 random bytes."""
    def import_private_key(
        self, key: object, *, label: str, key_id: bytes | None = None, allow_weak: bool = False
    ) -> Key:
        """Store a pyca/cryptography private key (RSA, EC, Ed25519, Ed448, ML-DSA by its
        seed) as a sensitive, non-extractable token object, with its public key beside it."""
    def list_keys(self) -> list[Key]:
        """Every private key in the token that hsmkey can use."""
    def delete_key(self, *, key_label: str | None = None, key_id: bytes | str | None = None) -> int:
        """Delete the key objects with this label and/or id; return how many went."""
    def close(self) -> None:
        """Return the session to its pool (idempotent)."""
    async def __aenter__(self) -> Session:
        """``async with pool.session() as session:``. On a warm pool, entered at once on the
        loop's thread, with no session borrowed: each call of the block that needs the
        session borrows one for itself (waiting without blocking the loop) and gives it back
        when it ends; the block's calls take turns. A pool not connected yet connects on a
        worker thread. A cancelled wait leaves nothing borrowed."""
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    def __enter__(self) -> Session: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Key:
    """A private key object in the token, found by label or id."""

    @property
    def label(self) -> str | None: ...
    @property
    def id(self) -> bytes: ...
    @property
    def key_type(self) -> Literal["RSA", "EC", "EC_EDWARDS", "ML_DSA", "SLH_DSA"]: ...
    @property
    def curve(self) -> str | None:
        """``"P-256"``, ``"P-384"``, ``"P-521"``, ``"secp256k1"``, ``"Ed25519"``,
        ``"Ed448"``, or None for RSA."""
    @property
    def key_size(self) -> int:
        """Bits of the modulus (RSA) or of the curve's order; 0 for ML-DSA."""
    @property
    def modulus(self) -> bytes | None:
        """RSA modulus, big-endian."""
    @property
    def public_exponent(self) -> bytes | None:
        """RSA public exponent, big-endian."""
    @property
    def ec_point(self) -> bytes | None:
        """EC public point, uncompressed (``04 || X || Y``); Edwards: the raw public key."""
    @property
    def parameter_set(self) -> str | None:
        """The ML-DSA (``"ML-DSA-65"``) or SLH-DSA (``"SLH-DSA-SHA2-128s"``) parameter set
        (CKA_PARAMETER_SET), or None for other keys."""
    @property
    def public_value(self) -> bytes | None:
        """ML-DSA: the raw public key (FIPS 204 encoding; RFC 9964's ``pub``); SLH-DSA:
        PK.seed || PK.root."""
    def sign(self, alg: _Alg, data: bytes, *, deterministic: bool = False) -> bytes:
        """Sign ``data`` for a JOSE algorithm; returns the JOSE signature (r||s for EC).
        ML-DSA signatures are hedged unless ``deterministic=True`` (FIPS 204's
        deterministic variant); other algorithms refuse ``deterministic=True``."""
    def sign_async(
        self, alg: _Alg, data: bytes, *, deterministic: bool = False
    ) -> asyncio.Future[bytes]:
        """Like :meth:`sign`, on a worker thread: the event loop keeps running. Returns an
        asyncio future of the running loop (await it, or pass it to ``asyncio.gather`` /
        ``asyncio.ensure_future``); cancelling it drops a call that still waits for its
        turn."""
    def sign_many(
        self, alg: _Alg, payloads: list[bytes], *, deterministic: bool = False
    ) -> list[bytes]:
        """Sign many payloads in one GIL-free section (Ctrl-C is let through between
        payloads, about every 50 ms)."""
    def sign_raw(
        self,
        mechanism: Literal["RSA_PKCS", "RSA_PSS", "ECDSA", "EDDSA", "ML_DSA", "SLH_DSA"],
        data: bytes,
        *,
        hash: _Hash | None = None,
        prehashed: bool = False,
        salt_length: int | None = None,
        der: bool = False,
        context: bytes | None = None,
        deterministic: bool = False,
    ) -> bytes:
        """The low-level signer behind the cryptography interface.

        RSA_PKCS: PKCS#1 v1.5 over ``hash`` (``prehashed``: ``data`` is the digest).
        RSA_PSS: PSS with MGF1(``hash``) and ``salt_length`` bytes of salt.
        ECDSA: over ``hash`` of ``data`` (or the digest itself); returns raw r||s, or the DER
        ``ECDSA-Sig-Value`` with ``der=True`` (what cryptography's keys return).
        EDDSA: pure Ed25519/Ed448.
        ML_DSA: pure ML-DSA with ``context`` (at most 255 bytes), hedged unless
        ``deterministic``. SLH_DSA: pure SLH-DSA, the same way (the low-level signer is the
        only way to SLH-DSA keys: JOSE and cryptography have none yet).
        """
    def decrypt(
        self,
        mechanism: Literal["RSA_PKCS", "RSA_OAEP", "RSA_X_509"],
        data: bytes,
        *,
        hash: _Hash | None = None,
        mgf_hash: _Hash | None = None,
        label: bytes | None = None,
        allow_raw: bool = False,
        allow_process_secret: bool = False,
    ) -> bytes:
        """Decrypt with the RSA private key.

        RSA_PKCS: PKCS#1 v1.5 with implicit rejection: a ciphertext with bad padding returns a
        synthetic message (the same bytes for the same ciphertext and key, in every process)
        and never raises, like pyca/cryptography's own keys.
        RSA_OAEP: hashes default to sha1; every failure raises the same ``HSMError``. Where
        the token's OAEP lacks the hash, or a label is given, the token decrypts raw and
        hsmkey removes the padding in constant time.
        RSA_X_509: raw ``c^d mod n``, a private-key oracle: refused unless ``allow_raw=True``.
        A ciphertext that is not below the modulus raises ``ValueError`` first.
        RSA_PKCS with a key that allows neither raw RSA nor signing raises
        ``HSMMechanismError`` unless ``allow_process_secret=True`` (its implicit-rejection
        secret could only be drawn per process). RSA_OAEP with a label on a key that refuses
        raw RSA raises ``HSMMechanismError`` where the token's OAEP ignores labels.
        """
    def ecdh(self, peer_point: bytes) -> bytes:
        """ECDH with the EC private key: the shared secret with the peer's uncompressed
        public point, which is checked on the key's curve first (``ValueError`` if not)."""

def _close_all_pools() -> None:
    """Close every live pool of this process (registered with ``atexit``)."""

def _forget_failed_logins() -> None:
    """Forget the failed logins of this process, so that their PINs may be tried again (for
    test suites that fake token failures; hsmkey otherwise tries a PIN once per process and
    token)."""

def list_tokens(
    module_path: str | os.PathLike[str], *, mechanisms: bool = True, init_args: str | None = None
) -> list[dict[str, Any]]:
    """Every slot of the module (``C_GetSlotList(FALSE)`` order) with its token and, unless
    ``mechanisms=False``, the token's mechanisms. Opens no session and does not log in."""
