"""hsmkey under injected faults (issue 5, items 2 and 3): recovery and PIN safety.

Every pool here talks to the fault-injection module (tests/faultmod), which forwards to a
SoftHSM2 instance of its own. Rules are armed after the pool is warm, so ``nth=1`` is the first
call of the operation under test. hsmkey's ``Key.sign`` makes ``C_SignInit`` and one
``C_Sign`` (into a buffer of the signature's size: no size query, one round trip less on a
network HSM).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from helpers import STATS_KEYS
from helpers.faultmod import (  # noqa: F401  (faultmod_fixture: the `faultmod` fixture)
    CKF_USER_PIN_FINAL_TRY,
    CKF_USER_PIN_LOCKED,
    FaultModule,
    Pkcs11Client,
    faultmod_fixture,
)
from helpers.softhsm import SoftHSM
from hsmkey import (
    HSMError,
    HSMPinError,
    HSMSessionError,
    HSMTokenNotFoundError,
    Key,
    SessionPool,
    _hsmkey,
)


@pytest.fixture
def make_pool(faultmod: FaultModule, softhsm: SoftHSM) -> Iterator[Callable[..., SessionPool]]:
    """``make_pool(pin=..., **kwargs)``: pools on the test token through the fault module,
    all closed afterwards. Then every session of the slot is closed (so a session one test
    leaked does not count against the next), and a good login clears the
    CKF_USER_PIN_COUNT_LOW that SoftHSM2 keeps in the token after a wrong PIN."""
    pools: list[SessionPool] = []

    def make(pin: str | None = None, **kwargs: Any) -> SessionPool:
        p = SessionPool(
            faultmod.path, softhsm.token_label, softhsm.pin if pin is None else pin, **kwargs
        )
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()
    faultmod.clear()
    client = Pkcs11Client(faultmod.path)
    h = client.open_session(softhsm.slot_id)
    rv = client.call("C_Login", h, 1, softhsm.pin.encode(), len(softhsm.pin))
    assert rv in (0, 0x100), rv  # CKR_OK, CKR_USER_ALREADY_LOGGED_IN
    client.close_all_sessions(softhsm.slot_id)


@pytest.fixture
def pool(make_pool: Callable[..., SessionPool], faultmod: FaultModule) -> SessionPool:
    """A warm, logged-in pool; the fault module's counters start after its login."""
    p = make_pool()
    p.check()
    faultmod.reset_counts()
    return p


def check_es256(key: Key, data: bytes) -> None:
    sig = key.sign("ES256", data)
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.ec_point or b"")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def warm_key(pool: SessionPool, faultmod: FaultModule) -> Key:
    key = pool.find_key(key_label="ec-key")
    check_es256(key, b"warm")
    faultmod.reset_counts()
    return key


def hsmkey_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("hsmkey")]


def assert_closed_cleanly(pool: SessionPool, faultmod: FaultModule) -> None:
    assert pool.stats()["in_use"] == 0
    pool.close()
    assert faultmod.open_sessions() == 0, "sessions left open in the token after close()"


# ---- recovery: one retry heals what broke ---------------------------------------------------

HEALED = [
    # (function, code, effect): what the token does; hsmkey must heal it with one retry.
    pytest.param("C_Sign", "CKR_SESSION_HANDLE_INVALID", "close_session", id="session-closed"),
    pytest.param("C_Sign", "CKR_SESSION_HANDLE_INVALID", None, id="handle-invalid-code-only"),
    pytest.param("C_SignInit", "CKR_SESSION_CLOSED", "close_session", id="closed-at-init"),
    pytest.param("C_Sign", "CKR_SESSION_CLOSED", "close_all", id="all-sessions-closed"),
    pytest.param("C_Sign", "CKR_USER_NOT_LOGGED_IN", "logout", id="logged-out"),
    pytest.param("C_Sign", "CKR_USER_NOT_LOGGED_IN", None, id="not-logged-in-code-only"),
    pytest.param("C_SignInit", "CKR_OBJECT_HANDLE_INVALID", None, id="stale-handle"),
    pytest.param("C_SignInit", "CKR_KEY_HANDLE_INVALID", None, id="stale-key-handle"),
    pytest.param("C_SignInit", "CKR_OBJECT_HANDLE_INVALID", "logout", id="softhsm-logout"),
    pytest.param("C_SignInit", "CKR_USER_NOT_LOGGED_IN", "logout", id="tpm2-logout"),
    pytest.param("C_SignInit", "CKR_GENERAL_ERROR", "logout", id="kryoptic-logout"),
    pytest.param("C_SignInit", "CKR_DEVICE_REMOVED", "close_all", id="device-removed-reset"),
]


