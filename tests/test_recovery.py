"""Real faults made by a second library in this process: the pool heals each with one retry.

FACTS.md: sessions and login belong to the process, so ``C_CloseAllSessions`` or ``C_Logout``
from another library hits hsmkey's sessions, and SoftHSM2 renumbers private-key handles after
every logout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from helpers import Faults, SoftHSM, cryptoki
from hsmkey import Key, SessionPool


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    p.check()
    yield p
    assert p.stats()["in_use"] == 0
    p.close()


def check_es256(key: Key, data: bytes) -> None:
    sig = key.sign("ES256", data)
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.ec_point or b"")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def check_rs256(key: Key, data: bytes) -> None:
    pub = rsa.RSAPublicNumbers(
        int.from_bytes(key.public_exponent or b"", "big"), int.from_bytes(key.modulus or b"", "big")
    ).public_key()
    pub.verify(key.sign("RS256", data), data, padding.PKCS1v15(), hashes.SHA256())


def relogin_behind_our_back(softhsm: SoftHSM) -> None:
    """Log out and in again from another library: still logged in, but every private-key
    handle is renumbered."""
    client = cryptoki(softhsm.module)
    handle = client.open_session(softhsm.slot_id)
    try:
        client.logout(handle)
        client.login(handle, softhsm.pin)
    finally:
        client.close_session(handle)


def test_all_sessions_closed_behind_our_back(
    pool: SessionPool, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    key = pool.find_key(key_label="ec-key")
    check_es256(key, b"before")
    with pool.session(), pool.session():
        pass  # several idle sessions, all about to die
    faults.close_all_sessions()
    assert not faults.is_logged_in()
    with caplog.at_level(logging.INFO, logger="hsmkey"):
        check_es256(key, b"after")
    stats = pool.stats()
    assert stats["recoveries"] == 1
    assert stats["relogins"] == 1
    assert stats["discarded"] >= 2
    assert faults.is_logged_in()
    messages = [r.getMessage() for r in caplog.records if r.name == "hsmkey"]
    assert any("was lost" in m for m in messages), messages
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "hsmkey")
    # Everything afterwards is normal.
    for i in range(5):
        check_es256(key, b"%d" % i)
    assert pool.stats()["recoveries"] == 1


def test_logout_behind_our_back(pool: SessionPool, faults: Faults) -> None:
    key = pool.find_key(key_label="rsa-key")
    check_rs256(key, b"before")
    epoch = pool.stats()["epoch"]
    faults.logout()
    check_rs256(key, b"after")
    stats = pool.stats()
    assert stats["relogins"] == 1
    assert stats["recoveries"] == 1
    assert stats["epoch"] != epoch
    assert stats["discarded"] == 0


def test_stale_key_handles_are_found_again(
    pool: SessionPool, faults: Faults, softhsm: SoftHSM
) -> None:
    key = pool.find_key(key_label="ec-key")
    check_es256(key, b"before")
    relogin_behind_our_back(softhsm)
    assert faults.is_logged_in()
    check_es256(key, b"after")
    stats = pool.stats()
    assert stats["recoveries"] == 1
    assert stats["relogins"] == 0


def test_session_bound_key_survives_inside_its_block(pool: SessionPool, faults: Faults) -> None:
    with pool.session() as session:
        key = session.find_key(key_label="ec-key")
        check_es256(key, b"one")
        faults.close_all_sessions()
        check_es256(key, b"two")
        check_es256(session.find_key(key_label="ec-key"), b"three")
    assert pool.stats()["recoveries"] == 1


def test_find_key_after_logout_logs_in_instead_of_not_found(
    pool: SessionPool, faults: Faults
) -> None:
    faults.logout()
    # A logged-out session finds no private keys: that must not read as "key not found".
    with pool.session() as session:
        key = session.find_key(key_label="ed-key")
    assert key.curve == "Ed25519"
    assert pool.stats()["relogins"] == 1


def test_each_fault_is_healed_once_per_occurrence(pool: SessionPool, faults: Faults) -> None:
    key = pool.find_key(key_label="ec-key")
    for _ in range(3):
        faults.close_all_sessions()
        check_es256(key, b"x")
        faults.logout()
        check_es256(key, b"y")
    stats = pool.stats()
    assert stats["recoveries"] == 6
    assert stats["relogins"] == 6


def test_errors_that_are_not_faults_are_not_retried(pool: SessionPool) -> None:
    from hsmkey.exceptions import HSMMechanismError

    key = pool.find_key(key_label="ec-key")
    with pytest.raises(HSMMechanismError, match="ES384"):
        key.sign("ES384", b"x")
    with pytest.raises(HSMMechanismError, match="RS256"):
        key.sign("RS256", b"x")
    assert pool.stats()["recoveries"] == 0
