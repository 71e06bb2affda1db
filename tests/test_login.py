"""Login: once per token per process, shared and reference-counted; PINs never retried."""

from __future__ import annotations

import pytest
from helpers import Faults, SoftHSM, Spy
from hsmkey import SessionPool, hsm_session
from hsmkey.exceptions import HSMModuleError, HSMPinError, HSMTokenNotFoundError


def test_wrong_pin_raises_and_is_remembered(softhsm: SoftHSM, faults: Faults) -> None:
    assert not faults.is_logged_in()
    pool = SessionPool(softhsm.module, softhsm.token_label, "000000")
    errors = []
    for _ in range(6):
        with pytest.raises(HSMPinError) as info, pool.session():
            pass
        errors.append(info.value)
    assert {e.rv for e in errors} == {"CKR_PIN_INCORRECT"}
    assert {e.function for e in errors} == {"C_Login"}
    assert len({str(e) for e in errors}) == 1
    assert not faults.is_logged_in()
    pool.close()
    # A new pool with the right PIN logs in.
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as good:
        good.check()


def test_wrong_pin_pool_logs_in_once_at_the_boundary(spy: Spy) -> None:
    run = spy(
        """
        import os
        from hsmkey import SessionPool, HSMJWK
        from hsmkey.exceptions import HSMPinError
        pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], "000000")
        uses = [
            lambda: pool.check(),
            lambda: pool.session().__enter__(),
            lambda: pool.open_session(),
            lambda: pool.find_key(key_label="ec-key"),
            lambda: pool.check(),
            lambda: pool.open_session(rw=True),
        ]
        for use in uses:
            try:
                use()
            except HSMPinError as e:
                assert e.rv == "CKR_PIN_INCORRECT", e.rv
            else:
                raise SystemExit("no HSMPinError")
        """
    )
    assert run.calls["C_Login"] == 1


def test_constructor_makes_no_pkcs11_call(spy: Spy) -> None:
    run = spy(
        """
        import os
        from hsmkey import SessionPool
        pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"])
        del pool
        """
    )
    assert sum(run.calls.values()) == 0, run.calls


def test_second_pool_with_same_pin_shares_the_login(softhsm: SoftHSM, faults: Faults) -> None:
    a = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    b = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    a.check()
    b.check()
    assert a.stats()["logins"] + b.stats()["logins"] == 1
    a.close()
    assert faults.is_logged_in(), "closing one pool must not log out the other"
    with b.session() as s:
        s.find_key(key_label="ec-key").sign("ES256", b"still logged in")
    b.close()
    assert not faults.is_logged_in(), "the last pool logs out"


def test_pool_with_other_pin_does_not_ride_on_the_login(softhsm: SoftHSM, faults: Faults) -> None:
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as good:
        good.check()
        bad = SessionPool(softhsm.module, softhsm.token_label, "999999")
        with pytest.raises(HSMPinError, match="different PIN"):
            bad.check()
        with pytest.raises(HSMPinError, match="different PIN"), bad.session():
            pass
        bad.close()
        assert faults.is_logged_in()
        with good.session() as s:
            s.find_key(key_label="ec-key").sign("ES256", b"x")


def test_hsm_session_signs_and_logs_out(softhsm: SoftHSM, faults: Faults) -> None:
    with hsm_session(softhsm.module, softhsm.token_label, softhsm.pin) as session:
        key = session.find_key(key_label="rsa-key")
        assert len(key.sign("RS256", b"payload")) == 256
        assert faults.is_logged_in()
    assert session.closed
    assert not faults.is_logged_in()


def test_hsm_session_keeps_a_live_pool_logged_in(softhsm: SoftHSM, faults: Faults) -> None:
    before = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    before.check()
    with hsm_session(softhsm.module, softhsm.token_label, softhsm.pin, rw=True) as session:
        assert session.rw
    assert faults.is_logged_in()
    after = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    for pool in (before, after):
        with pool.session() as s:
            s.find_key(key_label="ec-key").sign("ES256", b"x")
    assert before.stats()["relogins"] == 0
    before.close()
    after.close()
    assert not faults.is_logged_in()


def test_two_tokens_log_in_separately(softhsm: SoftHSM) -> None:
    with (
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as one,
        SessionPool(softhsm.module, softhsm.token2.label, softhsm.token2.pin) as two,
    ):
        k1 = one.find_key(key_label="ec-key")
        k2 = two.find_key(key_label="ec-key")
        assert k1.ec_point != k2.ec_point
        assert one.stats()["logins"] == 1 and two.stats()["logins"] == 1


def test_token_by_serial_and_slot_id(softhsm: SoftHSM) -> None:
    with SessionPool(softhsm.module, None, softhsm.pin, token_serial=softhsm.token.serial) as p:
        p.check()
    with SessionPool(softhsm.module, None, softhsm.pin, slot_id=softhsm.slot_id) as p:
        p.check()
    with (
        SessionPool(
            softhsm.module, softhsm.token_label, softhsm.pin, token_serial="no-such-serial"
        ) as p,
        pytest.raises(HSMTokenNotFoundError, match="no-such-serial"),
    ):
        p.check()


def test_unknown_label_lists_the_tokens_present(softhsm: SoftHSM) -> None:
    with SessionPool(softhsm.module, "missing-token", softhsm.pin) as p:
        with pytest.raises(HSMTokenNotFoundError) as info:
            p.check()
        assert softhsm.token_label in str(info.value)
        assert softhsm.token2.label in str(info.value)


def test_label_prefix_does_not_match(softhsm: SoftHSM) -> None:
    # "hsmkey-test" must not match "hsmkey-test-2" (pkcs11-tool matches prefixes; we do not).
    with (
        SessionPool(softhsm.module, softhsm.token_label[:-1], softhsm.pin) as p,
        pytest.raises(HSMTokenNotFoundError),
    ):
        p.check()


@pytest.mark.parametrize("path_kind", ["missing", "directory", "not-pkcs11", "not-a-library"])
def test_bad_module_paths(softhsm: SoftHSM, tmp_path: object, path_kind: str) -> None:
    import pathlib

    tmp = pathlib.Path(str(tmp_path))
    if path_kind == "missing":
        path, message = str(tmp / "nope.so"), "nope.so"
        with pytest.raises(HSMModuleError, match=message):
            SessionPool(path, "t", "1")
        return
    if path_kind == "directory":
        path, message = str(tmp), "directory"
        with pytest.raises(HSMModuleError, match=message):
            SessionPool(path, "t", "1")
        return
    if path_kind == "not-pkcs11":
        import ctypes.util

        libc = ctypes.util.find_library("c") or "libc.so.6"
        candidates = [
            f"/lib/x86_64-linux-gnu/{libc}",
            f"/usr/lib/x86_64-linux-gnu/{libc}",
            f"/lib64/{libc}",
        ]
        path = next((c for c in candidates if pathlib.Path(c).exists()), "")
        if not path:
            pytest.skip("libc not found at a known path")
        message = "not a PKCS#11 module"
    else:
        bogus = tmp / "bogus.so"
        bogus.write_bytes(b"this is not an ELF file")
        path, message = str(bogus), "cannot load"
    pool = SessionPool(path, "t", "1")
    with pytest.raises(HSMModuleError, match=message):
        pool.check()
    with pytest.raises(HSMModuleError, match=message), pool.session():
        pass
    pool.close()