@pytest.mark.parametrize(("function", "code", "effect"), HEALED)
def test_fault_is_healed_by_one_retry(
    pool: SessionPool,
    faultmod: FaultModule,
    caplog: pytest.LogCaptureFixture,
    function: str,
    code: str,
    effect: str | None,
) -> None:
    key = warm_key(pool, faultmod)
    before = pool.stats()
    faultmod.fail(function, code, nth=1, effect=effect)
    with caplog.at_level(logging.DEBUG, logger="hsmkey"):
        check_es256(key, b"after the fault")  # the user sees no error
    assert faultmod.injected(function) == 1
    stats = pool.stats()
    assert stats["recoveries"] == before["recoveries"] + 1
    assert faultmod.count("C_SignInit") == 2  # the operation and its one retry
    assert any(r.levelno >= logging.INFO for r in hsmkey_records(caplog)), (
        "the recovery was not logged"
    )
    if effect in ("logout", "close_all"):
        assert stats["relogins"] == before["relogins"] + 1
        assert faultmod.count("C_Login") == 1
    for i in range(3):  # and everything is normal afterwards
        check_es256(key, b"%d" % i)
    assert pool.stats()["recoveries"] == stats["recoveries"]
    assert_closed_cleanly(pool, faultmod)


def test_dropped_session_is_discarded_and_reported(
    pool: SessionPool, faultmod: FaultModule, caplog: pytest.LogCaptureFixture
) -> None:
    key = warm_key(pool, faultmod)
    faultmod.fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", nth=1, effect="close_session")
    with caplog.at_level(logging.DEBUG, logger="hsmkey"):
        check_es256(key, b"x")
    stats = pool.stats()
    assert stats["discarded"] >= 1
    assert stats["relogins"] == 0  # other sessions kept the login
    assert faultmod.count("C_Login") == 0
    assert faultmod.count("C_OpenSession") == 1  # one fresh session for the retry
    warnings = [r for r in hsmkey_records(caplog) if r.levelno == logging.WARNING]
    assert warnings, "a lost session should be a WARNING on the hsmkey logger"
    assert "CKR_SESSION_HANDLE_INVALID" in warnings[0].getMessage()
    assert set(stats) >= STATS_KEYS


def test_lost_login_is_restored_once(pool: SessionPool, faultmod: FaultModule) -> None:
    key = warm_key(pool, faultmod)
    epoch = pool.stats()["epoch"]
    for i in range(3):
        faultmod.fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", nth=1, effect="logout")
        check_es256(key, b"%d" % i)
    stats = pool.stats()
    assert stats["relogins"] == 3
    assert stats["recoveries"] == 3
    assert stats["epoch"] != epoch
    assert faultmod.count("C_Login") == 3  # one per lost login, never more


