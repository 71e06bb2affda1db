"""The fault-injection PKCS#11 module itself (tests/faultmod), driven through raw ctypes calls:
forwarding, injected return codes, latency, token flags, a removed token, the PIN counter,
counting. hsmkey is not involved here (tests/test_reliability.py tests hsmkey with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from helpers.faultmod import (  # noqa: F401  (faultmod_fixture: the `faultmod` fixture)
    CKA_EC_POINT,
    CKF_TOKEN_PRESENT,
    CKF_USER_PIN_COUNT_LOW,
    CKF_USER_PIN_FINAL_TRY,
    CKF_USER_PIN_LOCKED,
    CKO_PRIVATE_KEY,
    CKO_PUBLIC_KEY,
    CKR,
    CKS_RO_PUBLIC_SESSION,
    CKS_RO_USER_FUNCTIONS,
    FaultModule,
    Pkcs11Client,
    faultmod_fixture,
)
from helpers.softhsm import SoftHSM

DEVICE_ERROR = CKR["CKR_DEVICE_ERROR"]


@pytest.fixture
def client(faultmod: FaultModule, softhsm: SoftHSM) -> Iterator[Pkcs11Client]:
    """A raw client of the fault module; afterwards every session of the slot is closed (and so
    the login ended), and a good login clears the CKF_USER_PIN_COUNT_LOW that SoftHSM2 sets
    (in the token file) after a wrong PIN."""
    c = Pkcs11Client(faultmod.path)
    faultmod.reset_counts()
    yield c
    faultmod.clear()
    c.close_all_sessions(softhsm.slot_id)
    h = c.open_session(softhsm.slot_id)
    c.login(h, softhsm.pin)
    c.close_all_sessions(softhsm.slot_id)


@pytest.fixture
def session(client: Pkcs11Client, softhsm: SoftHSM) -> int:
    """A logged-in read-only session on the test token, through the fault module."""
    h = client.open_session(softhsm.slot_id)
    client.login(h, softhsm.pin)
    return h


def ec_public_key(client: Pkcs11Client, h: int) -> ec.EllipticCurvePublicKey:
    pub = client.find(h, "ec-key", CKO_PUBLIC_KEY)
    point = client.attribute(h, pub, CKA_EC_POINT)
    if point[0] == 0x04 and len(point) == point[1] + 2:  # DER OCTET STRING around the point
        point = point[2:]
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def verify(public: ec.EllipticCurvePublicKey, digest: bytes, sig: bytes) -> None:
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    public.verify(
        utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    )


def digest(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def sign_rvs(client: Pkcs11Client, h: int, key: int, n: int) -> list[str]:
    """``n`` signatures (init + one C_Sign each): the name of C_Sign's code for each."""
    out = []
    for i in range(n):
        assert client.sign_init(h, key) == 0
        rv, _ = client.sign_call(h, digest(b"%d" % i))
        out.append("OK" if rv == 0 else str(rv))
    return out


# ---- forwarding and counting ----


