"""hsmkey never waits for its own locks holding the GIL (issue 22, item 9).

A thread signs with a session-bound key while the token is slow (the fault module's latency
on C_Sign keeps the call in flight); meanwhile another thread enters the same session with
``async with`` (``Session.__aenter__``) and asks for ``repr()`` of the session and the pool.
A pure-Python thread must keep running the whole time: its longest pause stays far below the
slow call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from helpers.faultmod import FaultModule, faultmod_fixture  # noqa: F401
from helpers.softhsm import SoftHSM
from hsmkey import SessionPool

SLOW = 1.5


@pytest.fixture
def pool(faultmod: FaultModule, softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


class Ticker:
    """A pure-Python thread that notes the longest pause between two of its steps."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def slow_sign_in_flight(faultmod: FaultModule, work: threading.Thread) -> None:
    faultmod.reset_counts()
    work.start()
    end = time.monotonic() + 10
    while faultmod.count("C_Sign") == 0:
        assert time.monotonic() < end
        time.sleep(0.005)
    time.sleep(0.05)


def test_entering_a_busy_session_lets_python_run(pool: SessionPool, faultmod: FaultModule) -> None:
    session = pool.open_session()
    key = session.find_key(key_label="ec-key")
    key.sign("ES256", b"warm")
    faultmod.latency("C_Sign", SLOW)
    signer = threading.Thread(target=key.sign, args=("ES256", b"slow"), daemon=True)
    with Ticker() as ticker:
        slow_sign_in_flight(faultmod, signer)

        async def enter() -> None:
            entered = await session.__aenter__()
            assert entered is session

        enterer = threading.Thread(target=asyncio.run, args=(enter(),), daemon=True)
        enterer.start()
        for _ in range(20):
            repr(session)
            repr(pool)
            assert session.closed is False
        enterer.join(timeout=30)
        signer.join(timeout=30)
    assert not enterer.is_alive() and not signer.is_alive()
    assert ticker.longest < SLOW / 3, f"Python stood still for {ticker.longest:.3f} s"
    session.close()


def test_repr_of_a_pool_while_a_slow_call_runs(pool: SessionPool, faultmod: FaultModule) -> None:
    key = pool.find_key(key_label="ec-key")
    key.sign("ES256", b"warm")
    faultmod.latency("C_Sign", SLOW)
    signer = threading.Thread(target=key.sign, args=("ES256", b"slow"), daemon=True)
    with Ticker() as ticker:
        slow_sign_in_flight(faultmod, signer)
        for _ in range(20):
            assert "SessionPool" in repr(pool)
            pool.stats()
        signer.join(timeout=30)
    assert ticker.longest < SLOW / 3, f"Python stood still for {ticker.longest:.3f} s"
