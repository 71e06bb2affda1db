"""The session pool users create: :class:`SessionPool`, and the one-shot :func:`hsm_session`."""

from __future__ import annotations

import asyncio
import difflib
import inspect
import os
import re
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._hsmkey import Pool, Session

__all__ = ["SessionPool", "hsm_session"]


class SessionPool(Pool):
    """A pool of logged-in PKCS#11 sessions on one token.

    The constructor only checks its arguments: no PKCS#11 call is made until the first
    ``with pool.session():`` block, pool-bound key or :meth:`check`. That first use loads
    the module (once per process), finds the token (by label, serial or slot id) and logs in
    (once per token per process, shared with every other pool on that token). A failed
    login is remembered for the whole process: later uses of this pool, and of any other
    pool or :func:`hsm_session` with the same PIN on that token, raise the same exception
    without trying the PIN again.

    :param module_path: path of the PKCS#11 shared library.
    :param token_label: label of the token (trailing spaces are ignored).
    :param user_pin: the user PIN (``str`` or ``bytes``); kept in memory that is wiped when
        the pool goes away, and never shown. ``None`` for a token that requires no login
        (``CKF_LOGIN_REQUIRED`` off, as Google Cloud KMS's library): then no ``C_Login`` is
        made; on a token that does require one, the first use raises
        :class:`~hsmkey.exceptions.HSMPinError`.
    :param token_serial: serial number of the token, to choose among tokens with one label.
    :param slot_id: slot id of the token.
    :param max_sessions: most sessions lent at once (default 64); more callers wait.
    :param acquire_timeout: seconds to wait for a free session before
        :class:`~hsmkey.exceptions.HSMPoolExhaustedError` (default 30; 0 fails at once).
    :param max_idle: seconds an unused session stays open (default 300; ``None``: forever).
    :param allow_final_pin_try: log in even when the token reports that one more wrong PIN
        locks it (``CKF_USER_PIN_FINAL_TRY``); by default hsmkey refuses and raises
        :class:`~hsmkey.exceptions.HSMPinError` without trying the PIN.
    :param init_args: the string passed as ``C_Initialize``'s ``pReserved`` (NSS softokn's
        ``configdir=...`` string, kmsp11's configuration file, YubiHSM's connector options);
        always with ``CKF_OS_LOCKING_OK``. A module is initialized once per process: every
        pool of one module must pass the same ``init_args`` (another value raises
        :class:`~hsmkey.exceptions.HSMModuleError`); a failed initialization leaves the
        module free for a later pool with the right ones.
    :param key_cache_ttl: seconds a key lookup by label or id (``from_hsm``, ``find_key``)
        is trusted before the next lookup searches the token again (default 60; 0: search
        every time; ``None``: until :meth:`refresh` or a re-login). Within it a lookup
        costs no PKCS#11 call; after it, one search. Only freshness depends on it: a key
        object never signs with another key (see :class:`~hsmkey.exceptions.HSMKeyChangedError`).
    :param verify_signatures: verify every signature in software against the key's public
        key before returning it (a guard against tokens that reuse object handles and
        against token faults); costs a software verification per signature.
    """

    if not TYPE_CHECKING:  # type checkers see the constructor's signature in the stubs

        def __new__(cls, *args: Any, **kwargs: Any) -> SessionPool:
            # `args`/`kwargs` hold the PIN: deleted before any exception leaves this frame
            # (tracebacks with locals would record it).
            try:
                return super().__new__(cls, *args, **kwargs)
            except TypeError as exc:
                error = _argument_error(cls, exc)
            finally:
                del args, kwargs
            raise error from None

    async def __aenter__(self) -> SessionPool:
        """``async with SessionPool(...) as pool:`` (the pool connects lazily, as always)."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the pool on a worker thread, off the event loop."""
        await asyncio.to_thread(self.close)

    @classmethod
    def from_env(cls, **kwargs: object) -> SessionPool:
        """A pool configured by ``HSM_MODULE``, ``HSM_TOKEN``, ``HSM_PIN`` and
        ``HSM_INIT_ARGS`` (and ``HSM_KEY_CACHE_TTL``, seconds, if set).

        ``HSM_PIN`` may be left unset for a token that requires no login; ``HSM_INIT_ARGS``
        (optional) is the module's ``C_Initialize`` string (see ``init_args``). Keyword
        arguments are passed on to the constructor (``max_sessions=...``) and win over the
        environment.
        """
        missing = [n for n in ("HSM_MODULE", "HSM_TOKEN") if not os.environ.get(n)]
        if missing:
            raise ValueError(
                "SessionPool.from_env() needs the environment variables "
                + ", ".join(missing)
                + " (module path, token label; HSM_PIN and HSM_INIT_ARGS as the token needs)"
            )
        init_args = os.environ.get("HSM_INIT_ARGS") or None
        if init_args is not None:
            kwargs.setdefault("init_args", init_args)
        ttl = os.environ.get("HSM_KEY_CACHE_TTL")
        if ttl and "key_cache_ttl" not in kwargs:
            try:
                kwargs["key_cache_ttl"] = float(ttl)
            except ValueError:
                raise ValueError(
                    f"HSM_KEY_CACHE_TTL must be a number of seconds, not {ttl!r}"
                ) from None
        return cls(
            os.environ["HSM_MODULE"],
            os.environ["HSM_TOKEN"],
            os.environ.get("HSM_PIN") or None,
            **kwargs,  # type: ignore[arg-type]
        )


