"""PoolGroup: one key on several HSMs (simulated network HSMs: fault module copies, each in
front of its own SoftHSM2 token, see helpers/cluster.py)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time

import hsmkey
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from helpers.cluster import (  # noqa: F401
    EC_KEY,
    PIN,
    RSA_KEY,
    Cluster,
    cluster_fixture,
    group_fixture,
)
from hsmkey import HSMJWK, PoolGroup, jwks
from hsmkey.exceptions import (
    HSMKeyNotFoundError,
    HSMMechanismError,
    HSMPinError,
    HSMUnavailableError,
)
from hsmkey.group import classify
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws

OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
# Keys of the exclusion tests (a token refuses a second copy of a key it holds already).
ROTATING_KEY = ec.generate_private_key(ec.SECP256R1())
HALF_KEY = ec.generate_private_key(ec.SECP256R1())


def verify_es256(
    signature: bytes, data: bytes, public: ec.EllipticCurvePublicKey | None = None
) -> None:
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    (public or EC_KEY.public_key()).verify(
        encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256())
    )


def member(group: PoolGroup, name: str) -> dict[str, object]:
    return next(m for m in group.stats()["members"] if m["name"] == name)


def signatures(group: PoolGroup) -> dict[str, int]:
    """Signatures each member made for the group (its own key proofs not counted)."""
    return {
        m["name"]: sum(
            sum(h["counts"])
            for h in m["durations"]
            if h["operation"] in ("sign", "sign_async", "sign_raw")
        )
        for m in group.stats()["members"]
    }


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# -- everything that takes a pool takes a group ---------------------------------------------


def test_hsmjwk_from_group_signs_on_every_member(cluster: Cluster, group: PoolGroup) -> None:
    key = HSMJWK.from_hsm(group, key_label="sign-ec")
    assert isinstance(key.hsm_key, hsmkey.GroupKey)
    public = jwcrypto_jwk.JWK.from_pyca(EC_KEY.public_key())
    assert key.thumbprint() == public.thumbprint()
    for _ in range(6):  # each member finds (and proves) the key once
        key.hsm_key.sign("ES256", b"warm")
    for m in cluster.members:
        m.fault.reset_counts()

    def work() -> None:
        for _ in range(30):
            token = jws.JWS(b"payload")
            token.add_signature(key, alg="ES256", protected={"alg": "ES256"})
            check = jws.JWS()
            check.deserialize(token.serialize(compact=True))
            check.verify(public)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    signs = [m.signs() for m in cluster.members]
    assert sum(signs) == 180
    assert all(n > 10 for n in signs), signs  # spread over the three
    stats = group.stats()
    assert stats["up"] == 3 and stats["down"] == 0
    assert all(m["failures"] == 0 for m in stats["members"])


def test_find_key_interface_and_cryptography_objects(group: PoolGroup) -> None:
    key = group.find_key(key_label="sign-ec")
    assert group.find_key(key_label="sign-ec") is key  # cached per group
    assert key.label == "sign-ec" and key.id == b"\x01"
    assert key.key_type == "EC" and key.curve == "P-256" and key.key_size == 256
    sig = key.sign("ES256", b"data")
    verify_es256(sig, b"data")
    for s in key.sign_many("ES256", [b"a", b"b"]):
        assert len(s) == 64
    der = key.sign_raw("ECDSA", b"data", hash="sha256", der=True)
    EC_KEY.public_key().verify(der, b"data", ec.ECDSA(hashes.SHA256()))
    private = hsmkey.keys.private_key_for(key)  # type: ignore[arg-type]
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    peer = ec.generate_private_key(ec.SECP256R1())
    assert private.exchange(ec.ECDH(), peer.public_key()) == peer.exchange(
        ec.ECDH(), EC_KEY.public_key()
    )
    # PyJWT takes the cryptography key object.
    token = jwt.encode({"sub": "x"}, private, algorithm="ES256")
    assert jwt.decode(token, EC_KEY.public_key(), algorithms=["ES256"]) == {"sub": "x"}


def test_rsa_decrypt_through_group(group: PoolGroup) -> None:
    key = HSMJWK.from_hsm(group, key_label="sign-rsa")
    ciphertext = RSA_KEY.public_key().encrypt(
        b"secret",
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    plain = key.rsa_private_key.decrypt(
        ciphertext,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    assert plain == b"secret"
    jwt_token = key.make_jwt({"a": 1}, "RS256")
    assert jwt.decode(jwt_token, RSA_KEY.public_key(), algorithms=["RS256"]) == {"a": 1}


def test_jwks_and_kid_and_adapters(group: PoolGroup) -> None:
    published = jwks(group)["keys"]
    kids = [k["kid"] for k in published]
    assert len(kids) == len(set(kids)) == 2  # each key once, not once per member
    ec_kid = jwcrypto_jwk.JWK.from_pyca(EC_KEY.public_key()).thumbprint()
    assert ec_kid in kids
    by_kid = HSMJWK.from_hsm(group, kid=ec_kid)
    assert by_kid.thumbprint() == ec_kid
    from hsmkey.adapters import joserfc_key

    signing = joserfc_key(by_kid)
    from joserfc import jwt as joserfc_jwt

    token = joserfc_jwt.encode({"alg": "ES256"}, {"sub": "y"}, signing)
    assert jwt.decode(token, EC_KEY.public_key(), algorithms=["ES256"]) == {"sub": "y"}


def test_session_blocks_sync_and_async(group: PoolGroup) -> None:
    with group.session() as session:
        key = HSMJWK.from_hsm(session, key_label="sign-ec")
        verify_es256(key.hsm_key.sign("ES256", b"x"), b"x")

    async def main() -> None:
        async with group.session() as session:
            k = session.find_key(key_label="sign-ec")
            verify_es256(await k.sign_async("ES256", b"y"), b"y")
        async with group as g:
            assert g is group

    asyncio.run(main())
    assert group.closed  # async with closes the group, like a pool


def test_with_closes_and_check(cluster: Cluster) -> None:
    with cluster.group() as group:
        group.check()
        assert group.stats()["up"] == 3
    assert group.closed
    assert all(p.closed for p in group.pools)
    with pytest.raises(hsmkey.HSMPoolClosedError):
        group.find_key(key_label="sign-ec")


def test_from_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSM_GROUP", "a, b")
    monkeypatch.setenv("HSM_TOKEN", cluster[0].label)
    monkeypatch.setenv("HSM_PIN", PIN)
    monkeypatch.setenv("HSM_A_MODULE", cluster[0].path)
    monkeypatch.setenv("HSM_B_MODULE", cluster[1].path)
    monkeypatch.delenv("HSM_MODULE", raising=False)
    with PoolGroup.from_env(max_sessions=2) as group:
        assert [m["name"] for m in group.stats()["members"]] == ["a", "b"]
        assert group.pools[0].max_sessions == 2
        verify_es256(group.find_key(key_label="sign-ec").sign("ES256", b"e"), b"e")
    monkeypatch.delenv("HSM_B_MODULE")
    with pytest.raises(ValueError, match="HSM_B_MODULE"):
        PoolGroup.from_env()
    monkeypatch.delenv("HSM_GROUP")
    with pytest.raises(ValueError, match="HSM_GROUP"):
        PoolGroup.from_env()


def test_bad_arguments(cluster: Cluster) -> None:
    with pytest.raises(ValueError):
        PoolGroup([])
    with pytest.raises(TypeError):
        PoolGroup(["not a pool"])  # type: ignore[list-item]
    pool = cluster[0].pool()
    with pytest.raises(ValueError):
        PoolGroup([pool, pool])
    with pytest.raises(ValueError):
        PoolGroup([pool], names=["a", "b"])
    with pytest.raises(ValueError):
        PoolGroup([pool], probe_interval=0)
    with pytest.raises(TypeError):
        PoolGroup([pool]).find_key()
    pool.close()


# -- spread -------------------------------------------------------------------------------


def test_spread_goes_to_the_fewest_in_flight(group: PoolGroup) -> None:
    blocks = [group.session() for _ in range(6)]
    for b in blocks:
        b.__enter__()
    try:
        in_use = {m["name"]: m["in_use"] for m in group.stats()["members"]}
        assert in_use == {"hsm-a": 2, "hsm-b": 2, "hsm-c": 2}
    finally:
        for b in blocks:
            b.__exit__(None, None, None)
    assert all(m["in_use"] == 0 for m in group.stats()["members"])


def test_spread_in_proportion_to_speed(cluster: Cluster, group: PoolGroup) -> None:
    cluster[0].latency(0.02)  # a slow member: 20 ms per call
    cluster[1].latency(0.002)
    cluster[2].latency(0.002)
    key = group.find_key(key_label="sign-ec")
    for m in cluster.members:
        m.fault.reset_counts()
    deadline = time.monotonic() + 1.0

    def work() -> None:
        while time.monotonic() < deadline:
            key.sign("ES256", b"p")

    threads = [threading.Thread(target=work) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slow, fast1, fast2 = (m.signs() for m in cluster.members)
    assert fast1 > 3 * slow and fast2 > 3 * slow, (slow, fast1, fast2)


def test_async_from_many_tasks(cluster: Cluster, group: PoolGroup) -> None:
    for m in cluster.members:
        m.latency(0.001)
    key = HSMJWK.from_hsm(group, key_label="sign-ec")
    for m in cluster.members:
        m.fault.reset_counts()

    async def main() -> list[str]:
        return await asyncio.gather(*(key.make_jwt_async({"n": i}) for i in range(96)))

    tokens = asyncio.run(main())
    for i, token in enumerate(tokens):
        assert jwt.decode(token, EC_KEY.public_key(), algorithms=["ES256"]) == {"n": i}
    signs = list(signatures(group).values())
    assert sum(signs) == 96 and all(n >= 10 for n in signs), signs


# -- failover ------------------------------------------------------------------------------


def test_member_goes_away_and_returns_under_load(cluster: Cluster, group: PoolGroup) -> None:
    for m in cluster.members:
        m.latency(0.001)
    key = group.find_key(key_label="sign-ec")
    errors: list[BaseException] = []
    done = [0]
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                verify_es256(key.sign("ES256", b"load"), b"load")
                done[0] += 1
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        cluster[1].unreachable()
        wait_for(lambda: member(group, "hsm-b")["state"] == "down")
        time.sleep(0.3)
        during = cluster[1].signs()
        time.sleep(0.2)
        assert cluster[1].signs() == during  # nothing reaches it while it is down
        cluster[1].reachable()
        wait_for(lambda: member(group, "hsm-b")["state"] == "up")
        before = cluster[1].signs()
        time.sleep(0.3)
        assert cluster[1].signs() > before  # taken back into use
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    stats = member(group, "hsm-b")
    assert stats["downs"] == 1 and stats["probes"] >= 1
    assert "CKR_DEVICE_ERROR" in str(stats["last_error"])
    assert group.stats()["failovers"] >= 1
    assert done[0] > 100


def test_async_failover(cluster: Cluster, group: PoolGroup) -> None:
    key = group.find_key(key_label="sign-ec")
    key.sign("ES256", b"warm")
    cluster[0].unreachable()

    async def main() -> list[bytes]:
        return await asyncio.gather(*(key.sign_async("ES256", b"a") for _ in range(30)))

    for sig in asyncio.run(main()):
        verify_es256(sig, b"a")
    assert member(group, "hsm-a")["state"] == "down"


def test_all_members_down_fails_fast_then_recovers(cluster: Cluster, group: PoolGroup) -> None:
    key = group.find_key(key_label="sign-ec")
    key.sign("ES256", b"warm")
    for m in cluster.members:
        m.unreachable()
    with pytest.raises(HSMUnavailableError, match="no member of the PoolGroup"):
        key.sign("ES256", b"x")
    assert group.stats()["down"] == 3
    t0 = time.perf_counter()
    with pytest.raises(HSMUnavailableError) as info:
        key.sign("ES256", b"x")
    assert time.perf_counter() - t0 < 0.05  # fast: no member is even asked
    assert "hsm-a: down since" in str(info.value)
    assert isinstance(info.value, hsmkey.HSMSessionError)
    cluster[2].reachable()
    t0 = time.monotonic()

    def works() -> bool:
        try:
            verify_es256(key.sign("ES256", b"back"), b"back")
            return True
        except HSMUnavailableError:
            return False

    wait_for(works, timeout=5.0)
    assert time.monotonic() - t0 < 2.0


def test_member_holding_a_different_key_is_excluded(
    cluster: Cluster, group: PoolGroup, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.import_key(ROTATING_KEY, "rotating", b"\x10", members=[0, 1])
    cluster.import_key(OTHER_EC_KEY, "rotating", b"\x10", members=[2])
    try:
        caplog.set_level(logging.WARNING, logger="hsmkey.group")
        key = group.find_key(key_label="rotating")
        for _ in range(40):
            # never the other key
            verify_es256(key.sign("ES256", b"r"), b"r", ROTATING_KEY.public_key())
        assert signatures(group)["hsm-c"] == 0
        c = member(group, "hsm-c")
        # Up, but the one key the group knows is another key there.
        assert c["state"] == "excluded"
        assert c["excluded"] == [
            {"label": "rotating", "id": "10", "reason": "different key", "since": c["since"]}
        ]
        group.find_key(key_label="sign-ec").sign("ES256", b"c")  # a key c holds
        assert member(group, "hsm-c")["state"] == "up"
        states = {k["label"]: k["members"] for k in group.stats()["keys"]}
        assert states["rotating"] == {"hsm-a": "ok", "hsm-b": "ok", "hsm-c": "different key"}
        warnings = [r for r in caplog.records if "rotating" in r.getMessage()]
        assert len(warnings) == 1 and "hsm-c" in warnings[0].getMessage()
        # With a and b down, the key is unavailable rather than signed by the other key.
        cluster[0].unreachable()
        cluster[1].unreachable()
        with pytest.raises(HSMUnavailableError, match="hsm-c: key different key"):
            for _ in range(5):
                key.sign("ES256", b"r")
    finally:
        cluster.reset()
        for m in cluster.members:
            m.delete_key("rotating", b"\x10")


def test_member_missing_the_key_is_excluded(cluster: Cluster, group: PoolGroup) -> None:
    cluster.import_key(HALF_KEY, "half-done", b"\x11", members=[1])
    try:
        key = group.find_key(key_label="half-done")  # found on b, the only holder
        for _ in range(20):
            verify_es256(key.sign("ES256", b"h"), b"h", HALF_KEY.public_key())
        assert signatures(group) == {"hsm-a": 0, "hsm-b": 20, "hsm-c": 0}
        states = {k["label"]: k["members"] for k in group.stats()["keys"]}
        assert states["half-done"]["hsm-b"] == "ok"
        assert {states["half-done"]["hsm-a"], states["half-done"]["hsm-c"]} <= {
            "missing",
            "unchecked",
        }
        # The replication completes; refresh() looks again at once.
        cluster.import_key(HALF_KEY, "half-done", b"\x11", members=[0, 2])
        group.refresh()
        key2 = group.find_key(key_label="half-done")
        for m in cluster.members:
            m.fault.reset_counts()
        for _ in range(30):
            key2.sign("ES256", b"h")
        assert all(m.signs() > 0 for m in cluster.members)
    finally:
        for m in cluster.members:
            m.delete_key("half-done", b"\x11")


def test_key_missing_everywhere(group: PoolGroup) -> None:
    with pytest.raises(HSMKeyNotFoundError):
        group.find_key(key_label="no-such-key")
    assert group.stats()["up"] == 3


def test_deterministic_errors_are_not_failed_over(cluster: Cluster, group: PoolGroup) -> None:
    key = group.find_key(key_label="sign-ec")
    with pytest.raises(HSMMechanismError):
        key.sign("RS256", b"x")
    with pytest.raises((TypeError, ValueError)):
        key.sign("ES256", "not bytes")  # type: ignore[arg-type]
    stats = group.stats()
    assert stats["up"] == 3 and stats["failovers"] == 0


def test_pin_error_is_not_retried_elsewhere(cluster: Cluster) -> None:
    pools = [cluster[0].pool(), hsmkey.SessionPool(cluster[1].path, cluster[1].label, "000000")]
    with PoolGroup(pools, names=["good", "bad-pin"]) as group:
        with pytest.raises(HSMPinError):
            group.check()
        assert member(group, "bad-pin")["state"] == "down"
        logins = cluster[1].fault.count("C_Login")
        for _ in range(10):
            verify_es256(group.find_key(key_label="sign-ec").sign("ES256", b"p"), b"p")
        assert cluster[1].fault.count("C_Login") == logins  # the PIN is never tried again


def test_classify() -> None:
    from hsmkey import exceptions as e

    assert classify(e.HSMPinError("x", "CKR_PIN_INCORRECT")) == "pin"
    assert classify(e.HSMSessionError("x", "CKR_DEVICE_ERROR")) == "unavailable"
    assert classify(e.HSMError("x", "CKR_DEVICE_ERROR")) == "unavailable"
    assert classify(e.HSMError("x", "CKR_DATA_LEN_RANGE")) == "fatal"
    assert classify(e.HSMMechanismError("x", "CKR_MECHANISM_INVALID")) == "fatal"
    assert classify(e.HSMPoolExhaustedError("x")) == "busy"
    assert classify(e.HSMKeyNotFoundError("x")) == "key"
    assert classify(ValueError("x")) == "fatal"


def test_a_warm_group_signature_costs_two_calls(cluster: Cluster, group: PoolGroup) -> None:
    key = group.find_key(key_label="sign-ec")
    for _ in range(6):
        key.sign("ES256", b"warm")  # every member has a session and the key's handle
    for m in cluster.members:
        m.fault.reset_counts()
    for _ in range(30):
        key.sign("ES256", b"counted")
    calls: dict[str, int] = {}
    for m in cluster.members:
        for function, n in m.fault.counts().items():
            calls[function] = calls.get(function, 0) + n
    assert calls == {"C_SignInit": 30, "C_Sign": 30}


def test_the_unreachable_switch(cluster: Cluster) -> None:
    """The fault module's switch: calls fail while it is on; the module's sessions (and the
    login) are gone when it comes back; C_GetInfo is answered throughout."""
    from helpers.faultmod import CallError, Pkcs11Client

    m = cluster[0]
    client = Pkcs11Client(m.path)
    slot = client.slot_list()[0]
    handle = client.open_session(slot)
    client.login(handle, PIN)
    m.unreachable()
    with pytest.raises(CallError) as info:
        client.open_session(slot)
    assert info.value.rv_name == "CKR_DEVICE_ERROR"
    info_buffer = ctypes.create_string_buffer(256)  # room for a CK_INFO
    assert client.call("C_GetInfo", info_buffer) == 0
    m.reachable()
    with pytest.raises(CallError) as info:
        client.session_state(handle)
    assert info.value.rv_name == "CKR_SESSION_HANDLE_INVALID"
    fresh = client.open_session(slot)
    assert client.session_state(fresh) == 0  # CKS_RO_PUBLIC_SESSION: nobody logged in
    client.close_session(fresh)
