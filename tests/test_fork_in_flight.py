"""A child forked while another thread is inside a PKCS#11 call (issue 21, item 4).

Pre-fork servers fork whenever they like, also while a thread of the parent is inside
``C_Login`` or ``C_Sign``. The fault module's latency keeps the call in flight (the thread
sleeps in the module, holding whatever hsmkey holds around the call) while the test forks.
The child must not wait for a lock that a thread of the parent holds: its own calls work, a
session borrowed before the fork raises ``HSMSessionError``, ``session.closed`` answers.
Each child runs with a deadline: a hang fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from helpers.faultmod import FaultModule, faultmod_fixture  # noqa: F401
from helpers.softhsm import SoftHSM
from hsmkey import HSMSessionError, SessionPool

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SLOW = 1.5  # seconds the slowed call stays in flight
DEADLINE = 30.0  # a child that takes longer hangs


@pytest.fixture
def pool(faultmod: FaultModule, softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def fork_child(body: Callable[[], None]) -> int:
    """Fork; run ``body`` in the child and leave with 0 (or 1 on an exception)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded fork" (3.12)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            body()
            code = 0
        except BaseException as e:
            os.write(2, f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, deadline: float = DEADLINE) -> int:
    """The child's exit code; kills it and fails the test if it is not done in time."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung (killed after {deadline:.0f} s)")


def in_flight(faultmod: FaultModule, function: str, work: Callable[[], None]) -> threading.Thread:
    """Start ``work`` on a thread and return once it is inside ``function`` (slowed)."""
    faultmod.reset_counts()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    end = time.monotonic() + 10
    while faultmod.count(function) == 0:
        assert time.monotonic() < end, f"{function} was never called"
        time.sleep(0.005)
    time.sleep(0.05)  # inside the module's sleep now
    return thread


def finish(thread: threading.Thread) -> None:
    thread.join(timeout=DEADLINE)
    assert not thread.is_alive()
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]


def child_uses_the_pool(pool: SessionPool) -> None:
    pool.check()
    key = pool.find_key(key_label="ec-key")
    assert len(key.sign("ES256", b"child")) == 64
    with pool.session() as s:
        assert len(s.find_key(key_label="ec-key").sign("ES256", b"child block")) == 64


def test_child_forked_mid_login(pool: SessionPool, faultmod: FaultModule) -> None:
    """The parent's first use holds the pool's connect lock and the token's login lock
    across C_Login."""
    faultmod.latency("C_Login", SLOW)
    thread = in_flight(faultmod, "C_Login", pool.check)
    pid = fork_child(lambda: child_uses_the_pool(pool))
    assert wait_child(pid) == 0
    finish(thread)
    key = pool.find_key(key_label="ec-key")
    key.sign("ES256", b"the parent goes on")


def test_child_forked_mid_sign_with_a_pool_bound_key(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    key = pool.find_key(key_label="ec-key")
    key.sign("ES256", b"warm")
    faultmod.latency("C_Sign", SLOW)
    thread = in_flight(faultmod, "C_Sign", lambda: key.sign("ES256", b"slow"))

    def child() -> None:
        assert len(key.sign("ES256", b"child")) == 64
        child_uses_the_pool(pool)

    pid = fork_child(child)
    assert wait_child(pid) == 0
    finish(thread)
    key.sign("ES256", b"the parent goes on")
    assert pool.stats()["recoveries"] == 0


def test_child_forked_mid_sign_inside_a_session_block(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    """The session's lock is held across C_Sign by the parent's thread; in the child the
    session is the parent's: using it raises, asking about it answers."""
    session = pool.open_session()
    key = session.find_key(key_label="ec-key")
    key.sign("ES256", b"warm")
    faultmod.latency("C_Sign", SLOW)
    thread = in_flight(faultmod, "C_Sign", lambda: key.sign("ES256", b"slow"))

    def child() -> None:
        assert session.closed is False
        repr(session)
        with pytest.raises(HSMSessionError, match="before fork"):
            key.sign("ES256", b"not the child's session")
        with pytest.raises(HSMSessionError, match="before fork"):
            session.find_key(key_label="ec-key")
        session.close()
        assert session.closed is True
        child_uses_the_pool(pool)

    pid = fork_child(child)
    assert wait_child(pid) == 0
    finish(thread)
    key.sign("ES256", b"the parent's session goes on")
    session.close()
    assert pool.stats()["in_use"] == 0
