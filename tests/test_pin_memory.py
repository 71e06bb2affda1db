"""What hsmkey remembers about PINs (issue 22, items 1-3; issue 21, item 6).

- Only the token's verdicts on a PIN are remembered (tests/test_reliability.py has the
  C_Login fault cases); here: they are remembered by the token's identity, whichever module
  file reaches the token.
- A login the token never checked a PIN for (another library of the process logged in first:
  ``CKR_USER_ALREADY_LOGGED_IN``) records no PIN, so it never locks the right PIN out.
- The empty PIN is refused before any PKCS#11 call.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faultmod import (  # noqa: F401  (faultmod_fixture: the `faultmod` fixture)
    FaultModule,
    Pkcs11Client,
    faultmod_fixture,
)
from helpers.faults import Faults, cryptoki
from helpers.softhsm import SoftHSM
from hsmkey import HSMPinError, SessionPool, _hsmkey, hsm_session


@pytest.fixture
def forget_pins() -> Iterator[None]:
    yield
    _hsmkey._forget_failed_logins()


def test_wrong_pin_is_tried_once_whichever_module_file_reaches_the_token(
    faultmod: FaultModule, softhsm: SoftHSM, tmp_path: Path, forget_pins: None
) -> None:
    """Issue 22.2: three module files (copies of the fault module, each a library of its
    own to the loader) in front of one SoftHSM2 instance: the same token, one C_Login."""
    copies = []
    for i in range(3):
        path = tmp_path / f"libvendor-{i}.so"
        shutil.copy2(faultmod.library, path)
        copies.append(FaultModule(path, faultmod.control, faultmod.counts_file, faultmod.target))
    for c in copies:
        c.reset_counts()
    pools = [SessionPool(c.path, softhsm.token_label, "000000") for c in copies]
    try:
        for p in pools:
            for _ in range(2):
                with pytest.raises(HSMPinError) as info:
                    p.check()
                assert info.value.rv == "CKR_PIN_INCORRECT"
        logins = [c.count("C_Login") for c in copies]
        assert sum(logins) == 1, logins
        # The right PIN still works, through any of them.
        with SessionPool(copies[2].path, softhsm.token_label, softhsm.pin) as good:
            good.check()
        assert sum(c.count("C_Login") for c in copies) == 2
    finally:
        for p in pools:
            p.close()


def test_another_librarys_login_records_no_pin(
    softhsm: SoftHSM, faults: Faults, forget_pins: None
) -> None:
    """Issue 22.3: another library of the process is logged in; the token answers every
    C_Login with CKR_USER_ALREADY_LOGGED_IN, checking no PIN. A pool with a wrong PIN rides
    on that login (hsmkey cannot tell without logging the other library out), and records
    nothing: a pool with the right PIN is not refused afterwards."""
    other = cryptoki(softhsm.module)
    handle = other.open_session(softhsm.slot_id)
    other.login(handle, softhsm.pin)
    try:
        wrong = SessionPool(softhsm.module, softhsm.token_label, "999999")
        wrong.check()
        with wrong.session() as s:
            s.find_key(key_label="ec-key").sign("ES256", b"riding on the other login")
        right = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
        right.check()
        with right.session() as s:
            s.find_key(key_label="ec-key").sign("ES256", b"right pin")
        with hsm_session(softhsm.module, softhsm.token_label, softhsm.pin) as s:
            s.find_key(key_label="ec-key").sign("ES256", b"one-shot")
        wrong.close()
        right.close()
    finally:
        other.logout(handle)
        other.close_session(handle)
    # Once the token checks PINs again, the wrong one is refused and the right one works.
    with pytest.raises(HSMPinError) as info:
        SessionPool(softhsm.module, softhsm.token_label, "999999").check()
    assert info.value.rv == "CKR_PIN_INCORRECT"
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as good:
        good.check()


def test_a_right_pin_joining_an_unverified_login_is_recorded_at_the_next_login(
    faultmod: FaultModule, softhsm: SoftHSM, forget_pins: None
) -> None:
    """After the other library logs out, the next login checks the pool's own PIN."""
    client = Pkcs11Client(faultmod.path)
    handle = client.open_session(softhsm.slot_id)
    client.login(handle, softhsm.pin)
    pool = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin)
    try:
        pool.check()
        key = pool.find_key(key_label="ec-key")
        key.sign("ES256", b"riding")
        client.logout(handle)  # the other library leaves: the pool logs in itself
        faultmod.reset_counts()
        key.sign("ES256", b"own login")
        assert faultmod.count("C_Login") == 1
        with pytest.raises(HSMPinError, match="different PIN"):
            SessionPool(faultmod.path, softhsm.token_label, "999999").check()
    finally:
        pool.close()
        client.close_all_sessions(softhsm.slot_id)


@pytest.mark.parametrize("pin", ["", b""], ids=["str", "bytes"])
def test_empty_pin_is_refused_before_any_call(
    faultmod: FaultModule, softhsm: SoftHSM, pin: str | bytes
) -> None:
    """Issue 21.6."""
    faultmod.reset_counts()
    with pytest.raises(ValueError, match="empty"):
        SessionPool(faultmod.path, softhsm.token_label, pin)
    with (
        pytest.raises(ValueError, match="empty"),
        hsm_session(faultmod.path, softhsm.token_label, pin),
    ):
        pass
    assert faultmod.counts() == {}