def test_forwards_a_real_signature(
    client: Pkcs11Client, session: int, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    assert softhsm.slot_id in client.slot_list()
    assert client.token_info(softhsm.slot_id).label == softhsm.token_label
    assert client.session_state(session) == CKS_RO_USER_FUNCTIONS
    key = client.find(session, "ec-key", CKO_PRIVATE_KEY)
    data = digest(b"through the fault module")
    sig = client.sign(session, key, data)
    assert len(sig) == 64
    verify(ec_public_key(client, session), data, sig)
    counts = faultmod.counts()
    assert counts["C_Sign"] == 1
    assert counts["C_SignInit"] == 1
    assert counts["C_Login"] == 1
    assert counts["C_OpenSession"] == 1
    assert faultmod.injected("C_Sign") == 0
    assert faultmod.open_sessions() == 1


def test_counts_reset_and_dump(client: Pkcs11Client, session: int, faultmod: FaultModule) -> None:
    for _ in range(3):
        assert client.random(session) == 0
    assert faultmod.count("C_GenerateRandom") == 3
    dumped = faultmod.dump()
    assert dumped["pid"] == os.getpid()
    assert dumped["calls"]["C_GenerateRandom"] == 3
    assert len(dumped["calls"]) == 68
    assert dumped["injected"]["C_GenerateRandom"] == 0
    assert dumped["open_sessions"] == 1
    faultmod.reset_counts()
    assert faultmod.count("C_GenerateRandom") == 0
    # A `dump` line writes the counters when the module reads it.
    faultmod.counts_file.unlink()
    faultmod.add("dump")
    assert json.loads(faultmod.counts_file.read_text())["calls"]["C_GenerateRandom"] == 0
    with pytest.raises(ValueError, match="C_Bogus"):
        faultmod.count("C_Bogus")


def test_trace(client: Pkcs11Client, session: int, faultmod: FaultModule, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    line = faultmod.trace(log)
    faultmod.fail("C_GenerateRandom", DEVICE_ERROR, nth=2)
    client.random(session)
    client.random(session)
    faultmod.remove(line)
    client.random(session)
    lines = log.read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(f"C_GenerateRandom session={session} -> CKR_OK")
    assert lines[1].endswith(f"C_GenerateRandom session={session} -> CKR_DEVICE_ERROR (injected)")


# ---- injected return codes ----


def test_nth_call_fails_once(client: Pkcs11Client, session: int, faultmod: FaultModule) -> None:
    key = client.find(session, "ec-key", CKO_PRIVATE_KEY)
    faultmod.fail("C_Sign", "CKR_DEVICE_ERROR", nth=3)
    assert sign_rvs(client, session, key, 5) == ["OK", "OK", str(DEVICE_ERROR), "OK", "OK"]
    assert faultmod.injected("C_Sign") == 1
    assert faultmod.count("C_Sign") == 5


def test_every_nth_call_fails(client: Pkcs11Client, session: int, faultmod: FaultModule) -> None:
    key = client.find(session, "ec-key", CKO_PRIVATE_KEY)
    invalid = CKR["CKR_SESSION_HANDLE_INVALID"]
    faultmod.fail("C_Sign", "CKR_SESSION_HANDLE_INVALID", every=2)
    assert sign_rvs(client, session, key, 6) == ["OK", str(invalid)] * 3
    # Only the code lied: the session is still there and logged in.
    assert client.session_state(session) == CKS_RO_USER_FUNCTIONS


def test_count_fails_the_next_calls(
    client: Pkcs11Client, session: int, faultmod: FaultModule
) -> None:
    key = client.find(session, "ec-key", CKO_PRIVATE_KEY)
    faultmod.fail("C_Sign", DEVICE_ERROR, count=2)
    assert sign_rvs(client, session, key, 4) == [str(DEVICE_ERROR)] * 2 + ["OK"] * 2


def test_probability_is_reproducible_with_a_seed(
    client: Pkcs11Client, session: int, faultmod: FaultModule
) -> None:
    def pattern() -> list[bool]:
        faultmod.clear()
        faultmod.fail("C_GenerateRandom", "CKR_DEVICE_ERROR", prob=0.25, seed=42)
        return [client.random(session) == DEVICE_ERROR for _ in range(400)]

    first = pattern()
    assert 60 <= sum(first) <= 140, sum(first)
    assert pattern() == first  # re-armed with the same seed: the same sequence
    faultmod.clear()
    faultmod.fail("C_GenerateRandom", "CKR_DEVICE_ERROR", prob=0.25, seed=7)
    other = [client.random(session) == DEVICE_ERROR for _ in range(400)]
    assert other != first


def test_always_and_a_failed_login_does_not_log_in(
    client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    h = client.open_session(softhsm.slot_id)
    faultmod.fail("C_Login", "CKR_PIN_INCORRECT", always=True)
    for _ in range(3):
        assert (
            client.call("C_Login", h, 1, softhsm.pin.encode(), len(softhsm.pin))
            == CKR["CKR_PIN_INCORRECT"]
        )
    assert client.session_state(h) == CKS_RO_PUBLIC_SESSION
    assert faultmod.count("C_Login") == 3
    faultmod.clear()
    client.login(h, softhsm.pin)
    assert client.session_state(h) == CKS_RO_USER_FUNCTIONS


def test_rules_persist_across_edits_and_rearm_when_added_again(
    client: Pkcs11Client, session: int, faultmod: FaultModule
) -> None:
    rule = faultmod.fail("C_GenerateRandom", DEVICE_ERROR, nth=2)
    assert client.random(session) == 0
    faultmod.latency("C_GetInfo", 0)  # another edit of the file keeps the rule's counter
    assert client.random(session) == DEVICE_ERROR
    assert client.random(session) == 0
    faultmod.remove(rule)
    faultmod.fail("C_GenerateRandom", DEVICE_ERROR, nth=2)  # armed anew
    assert [client.random(session) for _ in range(3)] == [0, DEVICE_ERROR, 0]


def test_after_mode_ends_the_operation_before_mode_leaves_it_active(
    client: Pkcs11Client, session: int, faultmod: FaultModule
) -> None:
    key = client.find(session, "ec-key", CKO_PRIVATE_KEY)
    # Default for C_Sign: the token signs, the answer is lost, the operation is over.
    faultmod.fail("C_Sign", DEVICE_ERROR, nth=1)
    assert client.sign_init(session, key) == 0
    assert client.sign_call(session, b"\0" * 32)[0] == DEVICE_ERROR
    assert client.sign_init(session, key) == 0
    assert client.sign_call(session, b"\0" * 32)[0] == 0
    # Even when the failed call was only a size query (the real one left it active).
    faultmod.fail("C_Sign", DEVICE_ERROR, nth=1)
    assert client.sign_init(session, key) == 0
    assert client.sign_call(session, b"\0" * 32, size=None)[0] == DEVICE_ERROR
    assert client.sign_init(session, key) == 0
    assert client.sign_call(session, b"\0" * 32)[0] == 0
    # mode=before: the real module never saw C_Sign, so its operation is still active.
    faultmod.fail("C_Sign", DEVICE_ERROR, nth=1, mode="before")
    assert client.sign_init(session, key) == 0
    assert client.sign_call(session, b"\0" * 32)[0] == DEVICE_ERROR
    assert client.sign_init(session, key) == CKR["CKR_OPERATION_ACTIVE"]
    assert client.sign_call(session, b"\0" * 32)[0] == 0  # finishes it


def test_effects_make_the_fault_real(
    client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    slot = softhsm.slot_id
    a = client.open_session(slot)
    b = client.open_session(slot)
    client.login(a, softhsm.pin)
    faultmod.fail("C_GenerateRandom", "CKR_USER_NOT_LOGGED_IN", nth=1, effect="logout")
    assert client.random(a) == CKR["CKR_USER_NOT_LOGGED_IN"]
    assert client.session_state(b) == CKS_RO_PUBLIC_SESSION  # the whole process logged out
    faultmod.fail("C_GenerateRandom", "CKR_SESSION_HANDLE_INVALID", nth=1, effect="close_session")
    assert client.random(a) == CKR["CKR_SESSION_HANDLE_INVALID"]
    assert client.call("C_GetSessionInfo", a, None) == CKR["CKR_SESSION_HANDLE_INVALID"]
    assert client.random(b) == 0
    assert faultmod.open_sessions() == 1
    faultmod.fail("C_GenerateRandom", "CKR_SESSION_CLOSED", nth=1, effect="close_all")
    assert client.random(b) == CKR["CKR_SESSION_CLOSED"]
    assert client.random(b) == CKR["CKR_SESSION_HANDLE_INVALID"]
    assert faultmod.open_sessions() == 0


def test_open_session_failure_opens_nothing(
    client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    faultmod.fail("C_OpenSession", "CKR_DEVICE_ERROR", nth=1)
    faultmod.fail("C_OpenSession", "CKR_DEVICE_MEMORY", nth=2, mode="after")
    for name in ("CKR_DEVICE_ERROR", "CKR_DEVICE_MEMORY"):
        with pytest.raises(Exception, match=name):
            client.open_session(softhsm.slot_id)
    assert faultmod.open_sessions() == 0
    h = client.open_session(softhsm.slot_id)
    assert faultmod.open_sessions() == 1
    client.close_session(h)
    assert faultmod.open_sessions() == 0


def test_bad_directives_are_refused(faultmod: FaultModule) -> None:
    with pytest.raises(ValueError, match="C_Bogus"):
        faultmod.fail("C_Bogus", "CKR_DEVICE_ERROR", nth=1)
    with pytest.raises(ValueError, match="CKR_BOGUS"):
        faultmod.fail("C_Sign", "CKR_BOGUS", nth=1)
    with pytest.raises(ValueError, match="exactly one"):
        faultmod.fail("C_Sign", "CKR_DEVICE_ERROR", nth=1, every=2)
    with pytest.raises(ValueError, match="rejected"):
        faultmod.add("explode C_Sign")
    assert faultmod.lines == []  # a refused line is not kept
    assert faultmod.rv("CKR_PIN_LOCKED") == 0xA4
    assert faultmod.rv("CKR_TOKEN_RESOURCE_EXCEEDED") == 0x201  # any PKCS#11 3.2 code


# ---- latency ----


def test_latency(client: Pkcs11Client, session: int, faultmod: FaultModule) -> None:
    line = faultmod.latency("C_GenerateRandom", 0.05)
    start = time.perf_counter()
    assert client.random(session) == 0
    assert time.perf_counter() - start >= 0.05
    start = time.perf_counter()
    assert client.session_state(session) == CKS_RO_USER_FUNCTIONS  # other functions: no delay
    assert time.perf_counter() - start < 0.04
    faultmod.remove(line)
    start = time.perf_counter()
    assert client.random(session) == 0
    assert time.perf_counter() - start < 0.04


# ---- token flags and the PIN ----


def test_token_flags(client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM) -> None:
    slot = softhsm.slot_id
    real = client.token_info(slot).flags
    assert real & (CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED) == 0
    faultmod.flags("+CKF_USER_PIN_FINAL_TRY", "+CKF_USER_PIN_COUNT_LOW")
    assert client.token_info(slot).flags == real | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW
    faultmod.flags("-CKF_USER_PIN_COUNT_LOW")
    assert client.token_info(slot).flags == real | CKF_USER_PIN_FINAL_TRY
    # A final try still reaches the token.
    h = client.open_session(slot)
    client.login(h, softhsm.pin)
    client.logout(h)
    faultmod.clear()
    assert client.token_info(slot).flags == real


def test_locked_pin_refuses_logins(
    client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    h = client.open_session(softhsm.slot_id)
    faultmod.flags("+CKF_USER_PIN_LOCKED")
    assert client.token_info(softhsm.slot_id).flags & CKF_USER_PIN_LOCKED
    pin = softhsm.pin.encode()
    assert client.call("C_Login", h, 1, pin, len(pin)) == CKR["CKR_PIN_LOCKED"]
    assert client.session_state(h) == CKS_RO_PUBLIC_SESSION
    assert faultmod.count("C_Login") == 1


def test_pin_counter(client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM) -> None:
    slot = softhsm.slot_id
    h = client.open_session(slot)
    faultmod.pin_retries(3)
    wrong, right = b"000000", softhsm.pin.encode()
    pin_flags = CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED
    assert client.token_info(slot).flags & pin_flags == 0
    assert client.call("C_Login", h, 1, wrong, 6) == CKR["CKR_PIN_INCORRECT"]
    # (SoftHSM2 itself sets COUNT_LOW after a wrong PIN, too.)
    assert client.token_info(slot).flags & pin_flags == CKF_USER_PIN_COUNT_LOW
    # A good PIN resets the counter.
    assert client.call("C_Login", h, 1, right, len(right)) == 0
    client.logout(h)
    assert client.token_info(slot).flags & pin_flags == 0
    assert client.call("C_Login", h, 1, wrong, 6) == CKR["CKR_PIN_INCORRECT"]
    assert client.call("C_Login", h, 1, wrong, 6) == CKR["CKR_PIN_INCORRECT"]
    assert client.token_info(slot).flags & pin_flags == (
        CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY
    )
    assert client.call("C_Login", h, 1, wrong, 6) == CKR["CKR_PIN_INCORRECT"]
    flags = client.token_info(slot).flags
    assert flags & CKF_USER_PIN_LOCKED
    assert not flags & CKF_USER_PIN_FINAL_TRY
    # Locked: even the right PIN is refused, without reaching the token.
    assert client.call("C_Login", h, 1, right, len(right)) == CKR["CKR_PIN_LOCKED"]
    assert client.session_state(h) == CKS_RO_PUBLIC_SESSION


# ---- a removed token ----


def test_remove_and_restore_token(
    client: Pkcs11Client, session: int, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    slot = softhsm.slot_id
    other = softhsm.token2.slot_id
    key = client.find(session, "ec-key", CKO_PRIVATE_KEY)
    faultmod.remove_token(label=softhsm.token_label)

    assert slot not in client.slot_list(token_present=True)
    assert other in client.slot_list(token_present=True)
    assert slot in client.slot_list(token_present=False)
    assert not client.slot_flags(slot) & CKF_TOKEN_PRESENT
    assert client.slot_flags(other) & CKF_TOKEN_PRESENT
    with pytest.raises(Exception, match="CKR_TOKEN_NOT_PRESENT"):
        client.token_info(slot)
    with pytest.raises(Exception, match="CKR_TOKEN_NOT_PRESENT"):
        client.open_session(slot)
    assert client.call("C_GetSessionInfo", session, None) == CKR["CKR_DEVICE_REMOVED"]
    assert client.sign_init(session, key) == CKR["CKR_DEVICE_REMOVED"]
    assert faultmod.open_sessions() == 0  # they died with the token
    h2 = client.open_session(other)  # the other token is unaffected
    client.close_session(h2)

    faultmod.restore_token()
    assert slot in client.slot_list(token_present=True)
    assert client.token_info(slot).label == softhsm.token_label
    # The old session really is gone, and so is the login.
    assert client.call("C_GetSessionInfo", session, None) == CKR["CKR_SESSION_HANDLE_INVALID"]
    h = client.open_session(slot)
    assert client.session_state(h) == CKS_RO_PUBLIC_SESSION
    client.login(h, softhsm.pin)
    key = client.find(h, "ec-key", CKO_PRIVATE_KEY)
    data = digest(b"back")
    verify(ec_public_key(client, h), data, client.sign(h, key, data))


def test_remove_every_token(client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM) -> None:
    assert client.slot_list()
    faultmod.remove_token()
    assert client.slot_list() == []
    faultmod.restore_token()
    assert softhsm.slot_id in client.slot_list()


# ---- threads and processes ----


def test_concurrent_calls_are_counted_and_failed_exactly(
    client: Pkcs11Client, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    threads, calls = 8, 300
    sessions = [client.open_session(softhsm.slot_id) for _ in range(threads)]
    faultmod.fail("C_GenerateRandom", DEVICE_ERROR, every=10)
    faultmod.fail("C_GetSessionInfo", "CKR_DEVICE_ERROR", nth=1000)
    failures = [0] * threads
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        for _ in range(calls):
            if client.random(sessions[i]) == DEVICE_ERROR:
                failures[i] += 1
            client.call("C_GetSessionInfo", sessions[i], None)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
        assert not t.is_alive()
    total = threads * calls
    assert faultmod.count("C_GenerateRandom") == total
    assert sum(failures) == total // 10
    assert faultmod.injected("C_GenerateRandom") == total // 10
    assert faultmod.injected("C_GetSessionInfo") == 1


def test_forked_child_starts_with_fresh_state(
    client: Pkcs11Client, session: int, faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    """The child gets its own counters and state (a lock held by a parent's thread cannot
    block it); the control file still applies."""
    assert faultmod.count("C_Login") == 1
    faultmod.fail("C_GenerateRandom", DEVICE_ERROR, always=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never raise
        code = 1
        try:
            ok = [
                faultmod.count("C_Login") == 0,
                client.call("C_Finalize", None) == 0,  # the parent's state is not ours
                faultmod.count("C_Finalize") == 1,
                faultmod.open_sessions() == 0,
            ]
            Pkcs11Client(faultmod.path)
            h = client.open_session(softhsm.slot_id)
            ok += [client.random(h) == DEVICE_ERROR, faultmod.open_sessions() == 1]
            code = 0 if all(ok) else 10 + ok.index(False)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert faultmod.count("C_Finalize") == 0  # the parent's counters are its own
    assert client.random(session) == DEVICE_ERROR


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tests_dir = Path(__file__).resolve().parent
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": str(tests_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_counts_are_written_at_finalize_in_another_process(
    faultmod: FaultModule, softhsm: SoftHSM, tmp_path: Path
) -> None:
    counts = tmp_path / "counts.json"
    proc = run_python(
        f"""
        from helpers.faultmod import Pkcs11Client
        c = Pkcs11Client({faultmod.path!r})
        h = c.open_session({softhsm.slot_id})
        c.login(h, {softhsm.pin!r})
        c.close_session(h)
        assert c.finalize() == 0
        """,
        {"HSMKEY_FAULT_COUNTS": str(counts), "HSMKEY_FAULT_CONTROL": ""},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(counts.read_text())
    assert data["pid"] != os.getpid()
    assert data["calls"]["C_Login"] == 1
    assert data["calls"]["C_Finalize"] == 1
    assert data["open_sessions"] == 0


@pytest.mark.parametrize("target", ["missing", "itself"])
def test_a_bad_target_fails_cleanly(faultmod: FaultModule, tmp_path: Path, target: str) -> None:
    path = str(tmp_path / "nope.so") if target == "missing" else faultmod.path
    proc = run_python(
        f"""
        from helpers.faultmod import Pkcs11Client, CallError
        try:
            Pkcs11Client({faultmod.path!r})
        except CallError as e:
            print(e.function, e.rv_name)
        """,
        {"HSMKEY_FAULT_TARGET": path},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "C_GetFunctionList CKR_GENERAL_ERROR"
    assert "hsmkey-faultmod:" in proc.stderr


def test_latency_from_the_environment(faultmod: FaultModule, softhsm: SoftHSM) -> None:
    """``HSMKEY_FAULT_LATENCY``: a per-function delay set before the module loads, the way a
    benchmark simulates a network HSM; a bad value is reported and ignored."""
    code = f"""
        import time
        from helpers.faultmod import Pkcs11Client
        c = Pkcs11Client({faultmod.path!r})
        h = c.open_session({softhsm.slot_id})
        start = time.perf_counter()
        assert c.random(h) == 0
        print(f"{{time.perf_counter() - start:.4f}}")
        c.close_session(h)
        """
    proc = run_python(
        code, {"HSMKEY_FAULT_LATENCY": "C_GenerateRandom=60ms,*=1us", "HSMKEY_FAULT_CONTROL": ""}
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) >= 0.06
    assert "hsmkey-faultmod" not in proc.stderr
    proc = run_python(code, {"HSMKEY_FAULT_LATENCY": "C_Bogus=1ms", "HSMKEY_FAULT_CONTROL": ""})
    assert proc.returncode == 0, proc.stderr
    assert "HSMKEY_FAULT_LATENCY" in proc.stderr and "C_Bogus" in proc.stderr
