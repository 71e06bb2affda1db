"""``PoolGroup``: one key on several HSMs, spread, failed over and watched.

A group is a list of :class:`~hsmkey.SessionPool` objects, one per HSM (or partition, or
cluster), that hold copies of the same keys. Everything that takes a pool takes a group::

    group = PoolGroup([SessionPool(m1, "hsm-a", pin), SessionPool(m2, "hsm-b", pin)])
    key = HSMJWK.from_hsm(group, key_label="signing-key")

What a group promises (``docs/groups.rst`` says more):

- **Same key, proven.** A group key is the key whose public key the group first saw under
  that label or id. A member where the key is missing, or is another key, is not used for it
  (it shows in :meth:`PoolGroup.stats` and is logged once).
- **Spread.** Each operation goes to the healthy member with the fewest operations in flight.
- **Failover inside the call.** An operation that fails because its member is unavailable
  (device and module errors, lost sessions or login that the pool's own retry did not heal)
  runs again on another member before the caller sees anything. PIN errors and deterministic
  errors (mechanism, key type, bad input) are raised as they are.
- **Probing.** A member that failed is down; one shared thread probes down members with
  backoff (0.5 s doubling up to 30 s) and takes them back when they answer. With every member
  down, calls raise :class:`~hsmkey.exceptions.HSMUnavailableError` at once.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from . import exceptions
from .exceptions import (
    HSMError,
    HSMKeyNotFoundError,
    HSMMechanismError,
    HSMModuleError,
    HSMPinError,
    HSMPoolExhaustedError,
    HSMSessionError,
    HSMUnavailableError,
)

if TYPE_CHECKING:
    from ._hsmkey import Key, Pool, Session

__all__ = ["GroupKey", "PoolGroup"]

log = logging.getLogger("hsmkey.group")

_T = TypeVar("_T")

# Return codes that say "this member cannot serve now", whatever the exception class: a
# device, a connection or a session that went away. Codes about the request itself
# (mechanism, key, data, PIN) are not here: another member would answer them the same.
AVAILABILITY_CODES = frozenset(
    {
        "CKR_GENERAL_ERROR",
        "CKR_FUNCTION_FAILED",
        "CKR_HOST_MEMORY",
        "CKR_DEVICE_ERROR",
        "CKR_DEVICE_MEMORY",
        "CKR_DEVICE_REMOVED",
        "CKR_FUNCTION_CANCELED",
        "CKR_TOKEN_NOT_PRESENT",
        "CKR_TOKEN_NOT_RECOGNIZED",
        "CKR_SESSION_HANDLE_INVALID",
        "CKR_SESSION_CLOSED",
        "CKR_SESSION_COUNT",
        "CKR_USER_NOT_LOGGED_IN",
        "CKR_CRYPTOKI_NOT_INITIALIZED",
        "CKR_SLOT_ID_INVALID",
    }
)
# The trust work's "the key under this label is another key now" (absent in older builds).
_KEY_CHANGED: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(exceptions, "HSMKeyChangedError", None),) if isinstance(c, type)
)

Outcome = Literal["pin", "key", "unavailable", "busy", "fatal"]


def classify(exc: BaseException) -> Outcome:
    """What a member's failure means to the group.

    ``"unavailable"``: the member is down (failover, probe); ``"busy"``: its pool had no free
    session in time (failover, the member stays up); ``"key"``: the key is missing or another
    key on that member (failover, the member is not used for that key); ``"pin"`` and
    ``"fatal"``: raised to the caller as they are.
    """
    if isinstance(exc, HSMPinError):
        return "pin"
    if isinstance(exc, HSMPoolExhaustedError):
        return "busy"
    if isinstance(exc, HSMKeyNotFoundError) or (_KEY_CHANGED and isinstance(exc, _KEY_CHANGED)):
        return "key"
    if isinstance(exc, HSMMechanismError):
        return "fatal"
    if isinstance(exc, (HSMModuleError, HSMSessionError)):
        return "unavailable"
    if isinstance(exc, HSMError) and exc.rv in AVAILABILITY_CODES:
        return "unavailable"
    return "fatal"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _error_code(exc: BaseException) -> str:
    """The ``CKR_*`` name of a failure, or the exception class when the token said none."""
    rv = getattr(exc, "rv", None)
    return rv if isinstance(rv, str) and rv else type(exc).__name__


# Operation durations, seconds: the bucket bounds of the histograms in stats() and of the
# Prometheus collector (OpenTelemetry uses its own aggregation).
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds


# An observer gets (member name, operation, algorithm, seconds, error code or None) after
# every operation: the OpenTelemetry instrumentation records its histogram from it.
Observer = Callable[[str, str, str, float, "str | None"], None]


class _Member:
    """One pool of the group and its health (guarded by the group's lock)."""

    def __init__(self, group: PoolGroup, pool: Pool, name: str, index: int) -> None:
        self.group = group
        self.pool = pool
        self.name = name
        self.index = index
        self.up = True
        self.since = time.time()
        self.in_flight = 0
        self.operations = 0
        self.failures = 0
        self.failovers = 0  # calls that left this member for another
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.errors: dict[str, int] = {}
        self.probes = 0
        self.downs = 0
        self.backoff = 0.0
        self.probe_due = 0.0
        self.probing = False
        self.durations: dict[tuple[str, str], _Histogram] = {}

    @property
    def state(self) -> str:
        return "up" if self.up else "down"


class _KeyState:
    """What one member holds under a group key's label/id."""

    __slots__ = ("checked_at", "excluded_since", "key", "lock", "reason")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one lookup at a time per member and key
        self.key: Key | None = None
        self.reason: str | None = None  # "missing" / "different key": not used for it
        self.checked_at = 0.0
        self.excluded_since = 0.0  # Unix time the member was excluded for the key


def _fingerprint(key: Key) -> tuple[Any, ...]:
    """What identifies a key: its type and public key."""
    return (
        key.key_type,
        getattr(key, "curve", None),
        getattr(key, "modulus", None),
        getattr(key, "public_exponent", None),
        getattr(key, "ec_point", None),
        getattr(key, "parameter_set", None),
        getattr(key, "public_value", None),
    )


def _key_name(label: str | None, key_id: bytes) -> str:
    if label is not None:
        return f"{label!r} (id {key_id.hex()})" if key_id else repr(label)
    return f"id {key_id.hex()}"


class GroupKey:
    """A key held by several members of a :class:`PoolGroup`; it has the interface of a
    pool-bound :class:`hsmkey.Key` (``sign``, ``sign_async``, ``sign_many``, ``sign_raw``,
    ``decrypt``, ``ecdh`` and the public attributes), and each operation runs on the healthy
    member with the fewest operations in flight, failing over to another member when that
    one is unavailable.

    Its public key is the one the group first saw under its label or id: members where the
    key is missing or another key are not used for it (:meth:`PoolGroup.stats` shows them).
    """

    def __init__(self, group: PoolGroup, reference: Key, member: _Member) -> None:
        self._group = group
        self._ref = reference
        self._fp = _fingerprint(reference)
        self._label: str | None = reference.label
        self._id: bytes = reference.id
        self._states: dict[int, _KeyState] = {}
        state = _KeyState()
        state.key = reference
        state.checked_at = time.monotonic()
        self._states[member.index] = state

    # -- the public half, from the key the group first saw --------------------------------

    @property
    def label(self) -> str | None:
        """CKA_LABEL."""
        return self._label

    @property
    def id(self) -> bytes:
        """CKA_ID."""
        return self._id

    @property
    def key_type(self) -> str:
        """``"RSA"``, ``"EC"`` or ``"EC_EDWARDS"``."""
        return self._ref.key_type

    @property
    def curve(self) -> str | None:
        """The curve name, None for RSA."""
        return self._ref.curve

    @property
    def key_size(self) -> int:
        """Bits of the modulus or of the curve's order."""
        return self._ref.key_size

    @property
    def modulus(self) -> bytes | None:
        """RSA modulus, big-endian."""
        return self._ref.modulus

    @property
    def public_exponent(self) -> bytes | None:
        """RSA public exponent, big-endian."""
        return self._ref.public_exponent

    @property
    def ec_point(self) -> bytes | None:
        """EC public point (uncompressed), or the raw Edwards public key."""
        return self._ref.ec_point

    @property
    def parameter_set(self) -> str | None:
        """The ML-DSA parameter set, or None for other keys."""
        return getattr(self._ref, "parameter_set", None)

    @property
    def public_value(self) -> bytes | None:
        """ML-DSA: the raw public key."""
        return getattr(self._ref, "public_value", None)

    def __getattr__(self, name: str) -> Any:
        # Attributes the token key gains later (new key families) come from the reference key;
        # methods of it run with spread and failover like the ones below.
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._ref, name)
        if callable(value):

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._group._call(self, name, name, args, kwargs)

            return call
        return value

    # -- operations -----------------------------------------------------------------------

    def sign(self, alg: str, data: bytes, *, deterministic: bool = False) -> bytes:
        """Sign ``data`` for a JOSE algorithm on one member (see :meth:`hsmkey.Key.sign`)."""
        kwargs = {"deterministic": True} if deterministic else {}
        return self._group._call(self, "sign", alg, (alg, data), kwargs)  # type: ignore[no-any-return]

    def sign_many(
        self, alg: str, payloads: list[bytes], *, deterministic: bool = False
    ) -> list[bytes]:
        """Sign many payloads on one member in one call; on failover, all on another."""
        kwargs = {"deterministic": True} if deterministic else {}
        return self._group._call(self, "sign_many", alg, (alg, payloads), kwargs)  # type: ignore[no-any-return]

    def sign_raw(self, mechanism: str, data: bytes, **kwargs: Any) -> bytes:
        """The low-level signer behind the cryptography interface (see
        :meth:`hsmkey.Key.sign_raw`)."""
        alg = mechanism if kwargs.get("hash") is None else f"{mechanism}-{kwargs['hash']}"
        return self._group._call(self, "sign_raw", alg, (mechanism, data), kwargs)  # type: ignore[no-any-return]

    def decrypt(self, mechanism: str, data: bytes, **kwargs: Any) -> bytes:
        """Decrypt with the RSA private key on one member (see :meth:`hsmkey.Key.decrypt`)."""
        return self._group._call(self, "decrypt", mechanism, (mechanism, data), kwargs)  # type: ignore[no-any-return]

    def ecdh(self, peer_point: bytes) -> bytes:
        """ECDH with the EC private key on one member."""
        return self._group._call(self, "ecdh", "ECDH", (peer_point,), {})  # type: ignore[no-any-return]

    def sign_async(
        self, alg: str, data: bytes, *, deterministic: bool = False
    ) -> asyncio.Future[bytes]:
        """:meth:`sign` for asyncio: an asyncio future (a task) of the running loop; the
        members sign on their worker threads, and failover happens inside it."""
        kwargs = {"deterministic": True} if deterministic else {}
        return asyncio.ensure_future(
            self._group._call_async(self, "sign_async", alg, (alg, data), kwargs)
        )

    # -- identity -------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupKey):
            return other._group is self._group and other._fp == self._fp
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fp)

    def __repr__(self) -> str:
        return (
            f"<GroupKey {self._ref.key_type} {_key_name(self._label, self._id)} "
            f"on {len(self._group._members)} members>"
        )

    def __reduce__(self) -> Any:
        raise TypeError("a GroupKey refers to keys inside tokens: find it again in the process")

    # -- members ------------------------------------------------------------------------

    def _state(self, member: _Member) -> _KeyState:
        state = self._states.get(member.index)
        if state is None:
            state = self._states.setdefault(member.index, _KeyState())
        return state

    def _usable(self, member: _Member, now: float) -> bool:
        state = self._states.get(member.index)
        if state is None or state.reason is None:
            return True
        # An excluded member is checked again after a while (a replication that finished).
        return now - state.checked_at >= self._group.key_recheck

    def _member_key(self, member: _Member) -> Key:
        """The member's token key for this group key, found and compared on first use."""
        state = self._state(member)
        key = state.key
        if key is not None:
            return key
        with state.lock:
            key = state.key
            if key is not None:
                return key  # found meanwhile by the caller that held the lock
            return self._lookup(member, state)

    def _lookup(self, member: _Member, state: _KeyState) -> Key:
        query: dict[str, Any] = {}
        if self._label is not None:
            query["key_label"] = self._label
        if self._id or self._label is None:
            query["key_id"] = self._id
        try:
            found = member.pool.find_key(**query)
        except HSMKeyNotFoundError:
            self._exclude(member, "missing")
            raise
        if _fingerprint(found) != self._fp:
            self._exclude(member, "different key")
            raise HSMKeyNotFoundError(
                f"member {member.name!r} holds another key under {_key_name(self._label, self._id)}"
            )
        if state.reason is not None:
            log.info(
                "hsmkey group: member %r now holds key %s; it is used again",
                member.name,
                _key_name(self._label, self._id),
            )
        state.key = found
        state.reason = None
        state.checked_at = time.monotonic()
        return found

    def _exclude(self, member: _Member, reason: str) -> None:
        state = self._state(member)
        first = state.reason != reason
        state.key = None
        state.reason = reason
        state.checked_at = time.monotonic()
        if first:
            state.excluded_since = time.time()
            log.warning(
                "hsmkey group: key %s is %s on member %r: that member is not used for it",
                _key_name(self._label, self._id),
                "another key" if reason == "different key" else reason,
                member.name,
            )

    def _forget(self, member: _Member) -> None:
        """The member's token key object is stale (the member was down): find it again."""
        state = self._states.get(member.index)
        if state is not None and state.reason is None:
            state.key = None

    def _member_states(self) -> dict[str, str]:
        out = {}
        for m in self._group._members:
            state = self._states.get(m.index)
            if state is None or (state.key is None and state.reason is None):
                out[m.name] = "unchecked"
            elif state.reason is not None:
                out[m.name] = state.reason
            else:
                out[m.name] = "ok"
        return out


