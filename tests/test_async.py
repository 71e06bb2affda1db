"""asyncio: ``async with pool.session()``, ``await key.sign_async()``; the event loop keeps
ticking while the token works, and cancelled waits leave nothing borrowed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from helpers import SoftHSM
from hsmkey import SessionPool
from hsmkey.exceptions import HSMPoolClosedError


def verify(point: bytes, sig: bytes, data: bytes) -> None:
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def test_async_session_and_sign(softhsm: SoftHSM) -> None:
    async def main() -> None:
        async with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as pool:
            async with pool.session() as session:
                key = session.find_key(key_label="ec-key")
                sig = await key.sign_async("ES256", b"async")
                verify(key.ec_point or b"", sig, b"async")
            assert session.closed
            assert pool.stats()["in_use"] == 0
        assert pool.closed

    asyncio.run(main())


def test_event_loop_keeps_ticking_while_eight_loops_sign(softhsm: SoftHSM) -> None:
    async def main() -> tuple[list[float], int]:
        pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
        key = pool.find_key(key_label="ec-key")
        stop = asyncio.Event()
        lags: list[float] = []
        signed = 0

        async def ticker() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - start - 0.001)

        async def signer() -> None:
            nonlocal signed
            while not stop.is_set():
                await key.sign_async("ES256", b"payload")
                signed += 1

        tasks = [asyncio.create_task(signer()) for _ in range(8)]
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(tick, *tasks)
        pool.close()
        return sorted(lags), signed

    def measure() -> tuple[float, float, int]:
        lags, signed = asyncio.run(main())
        return lags[len(lags) // 2], lags[int(len(lags) * 0.99)], signed

    median, p99, signed = measure()
    if p99 >= 0.005:  # one more look, in case a neighbour process took the CPUs meanwhile
        median, p99, signed = measure()
    assert signed > 100
    # The signing threads keep the cores busy; the loop still ticks on time. (A lone worst
    # tick is left to the OS scheduler: docs/performance.rst gives the maximum as measured.)
    assert median < 0.05, f"median lag {median * 1000:.2f} ms"
    assert p99 < 0.5, f"p99 lag {p99 * 1000:.2f} ms"


def test_cancelled_wait_leaves_nothing_borrowed(softhsm: SoftHSM) -> None:
    async def main() -> None:
        pool = SessionPool(
            softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=5
        )
        pool.find_key(key_label="ec-key")  # found once: later look-ups need no session
        held = pool.open_session()  # the only session, lent out
        waiting = pool.session()
        entered = asyncio.Event()

        async def enter() -> None:
            # No session is free: the block is entered all the same, and its call waits for
            # one (with the pool's other callers).
            async with waiting as s:
                entered.set()
                await s.find_key(key_label="ec-key").sign_async("ES256", b"waits")
                raise AssertionError("cancelled before")  # pragma: no cover

        task = asyncio.create_task(enter())
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(0.1)
        assert pool.stats()["in_use"] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.close()
        # The cancelled call borrowed nothing; its block has ended.
        for _ in range(100):
            if pool.stats()["in_use"] == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.stats()["in_use"] == 0
        assert waiting.closed
        with pytest.raises(HSMPoolClosedError):
            waiting.find_key(key_label="ec-key")
        async with pool.session() as s:
            await s.find_key(key_label="ec-key").sign_async("ES256", b"still works")
        pool.close()

    asyncio.run(main())


def test_entering_and_leaving_a_block_on_a_warm_pool_never_suspends(softhsm: SoftHSM) -> None:
    """On a warm pool, ``async with pool.session()`` is entered and left without a future,
    a step of the loop or a worker thread, whether a session is free or not (the block's
    calls borrow it): the coroutine runs to its end in one step."""

    async def main() -> None:
        pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1)
        key = pool.find_key(key_label="ec-key")  # connected, logged in, the key cached

        async def block() -> bool:
            async with pool.session() as s:
                s.find_key(key_label="ec-key")
                return s.closed

        def one_step() -> bool:
            coro = block()
            try:
                suspended_on = coro.send(None)
            except StopIteration as done:
                return bool(done.value)
            coro.close()
            raise AssertionError(f"the block suspended on {suspended_on!r}")

        assert one_step() is False  # a free session: none is taken
        held = pool.open_session()  # the only session, lent out
        assert one_step() is False  # none free: entered all the same, left at once
        held.close()
        assert pool.stats()["in_use"] == 0
        # A call of the block borrows the session for itself and gives it back when it ends.
        async with pool.session() as s:
            await s.find_key(key_label="ec-key").sign_async("ES256", b"first call")
            assert pool.stats()["in_use"] == 0
        assert pool.stats()["in_use"] == 0
        assert len(await key.sign_async("ES256", b"pool-bound")) == 64
        pool.close()

    asyncio.run(main())


def test_synchronous_call_in_a_block_entered_with_no_session(softhsm: SoftHSM) -> None:
    """A synchronous call that needs the session (here ``list_keys``) in an ``async with``
    block borrows one there and then, waiting for it, and gives it back when it ends."""

    async def main() -> None:
        pool = SessionPool(
            softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=5
        )
        pool.check()
        held = pool.open_session()  # the only session, given back by a thread soon
        threading.Timer(0.2, held.close).start()
        async with pool.session() as s:
            assert pool.stats()["in_use"] == 1  # still the held one: entered with none
            assert "ec-key" in {k.label for k in s.list_keys()}
            assert held.closed and pool.stats()["in_use"] == 0  # borrowed and given back
            await s.find_key(key_label="ec-key").sign_async("ES256", b"same block")
        assert pool.stats()["in_use"] == 0
        pool.close()

    asyncio.run(main())


def test_a_first_look_up_in_a_block_never_waits_for_the_loop(softhsm: SoftHSM) -> None:
    """Every session is used by a block whose signature is done but whose task has not run
    yet, and another block looks a key up for the first time (a search, on the loop's
    thread): the look-up must not wait for a session that only the loop can give back. (It
    did: the loop stood still until acquire_timeout, then every block failed.)"""

    async def main() -> None:
        pool = SessionPool(
            softhsm.module,
            softhsm.token_label,
            softhsm.pin,
            max_sessions=1,
            acquire_timeout=3,
            key_cache_ttl=0,  # every look-up searches the token
        )
        pool.check()

        async def signer() -> bytes:
            async with pool.session() as s:
                key = s.find_key(key_label="ec-key")
                return await key.sign_async("ES256", b"first")

        async def looker() -> int:
            async with pool.session() as s:
                await asyncio.sleep(0)  # the signer's call is under way
                return len(s.find_key(key_label="ec-key").label)

        start = time.monotonic()
        signature, size = await asyncio.gather(signer(), looker())
        assert len(signature) == 64 and size == len("ec-key")
        assert time.monotonic() - start < 2
        assert pool.stats()["timeouts"] == 0
        pool.close()

    asyncio.run(main())


def test_a_block_runs_one_call_at_a_time_and_holds_no_session_between_calls(
    softhsm: SoftHSM,
) -> None:
    """The calls of one ``async with`` block take turns (one session for the block, as its
    name says), and between its calls the block holds no session: ``max_in_use`` stays 1
    with 16 calls in flight, and a session is never idle in a block that only waits."""

    async def main() -> None:
        pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=8)
        pool.find_key(key_label="ec-key")
        async with pool.session() as s:
            key = s.find_key(key_label="ec-key")
            signatures = await asyncio.gather(
                *(key.sign_async("ES256", b"%d" % i) for i in range(16))
            )
            assert pool.stats()["in_use"] == 0
            await asyncio.sleep(0.01)
            assert pool.stats()["in_use"] == 0
        assert len(set(signatures)) == 16
        assert pool.stats()["max_in_use"] == 1
        pool.close()

    asyncio.run(main())


def test_async_with_on_a_long_lived_session_keeps_its_session(softhsm: SoftHSM) -> None:
    """``async with`` on a session that already holds one (``pool.open_session()``) enters
    it as it is: its calls use that session, which it keeps until the block ends (and, as
    with ``with``, the end of the block returns it)."""

    async def main() -> None:
        pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=2)
        held = pool.open_session()
        async with held as s:
            assert s is held
            await s.find_key(key_label="ec-key").sign_async("ES256", b"on the held one")
            assert pool.stats()["in_use"] == 1
            await s.find_key(key_label="ec-key").sign_async("ES256", b"again")
            assert pool.stats()["in_use"] == 1
        assert held.closed
        assert pool.stats()["in_use"] == 0
        pool.close()

    asyncio.run(main())
