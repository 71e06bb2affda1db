"""A network HSM, as a user of one sees it: what crosses the network per signature, asyncio
calls that wait for sessions without blocking the loop or holding a thread, cancelled and
timed-out asynchronous calls that leave nothing borrowed, and JWTs signed from a coroutine.

The pools talk to the fault module (tests/faultmod), which forwards to SoftHSM2 and counts
every call: a call through it is what a network client would send to the HSM.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator

import pytest
from helpers import SoftHSM
from helpers.faultmod import (  # noqa: F401  (faultmod_fixture: the `faultmod` fixture)
    FaultModule,
    faultmod_fixture,
)
from hsmkey import HSMJWK, SessionPool
from hsmkey._hsmkey import Key
from hsmkey.exceptions import HSMPoolExhaustedError
from jwcrypto import jwk, jws, jwt


@pytest.fixture
def pool(faultmod: FaultModule, softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin, max_sessions=4)
    yield p
    p.close()


@pytest.mark.parametrize(
    ("label", "alg"), [("ec-key", "ES256"), ("rsa-key", "PS256"), ("ed-key", "EdDSA")]
)
def test_a_warm_signature_is_two_calls(
    pool: SessionPool, faultmod: FaultModule, label: str, alg: str
) -> None:
    """C_SignInit and one C_Sign, whatever the form: a pool-bound key, a short block, a JWS,
    sign_async, an async block. (A C_Sign that asks for the length first would be a third
    round trip on a network HSM.)"""
    key = pool.find_key(key_label=label)
    jwk_key = HSMJWK.from_hsm(pool, key_label=label)
    key.sign(alg, b"warm")  # sessions open, key found

    async def sign_async() -> None:
        await key.sign_async(alg, b"async")
        async with pool.session() as s:
            await s.find_key(key_label=label).sign_async(alg, b"async block")
        await jwk_key.sign_compact_async(b"compact", alg)

    faultmod.reset_counts()
    key.sign(alg, b"one")
    with pool.session() as s:
        HSMJWK.from_hsm(s, key_label=label).hsm_key.sign(alg, b"two")
    jwk_key.make_jwt({"sub": "three"}, alg)
    asyncio.run(sign_async())
    assert faultmod.counts() == {"C_SignInit": 6, "C_Sign": 6}


def test_cancelled_sign_async_calls_never_reach_the_token(
    faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    """Calls waiting for their turn are dropped when their task is cancelled: one session,
    twenty tasks, a slow token; only the call already running signs."""

    async def main() -> None:
        one = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin, max_sessions=1)
        key = one.find_key(key_label="ec-key")
        key.sign("ES256", b"warm")
        faultmod.latency("C_Sign", 0.2)
        faultmod.reset_counts()
        tasks = [asyncio.ensure_future(key.sign_async("ES256", b"%d" % i)) for i in range(20)]
        await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(d, asyncio.CancelledError) for d in done)
        for _ in range(100):  # the call in the token finishes and gives its session back
            if one.stats()["in_use"] == 0:
                break
            await asyncio.sleep(0.02)
        assert one.stats()["in_use"] == 0
        assert faultmod.count("C_SignInit") <= 1
        faultmod.clear()
        assert len(await key.sign_async("ES256", b"still works")) == 64
        one.close()

    asyncio.run(main())


def test_async_acquire_timeout_keeps_the_loop_running(
    faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    """With every session lent out, a pool-bound sign_async and a call of an `async with`
    block (entered at once, with no session) wait at most acquire_timeout, then raise
    HSMPoolExhaustedError; the loop runs other tasks all the while, and the waits leave nothing
    borrowed."""

    async def main() -> None:
        pool = SessionPool(
            faultmod.path, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=0.3
        )
        key = pool.find_key(key_label="ec-key")
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.005)
                ticks += 1

        tick = asyncio.create_task(ticker())
        held = pool.open_session()  # the only session
        with pytest.raises(HSMPoolExhaustedError, match="acquire_timeout"):
            await key.sign_async("ES256", b"no session")
        with pytest.raises(HSMPoolExhaustedError):
            async with pool.session() as s:
                await s.find_key(key_label="ec-key").sign_async("ES256", b"no session")
        stats = pool.stats()
        assert stats["in_use"] == 1
        assert stats["timeouts"] == 2
        held.close()
        stop.set()
        await tick
        assert ticks >= 20  # 0.6 s of waiting: the loop kept ticking
        assert pool.stats()["in_use"] == 0
        assert len(await key.sign_async("ES256", b"free again")) == 64
        pool.close()

    asyncio.run(main())


def test_many_tasks_share_the_sessions(pool: SessionPool, faultmod: FaultModule) -> None:
    """64 tasks on 4 sessions over a slow token: every call signs, at most 4 sessions are
    ever lent, and the pool is idle afterwards."""
    faultmod.latency("*", 0.002)

    async def main() -> list[bytes]:
        key = pool.find_key(key_label="ec-key")

        async def block(i: int) -> bytes:
            async with pool.session() as s:
                return await s.find_key(key_label="ec-key").sign_async("ES256", b"%d" % i)

        calls = [key.sign_async("ES256", b"%d" % i) for i in range(64)]
        return list(await asyncio.gather(*calls, *(block(i) for i in range(64))))

    signatures = asyncio.run(main())
    assert len(signatures) == 128 and all(len(s) == 64 for s in signatures)
    stats = pool.stats()
    assert stats["in_use"] == 0
    assert stats["max_in_use"] <= 4
    assert stats["created"] <= 4


def test_jwt_and_compact_jws_from_a_coroutine(pool: SessionPool) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    public = jwk.JWK.from_json(key.export_public())

    async def main() -> tuple[str, str]:
        token = await key.make_jwt_async({"sub": "alice"}, headers={"x": 1})
        compact = await key.sign_compact_async(b"payload", "ES256")
        return token, compact

    token, compact = asyncio.run(main())
    checked = jwt.JWT(jwt=token, key=public, algs=["ES256"])
    assert json.loads(checked.claims) == {"sub": "alice"}
    header = json.loads(checked.header)
    assert header == {"alg": "ES256", "kid": key["kid"], "typ": "JWT", "x": 1}
    verified = jws.JWS()
    verified.deserialize(compact, key=public)
    assert verified.payload == b"payload"


def test_the_last_reference_still_closes_a_pool_used_from_asyncio(
    faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    """The asyncio machinery keeps no pool alive: dropping the last reference closes its
    sessions, as it does for a pool never used from a coroutine."""
    before = faultmod.open_sessions()
    pool = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin, max_sessions=2)
    key = pool.find_key(key_label="ec-key")

    async def main(pool: SessionPool, key: Key) -> None:
        await asyncio.gather(*(key.sign_async("ES256", b"%d" % i) for i in range(8)))
        async with pool.session() as s:
            await s.find_key(key_label="ec-key").sign_async("ES256", b"block")

    asyncio.run(main(pool, key))
    assert faultmod.open_sessions() > before
    del key, pool
    gc.collect()
    assert faultmod.open_sessions() == before


def test_a_wait_that_times_out_says_which_limit_was_hit(
    faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    """A call that waited for its turn while sessions were to spare (the calls ahead of it
    took the pool's turns) says so; it used to claim the token allowed no more sessions."""

    async def main() -> None:
        pool = SessionPool(
            faultmod.path, softhsm.token_label, softhsm.pin, max_sessions=2, acquire_timeout=0.3
        )
        pool.find_key(key_label="ec-key")
        slow = faultmod.latency("C_Sign", 1.0)
        async with pool.session() as s:
            key = s.find_key(key_label="ec-key")
            # The block's calls take turns: the first signs (one session), the second waits
            # for the block (holding the pool's other turn, no session), the third waits for
            # a turn.
            results = await asyncio.gather(
                *(key.sign_async("ES256", b"%d" % i) for i in range(3)), return_exceptions=True
            )
        faultmod.remove(slow)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], HSMPoolExhaustedError), results
        message = str(errors[0])
        assert "1 of 2 are in use, and the callers ahead of it took every turn" in message
        assert "as many as the token allows" not in message
        pool.close()

    asyncio.run(main())
