"""The session pool: lazy construction, warm reuse, nesting, threads, bounds, expiry, close."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from helpers import STATS_KEYS, SoftHSM
from hsmkey import SessionPool
from hsmkey.exceptions import (
    HSMError,
    HSMKeyNotFoundError,
    HSMPinError,
    HSMPoolClosedError,
    HSMPoolExhaustedError,
    HSMSessionError,
)


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    assert p.stats()["in_use"] == 0, "a test left a session borrowed"
    p.close()


def verify_es256(ec_point: bytes, sig: bytes, data: bytes) -> None:
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ec_point)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def test_constructor_makes_no_connection(softhsm: SoftHSM) -> None:
    pool = SessionPool(softhsm.module, "no-such-token", "wrong")
    # Nothing was looked up: the bad label only shows on first use.
    assert pool.stats()["logins"] == 0
    assert pool.stats()["epoch"] == 0
    with pytest.raises(HSMSessionError, match="no-such-token"):
        pool.check()
    pool.close()


def test_check_logs_in_and_stats_have_every_key(pool: SessionPool) -> None:
    pool.check()
    stats = pool.stats()
    assert set(stats) == STATS_KEYS
    assert stats["logins"] + 0 <= 1
    assert stats["epoch"] > 0
    assert stats["in_use"] == 0


def test_sessions_are_reused_lifo(pool: SessionPool) -> None:
    for _ in range(50):
        with pool.session() as session:
            assert not session.closed
        assert session.closed
    stats = pool.stats()
    assert stats["created"] == 1
    assert stats["reused"] == 49
    assert stats["idle"] == 1


def test_read_write_sessions_are_kept_apart(pool: SessionPool) -> None:
    with pool.session(rw=True) as rw, pool.session() as ro:
        assert rw.rw and not ro.rw
    with pool.session(rw=True):
        pass
    stats = pool.stats()
    assert stats["created"] == 2
    assert stats["idle"] == 2


def test_nested_sessions_work(pool: SessionPool) -> None:
    with pool.session() as outer:
        outer_key = outer.find_key(key_label="ec-key")
        with pool.session() as inner:
            inner_key = inner.find_key(key_label="ec-key")
            with pool.session() as innermost:
                key = innermost.find_key(key_label="ec-key")
                verify_es256(key.ec_point or b"", key.sign("ES256", b"3"), b"3")
            verify_es256(inner_key.ec_point or b"", inner_key.sign("ES256", b"2"), b"2")
        verify_es256(outer_key.ec_point or b"", outer_key.sign("ES256", b"1"), b"1")
    assert pool.stats()["max_in_use"] == 3


def test_many_blocks_from_four_threads_log_in_once(pool: SessionPool) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(2500):
                with pool.session():
                    pass
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = pool.stats()
    assert stats["logins"] <= 1
    assert stats["created"] + stats["reused"] == 10_000
    assert stats["created"] <= stats["max_in_use"] <= 4


def test_concurrent_signing_from_threads(pool: SessionPool) -> None:
    key = pool.find_key(key_label="ec-key")
    point = key.ec_point or b""
    bad: list[str] = []

    def work(n: int) -> None:
        for i in range(50):
            data = f"{n}-{i}".encode()
            try:
                verify_es256(point, key.sign("ES256", data), data)
            except Exception as e:
                bad.append(repr(e))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_pool_exhausted_after_timeout(softhsm: SoftHSM) -> None:
    with SessionPool(
        softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=0.2
    ) as pool:
        with pool.session():
            start = time.monotonic()
            with pytest.raises(HSMPoolExhaustedError, match="max_sessions"), pool.session():
                pass
            assert 0.15 < time.monotonic() - start < 5
        stats = pool.stats()
        assert stats["timeouts"] == 1 and stats["waits"] == 1
        with pool.session():
            pass


def test_waiting_releases_the_gil_and_gets_the_session(softhsm: SoftHSM) -> None:
    with SessionPool(
        softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=10
    ) as pool:
        got = threading.Event()
        ticks = 0

        def waiter() -> None:
            with pool.session():
                got.set()

        with pool.session():
            t = threading.Thread(target=waiter)
            t.start()
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:  # this thread keeps running Python
                ticks += 1
            assert not got.is_set()
        t.join(5)
        assert got.is_set()
        assert ticks > 1000
        assert pool.stats()["waits"] == 1


def test_idle_sessions_expire(softhsm: SoftHSM) -> None:
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, max_idle=0.05) as pool:
        with pool.session(), pool.session():
            pass
        assert pool.stats()["idle"] == 2
        time.sleep(0.1)
        with pool.session():
            assert pool.stats()["idle"] == 0
        stats = pool.stats()
        assert stats["created"] == 3


def test_open_session_is_closed_by_the_caller(pool: SessionPool) -> None:
    session = pool.open_session()
    key = session.find_key(key_label="ec-key")
    assert pool.stats()["in_use"] == 1
    key.sign("ES256", b"x")
    session.close()
    session.close()  # idempotent
    assert pool.stats()["in_use"] == 0
    with pytest.raises(HSMPoolClosedError, match="session is closed"):
        key.sign("ES256", b"x")


def test_session_key_after_block_raises(pool: SessionPool) -> None:
    with pool.session() as session:
        key = session.find_key(key_label="rsa-key")
    with pytest.raises(HSMSessionError, match="load keys inside"):
        key.sign("RS256", b"late")
    with pytest.raises(HSMPoolClosedError):
        session.find_key(key_label="rsa-key")


def test_session_used_before_enter_raises(pool: SessionPool) -> None:
    session = pool.session()
    with pytest.raises(HSMSessionError, match="not open yet"):
        session.find_key(key_label="ec-key")


def test_exceptions_in_blocks_return_the_session(pool: SessionPool) -> None:
    for _ in range(1000):
        with pytest.raises(KeyError), pool.session():
            raise KeyError("boom")
    assert pool.stats()["in_use"] == 0
    assert pool.stats()["created"] == 1


def test_closed_pool_raises(softhsm: SoftHSM) -> None:
    pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    key = pool.find_key(key_label="ec-key")
    pool.close()
    assert pool.closed
    with pytest.raises(HSMPoolClosedError, match="closed"), pool.session():
        pass
    with pytest.raises(HSMPoolClosedError):
        key.sign("ES256", b"x")
    with pytest.raises(HSMPoolClosedError):
        pool.check()
    pool.close()  # idempotent


def test_pool_as_context_manager(softhsm: SoftHSM) -> None:
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as pool, pool.session():
        pass
    assert pool.closed


def test_pool_bound_key_works_from_any_thread(pool: SessionPool) -> None:
    key = pool.find_key(key_label="ec-key")
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(key.sign("ES256", b"t")))
    t.start()
    t.join()
    verify_es256(key.ec_point or b"", out[0], b"t")
    assert pool.stats()["in_use"] == 0


def test_find_key_by_id_and_label(pool: SessionPool) -> None:
    with pool.session() as s:
        by_id = s.find_key(key_id=b"\x02")
        by_hex = s.find_key(key_id="02")
        by_both = s.find_key(key_label="ec-key", key_id=b"\x02")
        assert by_id.label == by_hex.label == by_both.label == "ec-key"
        assert by_id.id == b"\x02"


def test_key_not_found_and_ambiguous(pool: SessionPool) -> None:
    with pool.session() as s:
        with pytest.raises(HSMKeyNotFoundError, match="no-such-key") as info:
            s.find_key(key_label="no-such-key")
        assert isinstance(info.value, LookupError)
        with pytest.raises(HSMKeyNotFoundError, match="2 private keys match"):
            s.find_key(key_label="dup-key")
        assert s.find_key(key_label="dup-key", key_id=b"\x07").id == b"\x07"


def test_key_lookup_is_cached_per_epoch(pool: SessionPool) -> None:
    with pool.session() as s:
        a = s.find_key(key_label="ec-key")
    with pool.session() as s:
        b = s.find_key(key_label="ec-key")
    assert a.ec_point == b.ec_point


def test_from_env(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in softhsm.env.items():
        monkeypatch.setenv(k, v)
    with SessionPool.from_env(max_sessions=2) as pool:
        assert pool.max_sessions == 2
        pool.check()
    monkeypatch.delenv("HSM_MODULE")
    with pytest.raises(ValueError, match="HSM_MODULE"):
        SessionPool.from_env()
    # Without HSM_PIN: a pool for a token that needs no login; SoftHSM2's does, and says so.
    monkeypatch.setenv("HSM_MODULE", softhsm.env["HSM_MODULE"])
    monkeypatch.delenv("HSM_PIN")
    with SessionPool.from_env() as pool, pytest.raises(HSMPinError, match="HSM_PIN"):
        pool.check()


def test_repr_shows_no_pin(softhsm: SoftHSM) -> None:
    pin = "s3cr3t-pin-771"
    pool = SessionPool(softhsm.module, softhsm.token_label, pin)
    text = repr(pool) + str(pool)
    assert pin not in text
    assert "SessionPool" in text and softhsm.token_label in text
    with pytest.raises(HSMError) as info:
        pool.check()
    assert pin not in str(info.value) and pin not in repr(info.value)
    pool.close()


def test_module_path_accepts_pathlike(softhsm: SoftHSM) -> None:
    with SessionPool(Path(softhsm.module), softhsm.token_label, softhsm.pin) as pool:
        pool.check()
        assert pool.module_path == os.fspath(softhsm.module)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_sessions": 0}, ValueError, "max_sessions"),
        ({"max_sessions": -3}, ValueError, "max_sessions"),
        ({"max_sessions": "2"}, TypeError, "max_sessions"),
        ({"max_sessions": True}, TypeError, "max_sessions"),
        ({"acquire_timeout": -1.0}, ValueError, "acquire_timeout"),
        ({"acquire_timeout": float("nan")}, ValueError, "acquire_timeout"),
        ({"max_idle": 0.0}, ValueError, "max_idle"),
        ({"slot_id": -1}, ValueError, "slot_id"),
        ({"slot_id": "1"}, TypeError, "slot_id"),
        ({"token_serial": 5}, TypeError, "token_serial"),
    ],
)
def test_bad_arguments(softhsm: SoftHSM, kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, **kwargs)  # type: ignore[arg-type]


def test_bad_positional_arguments(softhsm: SoftHSM) -> None:
    with pytest.raises(TypeError, match="user_pin"):
        SessionPool(softhsm.module, softhsm.token_label, 123456)  # type: ignore[arg-type]
    # user_pin=None is a pool for a token that needs no login (see test_vendors.py).
    SessionPool(softhsm.module, softhsm.token_label, None).close()
    with pytest.raises(TypeError, match="init_args"):
        SessionPool(softhsm.module, softhsm.token_label, "1", init_args=b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_args"):
        SessionPool(softhsm.module, softhsm.token_label, "1", init_args="")
    with pytest.raises(TypeError, match="token_label"):
        SessionPool(softhsm.module, 7, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        SessionPool(softhsm.module, "a\0b", "1")
    with pytest.raises(ValueError, match="name the token"):
        SessionPool(softhsm.module, None, "1")
    with pytest.raises(TypeError, match="module_path"):
        SessionPool(42, "x", "1")  # type: ignore[arg-type]


def test_key_arguments_are_checked(pool: SessionPool) -> None:
    with pool.session() as s:
        with pytest.raises(ValueError, match="key_label"):
            s.find_key()
        with pytest.raises(TypeError, match="key_label"):
            s.find_key(key_label=b"ec-key")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="hex"):
            s.find_key(key_id="zz")
        with pytest.raises(ValueError, match="NUL"):
            s.find_key(key_label="ec\0key")


def test_waiting_for_a_session_can_be_interrupted(softhsm: SoftHSM) -> None:
    import _thread

    with SessionPool(
        softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=30
    ) as pool:
        holder = pool.open_session()
        timer = threading.Timer(0.2, _thread.interrupt_main)
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt), pool.session():
            pass
        assert time.monotonic() - start < 5
        holder.close()
        # Nothing was left half-borrowed.
        assert pool.stats()["in_use"] == 0
        with pool.session():
            pass


def test_max_sessions_bounds_read_only_and_read_write_together(softhsm: SoftHSM) -> None:
    with SessionPool(
        softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=2, acquire_timeout=0
    ) as pool:
        with pool.session(rw=True), pool.session(rw=True):
            pass
        assert pool.stats()["idle"] == 2
        with pool.session(), pool.session():
            # Two read-only sessions lent: the idle read-write ones made room.
            assert pool.stats()["idle"] == 0
            with pytest.raises(HSMPoolExhaustedError), pool.session(rw=True):
                pass
        stats = pool.stats()
        assert stats["max_in_use"] == 2
        assert stats["idle"] == 2