def test_fault_that_survives_the_retry_raises_and_pool_stays_usable(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    key = warm_key(pool, faultmod)
    faultmod.fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", count=2, effect="close_session")
    with pytest.raises(HSMSessionError) as info:
        key.sign("ES256", b"x")
    assert info.value.rv == "CKR_SESSION_HANDLE_INVALID"
    assert faultmod.count("C_SignInit") == 2  # retried once, not more
    assert pool.stats()["in_use"] == 0
    check_es256(key, b"y")
    assert_closed_cleanly(pool, faultmod)


def test_session_lost_while_finding_a_key(pool: SessionPool, faultmod: FaultModule) -> None:
    faultmod.fail("C_FindObjectsInit", "CKR_SESSION_HANDLE_INVALID", nth=1, effect="close_session")
    key = pool.find_key(key_label="ec-key")
    check_es256(key, b"x")
    assert pool.stats()["recoveries"] == 1


def test_concurrent_signers_with_sessions_dropping(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    """Four threads sign while every 40th C_Sign (of any thread) loses its session. A retry
    can itself be the 40th call when its thread was preempted while healing: that operation
    then fails, legitimately (one retry), and its dead session is healed at its next use or
    dropped at close. So: every error took two faults, each fault is healed at most once,
    every signature verifies."""
    key = warm_key(pool, faultmod)
    faultmod.fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", every=40, effect="close_session")
    errors: list[BaseException] = []
    signed = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + 0.8

    def work(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            try:
                check_es256(key, b"%d-%d" % (n, i))
                with lock:
                    signed[0] += 1
            except HSMSessionError as exc:
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a signer hung"
    assert all(getattr(e, "rv", None) == "CKR_SESSION_HANDLE_INVALID" for e in errors), errors
    injected = faultmod.injected("C_Sign")
    stats = pool.stats()
    assert injected >= 3
    assert len(errors) <= injected // 2
    assert injected - len(errors) <= stats["recoveries"] <= injected
    assert signed[0] > injected
    assert_closed_cleanly(pool, faultmod)


def test_login_lost_under_load_is_restored_once(pool: SessionPool, faultmod: FaultModule) -> None:
    """Four signers find the login gone at about the same time (a slow C_Login makes them
    pile up): one C_Login, no errors."""
    key = warm_key(pool, faultmod)
    faultmod.latency("C_Login", 0.05)
    faultmod.fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", nth=20, effect="logout")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(25):
            try:
                check_es256(key, b"%d-%d" % (n, i))
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a signer hung"
    assert not errors, errors[:3]
    assert faultmod.count("C_Login") == 1
    assert pool.stats()["relogins"] == 1
    assert_closed_cleanly(pool, faultmod)


# ---- a removed token ------------------------------------------------------------------------


def test_token_removed_and_back_between_operations(
    pool: SessionPool, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    key = warm_key(pool, faultmod)
    with pool.session(), pool.session():
        pass  # two idle sessions, both about to die with the token
    faultmod.remove_token(label=softhsm.token_label)
    faultmod.restore_token()
    check_es256(key, b"the token came back")
    stats = pool.stats()
    assert stats["recoveries"] == 1
    assert stats["relogins"] == 1
    assert stats["discarded"] >= 2
    assert faultmod.count("C_Login") == 1
    assert_closed_cleanly(pool, faultmod)


def test_token_removed_gives_a_clear_error_then_recovers(
    pool: SessionPool, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    key = warm_key(pool, faultmod)
    faultmod.remove_token(label=softhsm.token_label)
    with pytest.raises(HSMSessionError) as info:
        key.sign("ES256", b"x")
    # Either the token's own answer, or hsmkey looked for the token again and says so.
    assert info.value.rv in ("CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT") or isinstance(
        info.value, HSMTokenNotFoundError
    ), repr(info.value)
    with pytest.raises(HSMSessionError), pool.session():
        pass
    assert pool.stats()["in_use"] == 0
    faultmod.restore_token()
    check_es256(key, b"back")
    with pool.session() as session:
        check_es256(session.find_key(key_label="ec-key"), b"session-bound")
    assert faultmod.count("C_Login") == 1
    assert_closed_cleanly(pool, faultmod)


# ---- errors that are not retried ------------------------------------------------------------


@pytest.mark.parametrize("code", ["CKR_DEVICE_ERROR", "CKR_GENERAL_ERROR", "CKR_FUNCTION_FAILED"])
def test_device_error_mid_operation_raises_and_pool_stays_usable(
    pool: SessionPool, faultmod: FaultModule, code: str
) -> None:
    key = warm_key(pool, faultmod)
    faultmod.fail("C_Sign", code, nth=1)
    with pytest.raises(HSMError) as info:
        key.sign("ES256", b"x")
    assert info.value.rv == code
    assert info.value.function == "C_Sign"
    assert code in str(info.value)
    assert faultmod.count("C_SignInit") == 1  # not retried
    assert pool.stats()["recoveries"] == 0
    assert pool.stats()["in_use"] == 0
    for i in range(3):
        check_es256(key, b"%d" % i)
    assert_closed_cleanly(pool, faultmod)


def test_device_error_that_leaves_the_operation_active(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    """A token that fails C_Sign without ending the operation (PKCS#11 says a failure ends
    it; not every token does): the session must not go back to the pool as it is."""
    key = warm_key(pool, faultmod)
    faultmod.fail("C_Sign", "CKR_DEVICE_ERROR", nth=1, mode="before")
    with pytest.raises(HSMError, match="CKR_DEVICE_ERROR"):
        key.sign("ES256", b"x")
    for i in range(3):
        check_es256(key, b"%d" % i)
    assert_closed_cleanly(pool, faultmod)


def test_persistent_device_error_then_healthy(pool: SessionPool, faultmod: FaultModule) -> None:
    key = warm_key(pool, faultmod)
    faultmod.fail("C_SignInit", "CKR_DEVICE_ERROR", count=5)
    for _ in range(5):
        with pytest.raises(HSMError, match="CKR_DEVICE_ERROR"):
            key.sign("ES256", b"x")
    check_es256(key, b"healthy again")
    assert pool.stats()["in_use"] == 0
    assert_closed_cleanly(pool, faultmod)


def test_open_session_failure_raises_and_pool_stays_usable(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    p = make_pool()
    p.check()
    with p.session(), p.session():
        pass
    created = p.stats()["created"]
    faultmod.fail("C_OpenSession", "CKR_DEVICE_ERROR", nth=1)
    with p.session(), p.session():  # both idle ones are reused: no C_OpenSession yet
        with pytest.raises(HSMError, match="CKR_DEVICE_ERROR"), p.session():
            pass
        with p.session():
            pass
    stats = p.stats()
    assert stats["in_use"] == 0
    assert stats["created"] == created + 1
    assert_closed_cleanly(p, faultmod)


# ---- PIN safety -----------------------------------------------------------------------------


def test_wrong_pin_is_tried_once(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    p = make_pool(pin="000000")
    for _ in range(3):
        with pytest.raises(HSMPinError) as info:
            p.check()
        assert info.value.rv == "CKR_PIN_INCORRECT"
    with pytest.raises(HSMPinError), p.session():
        pass
    with pytest.raises(HSMPinError):
        p.find_key(key_label="ec-key")
    assert faultmod.count("C_Login") == 1


@pytest.mark.parametrize("pin", ["000000", None], ids=["wrong-pin", "right-pin"])
def test_first_use_from_many_threads_logs_in_once(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule, pin: str | None
) -> None:
    faultmod.latency("C_Login", 0.05)
    p = make_pool(pin=pin)
    results: list[object] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        try:
            p.check()
            results.append("ok")
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert faultmod.count("C_Login") == 1
    if pin is None:
        assert results == ["ok"] * 8
    else:
        assert len(results) == 8
        assert all(isinstance(r, HSMPinError) for r in results), results


def test_pin_counter_is_spent_once(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    faultmod.pin_retries(3)
    bad = make_pool(pin="000000")
    for _ in range(5):
        with pytest.raises(HSMPinError):
            bad.check()
    assert faultmod.count("C_Login") == 1
    flags = Pkcs11Client(faultmod.path).token_info(softhsm.slot_id).flags
    assert not flags & (CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)
    good = make_pool()
    good.check()  # two tries were left: the user is not locked out
    assert faultmod.count("C_Login") == 2


def test_token_refusing_the_pin_is_not_retried(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    faultmod.fail("C_Login", "CKR_PIN_INCORRECT", always=True)
    p = make_pool()
    for _ in range(3):
        with pytest.raises(HSMPinError):
            p.check()
    assert faultmod.count("C_Login") == 1


def test_final_try_is_refused_without_a_login(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    faultmod.flags("+CKF_USER_PIN_FINAL_TRY")
    p = make_pool()
    for _ in range(2):
        with pytest.raises(HSMPinError, match=r"CKF_USER_PIN_FINAL_TRY|final"):
            p.check()
    with pytest.raises(HSMPinError), p.session():
        pass
    assert faultmod.count("C_Login") == 0


def test_final_try_with_explicit_opt_in(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    faultmod.flags("+CKF_USER_PIN_FINAL_TRY")
    p = make_pool(allow_final_pin_try=True)
    p.check()
    check_es256(p.find_key(key_label="ec-key"), b"x")
    assert faultmod.count("C_Login") == 1


def test_final_try_is_refused_on_relogin_too(pool: SessionPool, faultmod: FaultModule) -> None:
    key = warm_key(pool, faultmod)
    faultmod.flags("+CKF_USER_PIN_FINAL_TRY")
    faultmod.fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", nth=1, effect="logout")
    with pytest.raises(HSMPinError):
        key.sign("ES256", b"x")
    with pytest.raises(HSMPinError):
        key.sign("ES256", b"y")
    assert faultmod.count("C_Login") == 0


def test_count_low_does_not_stop_a_login(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    faultmod.flags("+CKF_USER_PIN_COUNT_LOW")
    p = make_pool()
    p.check()
    assert faultmod.count("C_Login") == 1


def test_locked_pin_flag(make_pool: Callable[..., SessionPool], faultmod: FaultModule) -> None:
    faultmod.flags("+CKF_USER_PIN_LOCKED")
    p = make_pool()
    for _ in range(2):
        with pytest.raises(HSMPinError) as info:
            p.check()
        assert info.value.rv == "CKR_PIN_LOCKED"
    assert faultmod.count("C_Login") == 0


def test_token_answering_pin_locked(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    faultmod.fail("C_Login", "CKR_PIN_LOCKED", always=True)
    p = make_pool()
    for _ in range(2):
        with pytest.raises(HSMPinError) as info:
            p.check()
        assert info.value.rv == "CKR_PIN_LOCKED"
        assert info.value.function == "C_Login"
    assert faultmod.count("C_Login") == 1


def test_pin_failure_during_relogin_is_not_retried(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    """The PIN stopped working (changed by an administrator) while the login was lost."""
    key = warm_key(pool, faultmod)
    faultmod.fail("C_Login", "CKR_PIN_INCORRECT", always=True)
    faultmod.fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", nth=1, effect="logout")
    for _ in range(3):
        with pytest.raises(HSMPinError) as info:
            key.sign("ES256", b"x")
        assert info.value.rv == "CKR_PIN_INCORRECT"
    with pytest.raises(HSMPinError), pool.session():
        pass
    assert faultmod.count("C_Login") == 1


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        ("CKR_DEVICE_ERROR", HSMSessionError),
        ("CKR_GENERAL_ERROR", HSMError),
        ("CKR_FUNCTION_FAILED", HSMError),
        ("CKR_PIN_EXPIRED", HSMPinError),
    ],
)
def test_login_error_that_is_no_verdict_is_retried_by_the_next_use(
    make_pool: Callable[..., SessionPool],
    faultmod: FaultModule,
    code: str,
    exception: type[HSMError],
) -> None:
    """Issue 22.1: one C_Login failure that is not the token's verdict on the PIN (a device
    or transport error, an expired PIN) is raised, not remembered: the same pool's next use,
    and other pools, try the (right) PIN again."""
    faultmod.fail("C_Login", code, nth=1)
    pool = make_pool()
    with pytest.raises(exception) as info:
        pool.check()
    assert info.value.rv == code
    assert info.value.function == "C_Login"
    assert faultmod.count("C_Login") == 1
    pool.check()  # the next use logs in
    check_es256(pool.find_key(key_label="ec-key"), b"after a device error")
    assert faultmod.count("C_Login") == 2
    other = make_pool()
    other.check()  # shares the login
    assert faultmod.count("C_Login") == 2
    pool.close()
    assert_closed_cleanly(other, faultmod)


def test_device_error_on_login_does_not_lock_out_a_new_pool(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule
) -> None:
    faultmod.fail("C_Login", "CKR_DEVICE_ERROR", nth=1)
    with pytest.raises(HSMSessionError):
        make_pool().check()
    make_pool().check()
    assert faultmod.count("C_Login") == 2


@pytest.mark.parametrize(
    "code", ["CKR_PIN_INCORRECT", "CKR_PIN_INVALID", "CKR_PIN_LEN_RANGE", "CKR_PIN_LOCKED"]
)
def test_the_tokens_verdicts_on_the_pin_are_remembered(
    make_pool: Callable[..., SessionPool], faultmod: FaultModule, code: str
) -> None:
    faultmod.fail("C_Login", code, nth=1)
    pool = make_pool()
    for p in (pool, pool, make_pool()):
        with pytest.raises(HSMPinError) as info:
            p.check()
        assert info.value.rv == code
    assert faultmod.count("C_Login") == 1
    _hsmkey._forget_failed_logins()  # what a process restart does
    fresh = make_pool()
    fresh.check()
    assert faultmod.count("C_Login") == 2
    assert_closed_cleanly(fresh, faultmod)


def test_unreadable_token_info_before_login_tries_no_pin(
    pool: SessionPool, faultmod: FaultModule
) -> None:
    """Fail closed: without the token's PIN flags (FINAL_TRY, LOCKED) no PIN is tried."""
    key = warm_key(pool, faultmod)
    faultmod.fail("C_GetTokenInfo", "CKR_DEVICE_ERROR", always=True)
    faultmod.fail("C_Sign", "CKR_USER_NOT_LOGGED_IN", nth=1, effect="logout")
    with pytest.raises(HSMSessionError) as info:
        key.sign("ES256", b"x")
    assert info.value.function == "C_GetTokenInfo"
    assert "does not try a PIN" in str(info.value)
    assert faultmod.count("C_Login") == 0
    faultmod.clear()
    key.sign("ES256", b"healed: the PIN was never tried, so it is not remembered")
    assert faultmod.count("C_Login") == 1