class _Prober:
    """One thread for the whole process that probes down members when their time comes;
    the probes themselves run on a small shared executor (a hung HSM holds one worker)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Member]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def _reset_after_fork(self) -> None:
        self._cond = threading.Condition()
        self._heap = []
        self._thread = None
        self._executor = None
        self._pid = os.getpid()

    def schedule(self, member: _Member, due: float) -> None:
        if self._pid != os.getpid():
            self._reset_after_fork()
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), member))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="hsmkey-group-prober", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    if not self._cond.wait(timeout=60.0) and not self._heap:
                        self._thread = None
                        return
                due, _, member = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
                heapq.heappop(self._heap)
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=4, thread_name_prefix="hsmkey-group-probe"
                    )
                executor = self._executor
            member.group._start_probe(member, due, executor)


_PROBER = _Prober()
if hasattr(os, "register_at_fork"):
    # The prober thread does not exist in a child: the child starts its own when needed.
    os.register_at_fork(after_in_child=_PROBER._reset_after_fork)


class _GroupSession:
    """``group.session()``: one member's session, counted as an operation in flight."""

    def __init__(self, group: PoolGroup, rw: bool) -> None:
        self._group = group
        self._rw = rw
        self._member: _Member | None = None
        self._session: Session | None = None
        self._start = 0.0

    def __enter__(self) -> Session:
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            member = self._group._pick(None, tried, last)
            cm = member.pool.session(rw=self._rw)
            self._start = time.perf_counter()
            try:
                session = cm.__enter__()
            except BaseException as exc:
                self._group._failed(member, None, "session", "session", self._start, exc)
                if classify(exc) in ("unavailable", "busy"):
                    tried.add(member.index)
                    last = exc
                    continue
                raise
            self._member, self._session = member, cm
            return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        member, cm = self._member, self._session
        self._member = self._session = None
        if member is None or cm is None:
            return
        try:
            cm.__exit__(exc_type, exc, tb)
        finally:
            if exc is not None and classify(exc) == "unavailable":
                self._group._failed(member, None, "session", "session", self._start, exc)
            else:
                self._group._done(member, "session", "session", self._start)

    async def __aenter__(self) -> Session:
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            member = self._group._pick(None, tried, last)
            cm = member.pool.session(rw=self._rw)
            self._start = time.perf_counter()
            try:
                session = await cm.__aenter__()
            except BaseException as exc:
                self._group._failed(member, None, "session", "session", self._start, exc)
                if classify(exc) in ("unavailable", "busy"):
                    tried.add(member.index)
                    last = exc
                    continue
                raise
            self._member, self._session = member, cm
            return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        member, cm = self._member, self._session
        self._member = self._session = None
        if member is None or cm is None:
            return
        try:
            await cm.__aexit__(exc_type, exc, tb)
        finally:
            if exc is not None and classify(exc) == "unavailable":
                self._group._failed(member, None, "session", "session", self._start, exc)
            else:
                self._group._done(member, "session", "session", self._start)