if not TYPE_CHECKING:
    # Help, Sphinx and inspect.signature(SessionPool) show the constructor's real arguments.
    try:
        _cls = inspect.Parameter("cls", inspect.Parameter.POSITIONAL_ONLY)
        SessionPool.__new__.__signature__ = inspect.signature(Pool).replace(
            parameters=[_cls, *inspect.signature(Pool).parameters.values()]
        )
    except (TypeError, ValueError):  # pragma: no cover - the signature is always there
        pass


def _parameters() -> list[str]:
    """The keyword arguments the pool takes (from the Rust class's signature)."""
    try:
        return list(inspect.signature(Pool).parameters)
    except (TypeError, ValueError):  # pragma: no cover - the signature is always there
        return []


def _argument_error(cls: type, exc: TypeError) -> TypeError:
    """The Rust constructor's ``TypeError`` in the words the caller used (``SessionPool()``,
    not ``Pool.__new__()``), with the closest argument name for a misspelled one."""
    message = str(exc).replace("Pool.__new__()", f"{cls.__name__}()")
    unexpected = re.search(r"unexpected keyword argument '([^']*)'", message)
    if unexpected:
        close = difflib.get_close_matches(unexpected.group(1), _parameters(), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return TypeError(message)


def hsm_session(
    module_path: str | os.PathLike[str],
    token_label: str,
    pin: str | bytes | None,
    rw: bool = False,
    *,
    token_serial: str | None = None,
    slot_id: int | None = None,
    init_args: str | None = None,
) -> AbstractContextManager[Session]:
    """Open one logged-in session for the length of a ``with`` block.

    On exit the session is closed, and the token is logged out unless another pool of this
    process still uses that token's login. The PIN goes straight into the pool's wiped
    memory: no frame of this function or of the block's exit holds it when an exception
    leaves (error reporters record the locals of every frame of a traceback).
    """
    try:
        pool = SessionPool(
            module_path,
            token_label,
            pin,
            token_serial=token_serial,
            slot_id=slot_id,
            max_sessions=1,
            init_args=init_args,
        )
    finally:
        del pin
    return _OneShot(pool, rw)


class _OneShot:
    """The context manager of :func:`hsm_session`: a pool of one session, closed on exit."""

    __slots__ = ("_block", "_pool", "_rw")

    def __init__(self, pool: SessionPool, rw: bool) -> None:
        self._pool = pool
        self._rw = rw
        self._block: Session | None = None

    def __enter__(self) -> Session:
        try:
            block = self._pool.session(rw=self._rw)
            session = block.__enter__()
        except BaseException:
            self._pool.close()
            raise
        self._block = block
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        block, self._block = self._block, None
        try:
            if block is not None:
                block.__exit__(exc_type, exc, tb)
        finally:
            self._pool.close()