class PoolGroup:
    """Several :class:`~hsmkey.SessionPool` objects, one per HSM, that hold the same keys.

    :param pools: the members, in order of preference for finding keys (the first member that
        answers defines what a label means; see :meth:`find_key`).
    :param names: a name per member for stats, logs and metrics (default: the token label,
        made unique with ``#2``, ``#3`` ...).
    :param probe_interval: seconds before the first probe of a member that went down; each
        failed probe doubles it, up to ``max_probe_interval``.
    :param max_probe_interval: the longest wait between two probes of a down member.
    :param key_recheck: seconds after which a member that lacked a key (or held another one
        under its label) is looked at again; :meth:`refresh` does it at once.

    Like a pool, a group is lazy: the constructor makes no PKCS#11 call.
    """

    def __init__(
        self,
        pools: Iterable[Pool],
        *,
        names: Sequence[str] | None = None,
        probe_interval: float = 0.5,
        max_probe_interval: float = 30.0,
        key_recheck: float = 60.0,
    ) -> None:
        pools = list(pools)
        if not pools:
            raise ValueError("a PoolGroup needs at least one pool")
        for p in pools:
            if not (hasattr(p, "find_key") and hasattr(p, "session") and hasattr(p, "check")):
                raise TypeError(
                    f"PoolGroup members are SessionPool objects, not {type(p).__name__}"
                )
        if len({id(p) for p in pools}) != len(pools):
            raise ValueError("the same pool is given twice")
        if names is None:
            names = []
            for i, p in enumerate(pools):
                base = getattr(p, "token_label", None) or f"member{i + 1}"
                name, n = base, 1
                while name in names:
                    n += 1
                    name = f"{base}#{n}"
                names.append(name)
        else:
            names = [str(n) for n in names]
            if len(names) != len(pools):
                raise ValueError(f"{len(names)} names for {len(pools)} pools")
            if len(set(names)) != len(names):
                raise ValueError("member names must be unique")
        for value, what in (
            (probe_interval, "probe_interval"),
            (max_probe_interval, "max_probe_interval"),
            (key_recheck, "key_recheck"),
        ):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{what} must be a positive number of seconds")
        self.probe_interval = float(probe_interval)
        self.max_probe_interval = max(float(max_probe_interval), self.probe_interval)
        self.key_recheck = float(key_recheck)
        self._lock = threading.Lock()
        self._members = [_Member(self, p, n, i) for i, (p, n) in enumerate(zip(pools, names))]
        self._rotor = itertools.count()
        self._keys: dict[tuple[str | None, bytes | str | None], GroupKey] = {}
        self._identities: dict[tuple[str | None, bytes], GroupKey] = {}
        self._closed = False
        self._calls = 0
        self._failovers = 0
        self._unavailable = 0
        self._observers: tuple[Observer, ...] = ()

    # -- construction from the environment ---------------------------------------------

    @classmethod
    def from_env(cls, **kwargs: Any) -> PoolGroup:
        """A group configured by the environment.

        ``HSM_GROUP`` names the members (``"a b c"``, commas or spaces). Member ``a`` reads
        ``HSM_A_MODULE``, ``HSM_A_TOKEN`` and ``HSM_A_PIN``, each falling back to
        ``HSM_MODULE``, ``HSM_TOKEN`` and ``HSM_PIN`` (so members on one module that differ
        by token only need ``HSM_A_TOKEN`` ...). Keyword arguments go to every
        :class:`~hsmkey.SessionPool` (``max_sessions=...``).
        """
        from .pool import SessionPool

        names = [n for n in os.environ.get("HSM_GROUP", "").replace(",", " ").split() if n]
        if not names:
            raise ValueError(
                "PoolGroup.from_env() needs HSM_GROUP, the member names (e.g. 'a b'), and "
                "HSM_<NAME>_MODULE / _TOKEN / _PIN for each (or HSM_MODULE / HSM_TOKEN / "
                "HSM_PIN shared by all)"
            )
        pools: list[SessionPool] = []
        for name in names:
            values: dict[str, str | None] = {}
            missing: list[str] = []
            for item in ("MODULE", "TOKEN", "PIN"):
                own = f"HSM_{name.upper()}_{item}"
                value = os.environ.get(own) or os.environ.get(f"HSM_{item}")
                if not value:
                    missing.append(own)
                values[item] = value
            if missing:
                for p in pools:
                    p.close()
                raise ValueError(
                    f"PoolGroup.from_env(): member {name!r} needs " + ", ".join(missing)
                )
            pools.append(
                SessionPool(values["MODULE"], values["TOKEN"], values["PIN"], **kwargs)  # type: ignore[arg-type]
            )
        return cls(pools, names=names)

    # -- the members ------------------------------------------------------------------

    @property
    def pools(self) -> list[Pool]:
        """The member pools, in order."""
        return [m.pool for m in self._members]

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _pick(self, key: GroupKey | None, tried: set[int], last: BaseException | None) -> _Member:
        """The up member with the fewest operations in flight that holds ``key`` and was not
        tried in this call; its in-flight count is taken."""
        if self._closed:
            from .exceptions import HSMPoolClosedError

            raise HSMPoolClosedError("the PoolGroup is closed")
        now = time.monotonic()
        with self._lock:
            members = self._members
            n = len(members)
            start = next(self._rotor) % n
            best: _Member | None = None
            for i in range(n):
                m = members[(start + i) % n]
                if not m.up or m.index in tried:
                    continue
                if key is not None and not key._usable(m, now):
                    continue
                if best is None or m.in_flight < best.in_flight:
                    best = m
            if best is not None:
                best.in_flight += 1
                if not tried:
                    self._calls += 1
                return best
            self._unavailable += 1
        self._no_member(key, tried, last)

    def _no_member(
        self, key: GroupKey | None, tried: set[int], last: BaseException | None
    ) -> NoReturn:
        down = [m for m in self._members if not m.up]
        # Nobody can serve: probe the down members now (at most once per probe_interval).
        for m in down:
            self._probe_soon(m)
        what = f"key {_key_name(key._label, key._id)}" if key is not None else "a session"
        parts = []
        for m in self._members:
            if m.index in tried:
                parts.append(f"{m.name}: failed in this call ({m.last_error})")
            elif not m.up:
                since = time.strftime("%H:%M:%S", time.localtime(m.since))
                parts.append(f"{m.name}: down since {since} ({m.last_error})")
            elif key is not None:
                state = key._states.get(m.index)
                parts.append(f"{m.name}: key {state.reason if state else 'unusable'}")
        raise HSMUnavailableError(
            f"no member of the PoolGroup can serve {what}: "
            + "; ".join(parts)
            + " (down members are probed and taken back as soon as they answer)",
            getattr(last, "rv", None),
            getattr(last, "function", None),
        ) from last

    def _done(self, member: _Member, op: str, alg: str, start: float) -> None:
        seconds = time.perf_counter() - start
        with self._lock:
            member.in_flight -= 1
            member.operations += 1
            hist = member.durations.get((op, alg))
            if hist is None:
                hist = member.durations[(op, alg)] = _Histogram()
            hist.add(seconds)
        for observer in self._observers:
            observer(member.name, op, alg, seconds, None)

    def _failed(
        self,
        member: _Member,
        key: GroupKey | None,
        op: str,
        alg: str,
        start: float,
        exc: BaseException,
    ) -> Outcome:
        """Books a failed operation on ``member``; marks it down when it is unavailable."""
        seconds = time.perf_counter() - start
        outcome = classify(exc) if isinstance(exc, Exception) else "fatal"
        code = _error_code(exc)
        went_down = False
        with self._lock:
            member.in_flight -= 1
            if isinstance(exc, Exception):
                member.failures += 1
                member.errors[code] = member.errors.get(code, 0) + 1
                member.last_error = _error_text(exc)
                member.last_error_at = time.time()
            if outcome in ("unavailable", "pin") and member.up:
                member.up = False
                member.since = time.time()
                member.downs += 1
                member.backoff = self.probe_interval
                member.probe_due = time.monotonic() + self.probe_interval
                due = member.probe_due
                went_down = True
        if isinstance(exc, Exception):
            for observer in self._observers:
                observer(member.name, op, alg, seconds, code)
        if went_down:
            log.warning(
                "hsmkey group: member %r is down (%s); probing it from %.1f s on",
                member.name,
                _error_text(exc),
                self.probe_interval,
            )
            for k in list(self._keys.values()) + list(self._identities.values()):
                k._forget(member)
            if outcome == "unavailable":
                _PROBER.schedule(member, due)
            # A PIN error is not probed: the pool remembers it and never tries that PIN again.
        return outcome

    # -- operations ---------------------------------------------------------------------

    def _fails_over(
        self,
        member: _Member,
        key: GroupKey,
        method: str,
        alg: str,
        start: float,
        exc: BaseException,
        tried: set[int],
    ) -> bool:
        """Records a failed call of `key`'s operation on `member`; True when the call moves on
        to another member (the member is then in `tried`), False when `exc` is the caller's."""
        outcome = self._failed(member, key, method, alg, start, exc)
        if outcome == "key" and key._state(member).reason is None:
            key._exclude(
                member,
                "missing" if isinstance(exc, HSMKeyNotFoundError) else "different key",
            )
        if outcome not in ("unavailable", "busy", "key"):
            return False
        tried.add(member.index)
        with self._lock:
            self._failovers += 1
            member.failovers += 1
        return True

    def _call(
        self, key: GroupKey, method: str, alg: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            member = self._pick(key, tried, last)
            start = time.perf_counter()
            try:
                result = getattr(key._member_key(member), method)(*args, **kwargs)
            except BaseException as exc:
                if not self._fails_over(member, key, method, alg, start, exc, tried):
                    raise
                last = exc
                continue
            self._done(member, method, alg, start)
            return result

    async def _call_async(
        self, key: GroupKey, method: str, alg: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            member = self._pick(key, tried, last)
            start = time.perf_counter()
            try:
                state = key._states.get(member.index)
                mkey = state.key if state is not None else None
                if mkey is None:
                    mkey = await asyncio.to_thread(key._member_key, member)
                result = await getattr(mkey, method)(*args, **kwargs)
            except BaseException as exc:
                if not self._fails_over(member, key, method, alg, start, exc, tried):
                    raise
                last = exc
                continue
            self._done(member, method, alg, start)
            return result

    def _on_member(self, fn: Callable[[_Member], _T], what: str) -> _T:
        """Runs a key lookup on the best member, failing over like an operation."""
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            member = self._pick(None, tried, last)
            start = time.perf_counter()
            try:
                result = fn(member)
            except BaseException as exc:
                outcome = self._failed(member, None, what, what, start, exc)
                if outcome in ("unavailable", "busy"):
                    tried.add(member.index)
                    last = exc
                    continue
                raise
            self._done(member, what, what, start)
            return result

    # -- keys ---------------------------------------------------------------------------

    def find_key(
        self, *, key_label: str | None = None, key_id: bytes | str | None = None
    ) -> GroupKey:
        """The group key with this label and/or id (CKA_ID).

        The first time, the first member (in the group's order) that is up and holds it
        finds it, and its public key becomes the key's identity for this group: every member
        is used for it only where the same label/id names the same public key. Later calls
        return the same object (until :meth:`refresh`).

        :raises HSMKeyNotFoundError: no member that answered has the key.
        :raises HSMUnavailableError: no member answered.
        """
        if key_label is None and key_id is None:
            raise TypeError("find_key() needs key_label= or key_id=")
        query = (key_label, key_id)
        cached = self._keys.get(query)
        if cached is not None:
            return cached
        if self._closed:
            from .exceptions import HSMPoolClosedError

            raise HSMPoolClosedError("the PoolGroup is closed")
        tried: set[int] = set()
        last: BaseException | None = None
        not_found: HSMKeyNotFoundError | None = None
        missing: list[_Member] = []
        # In the members' order: the first member that answers defines what the label means.
        for member in self._members:
            if not member.up:
                continue
            with self._lock:
                member.in_flight += 1
            start = time.perf_counter()
            try:
                found = member.pool.find_key(key_label=key_label, key_id=key_id)
            except BaseException as exc:
                if isinstance(exc, HSMKeyNotFoundError):
                    # Missing here; another member may hold it (a replication not done yet).
                    self._done(member, "find_key", "find_key", start)
                    not_found = not_found or exc
                    missing.append(member)
                    continue
                outcome = self._failed(member, None, "find_key", "find_key", start, exc)
                if outcome in ("unavailable", "busy"):
                    tried.add(member.index)
                    last = exc
                    continue
                raise
            self._done(member, "find_key", "find_key", start)
            key = self._adopt(found, member)
            for m in missing:
                key._exclude(m, "missing")
            self._keys[query] = key
            return key
        if not_found is not None:
            raise not_found
        self._no_member(None, tried, last)

    def _adopt(self, found: Key, member: _Member) -> GroupKey:
        """The group key for a token key found on ``member``: the one already known under
        its label and id when that is the same key; a new identity otherwise."""
        ident = (found.label, found.id)
        with self._lock:
            known = self._identities.get(ident)
            if known is None:
                known = GroupKey(self, found, member)
                self._identities[ident] = known
                return known
        if _fingerprint(found) != known._fp:
            known._exclude(member, "different key")
        return known

    def list_keys(self) -> list[GroupKey]:
        """Every key that hsmkey can use on the members that answer, one group key per
        label and id (the first member's key defines it), for :func:`hsmkey.jwks`."""
        keys: list[GroupKey] = []
        seen: set[int] = set()
        answered = 0
        last: BaseException | None = None
        for member in list(self._members):
            if not member.up:
                continue
            with self._lock:
                member.in_flight += 1
            start = time.perf_counter()
            try:
                found = member.pool.list_keys()
            except BaseException as exc:
                outcome = self._failed(member, None, "list_keys", "list_keys", start, exc)
                if outcome in ("unavailable", "busy"):
                    last = exc
                    continue
                raise
            self._done(member, "list_keys", "list_keys", start)
            answered += 1
            for k in found:
                gk = self._adopt(k, member)
                st = gk._state(member)
                if st.key is None and st.reason is None and _fingerprint(k) == gk._fp:
                    st.key = k
                    st.checked_at = time.monotonic()
                if id(gk) not in seen:
                    seen.add(id(gk))
                    keys.append(gk)
        if not answered:
            self._no_member(None, set(), last)
        return keys

    # -- sessions -----------------------------------------------------------------------

    def session(self, rw: bool = False) -> _GroupSession:
        """A context manager (``with`` and ``async with``) that borrows a session from the
        healthy member with the fewest operations in flight. Keys found in it belong to that
        member and do not fail over; prefer group keys (:meth:`find_key`)."""
        return _GroupSession(self, rw)

    def open_session(self, rw: bool = False) -> Session:
        """Borrow a session from the best member now; return it with ``session.close()``."""
        return self._on_member(lambda m: m.pool.open_session(rw=rw), "open_session")

    # -- health ------------------------------------------------------------------------

    def _probe_soon(self, member: _Member) -> None:
        with self._lock:
            if member.up or member.probing:
                return
            now = time.monotonic()
            if member.probe_due - now <= 0:
                return  # already due: the prober has it
            # Calls are failing: probe now, but not more often than probe_interval.
            due = max(now, member.probe_due - member.backoff + self.probe_interval)
            if due >= member.probe_due:
                return
            member.probe_due = due
        _PROBER.schedule(member, due)

    def _start_probe(self, member: _Member, due: float, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if self._closed or member.up or member.probing:
                return
            if member.probe_due > due + 1e-9:
                return  # rescheduled later meanwhile (a stale heap entry)
            member.probing = True
        executor.submit(self._probe, member)

    def _probe(self, member: _Member) -> None:
        error: BaseException | None = None
        try:
            member.pool.check()
        except Exception as exc:  # a probe failure is the member's state, not an error here
            error = exc
        with self._lock:
            member.probing = False
            member.probes += 1
            if self._closed:
                return
            if error is None:
                member.up = True
                member.since = time.time()
                member.backoff = 0.0
            else:
                member.last_error = _error_text(error)
                member.last_error_at = time.time()
                member.backoff = min(
                    max(member.backoff, self.probe_interval) * 2, self.max_probe_interval
                )
                member.probe_due = time.monotonic() + member.backoff
                due = member.probe_due
        if error is None:
            log.info("hsmkey group: member %r answers again and is back in use", member.name)
        elif classify(error) == "pin":
            log.error(
                "hsmkey group: member %r refuses the PIN: %s", member.name, _error_text(error)
            )
        else:
            _PROBER.schedule(member, due)

    def check(self, *, require_all: bool = False) -> None:
        """Connect to every member and log in now (a start-up probe).

        Members that fail are marked down and probed later. Raises the first
        :class:`~hsmkey.exceptions.HSMPinError` (a configuration error), or
        :class:`~hsmkey.exceptions.HSMUnavailableError` when no member answers (or, with
        ``require_all=True``, when any member does not)."""
        errors: list[tuple[_Member, BaseException]] = []
        for member in self._members:
            with self._lock:
                member.in_flight += 1
            start = time.perf_counter()
            try:
                member.pool.check()
            except Exception as exc:
                self._failed(member, None, "check", "check", start, exc)
                errors.append((member, exc))
                continue
            self._done(member, "check", "check", start)
            with self._lock:
                if not member.up:
                    member.up = True
                    member.since = time.time()
        for _, error in errors:
            if isinstance(error, HSMPinError):
                raise error
        if errors and (require_all or len(errors) == len(self._members)):
            raise HSMUnavailableError(
                "PoolGroup.check(): " + "; ".join(f"{m.name}: {_error_text(e)}" for m, e in errors),
                getattr(errors[0][1], "rv", None),
                getattr(errors[0][1], "function", None),
            ) from errors[0][1]

    def refresh(self) -> None:
        """Forget cached key lookups, in the group (identities, exclusions) and in every
        member pool that can (``pool.refresh()``): the next :meth:`find_key` sees the tokens
        as they are now. Group keys found before keep their identity."""
        with self._lock:
            self._keys.clear()
            self._identities.clear()
        for member in self._members:
            refresh = getattr(member.pool, "refresh", None)
            if refresh is not None:
                refresh()

    def stats(self) -> dict[str, Any]:
        """The group's health and counters.

        ``members``: one dict per member: ``name``, ``state`` (``"up"``, ``"down"``, or
        ``"excluded"`` when it is up but holds none of the group's keys as the group knows
        them), ``since`` (Unix time of the last change), ``in_use`` (operations in flight),
        ``operations``, ``failures``, ``failovers`` (calls that left it for another member),
        ``errors`` (by ``CKR_*`` code or exception class), ``last_error`` and
        ``last_error_at``, ``probes``, ``downs``, ``excluded`` (the keys it is not used
        for: ``label``, ``id``, ``reason``, ``since``), ``durations`` (histograms by
        operation and algorithm: ``buckets`` bounds in seconds, ``counts`` per bucket plus
        one above, ``sum``), ``max_sessions`` and ``pool`` (the pool's own
        :meth:`~hsmkey.SessionPool.stats`).
        ``keys``: each group key's state on every member (``ok``, ``missing``,
        ``different key``, ``unchecked``). Totals: ``up``, ``down``, ``calls``,
        ``failovers``, ``unavailable`` (calls refused because no member could serve).
        """
        keys = list({id(k): k for k in [*self._identities.values(), *self._keys.values()]}.values())
        with self._lock:
            members: list[dict[str, Any]] = []
            for m in self._members:
                excluded: list[dict[str, Any]] = []
                for k in keys:
                    state = k._states.get(m.index)
                    if state is not None and state.reason is not None:
                        excluded.append(
                            {
                                "label": k._label,
                                "id": k._id.hex(),
                                "reason": state.reason,
                                "since": state.excluded_since,
                            }
                        )
                # Up, but holding none of the group's keys: of no use until that changes.
                useless = bool(m.up and keys and len(excluded) == len(keys))
                members.append(
                    {
                        "name": m.name,
                        "state": "excluded" if useless else m.state,
                        "since": max(e["since"] for e in excluded) if useless else m.since,
                        "in_use": m.in_flight,
                        "operations": m.operations,
                        "failures": m.failures,
                        "failovers": m.failovers,
                        "errors": dict(m.errors),
                        "last_error": m.last_error,
                        "last_error_at": m.last_error_at,
                        "probes": m.probes,
                        "downs": m.downs,
                        "excluded": excluded,
                        "durations": [
                            {
                                "operation": op,
                                "algorithm": alg,
                                "buckets": list(DURATION_BUCKETS),
                                "counts": list(h.counts),
                                "sum": h.sum,
                            }
                            for (op, alg), h in m.durations.items()
                        ],
                    }
                )
            totals = {
                "up": sum(1 for m in self._members if m.up),
                "down": sum(1 for m in self._members if not m.up),
                "calls": self._calls,
                "failovers": self._failovers,
                "unavailable": self._unavailable,
            }
        for entry, m in zip(members, self._members):
            entry["max_sessions"] = getattr(m.pool, "max_sessions", None)
            try:
                entry["pool"] = dict(m.pool.stats())
            except Exception as exc:  # a closed or broken pool still shows in the stats
                entry["pool"] = {"error": _error_text(exc)}
        return {
            "members": members,
            "keys": [
                {"label": k._label, "id": k._id.hex(), "members": k._member_states()} for k in keys
            ],
            **totals,
        }

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(member, operation, algorithm, seconds, error)`` after every
        operation (``error`` is the ``CKR_*`` code or exception class name, or None): the
        hook the OpenTelemetry instrumentation uses. It must be quick and must not raise."""
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling an observer added with :meth:`add_observer`."""
        self._observers = tuple(o for o in self._observers if o is not observer)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every member pool; probes stop."""
        self._closed = True
        for member in self._members:
            member.pool.close()

    def __enter__(self) -> PoolGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> PoolGroup:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def __iter__(self) -> Iterator[Pool]:
        return iter(self.pools)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        states = ", ".join(f"{m.name}={m.state}" for m in self._members)
        return f"<PoolGroup {states}{' closed' if self._closed else ''}>"
