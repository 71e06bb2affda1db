"""A token deleted under a warm pool, and created again (issue 21, item 2).

SoftHSM2 keeps a deleted token's slot and answers ``C_GetTokenInfo`` on it with
``CKR_GENERAL_ERROR``; its sessions on that token keep answering, finding nothing. It shows
tokens created (or deleted) since only after ``C_Finalize`` + ``C_Initialize``. hsmkey must:
skip the unreadable slot when it looks for tokens (pools on other tokens, new ones included,
and ``hsm_session`` keep working); make the pool of the deleted token say so
(``HSMTokenNotFoundError`` naming it, from ``check()`` too, never ``list_keys() == []``);
bind that pool to a token with its label when there is one again; and never let a key object
of the old token sign with a key of the new one.

The tests load a private copy of libsofthsm2.so: a SoftHSM2 instance of their own, whose
re-initializations and deleted tokens never reach the other tests of the session.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.softhsm import SoftHSM, init_token
from hsmkey import (
    HSMKeyChangedError,
    HSMTokenNotFoundError,
    SessionPool,
    hsm_session,
)

VICTIM = "victim"
PIN = "135790"
SO_PIN = "97531"


@pytest.fixture
def library(softhsm: SoftHSM, tmp_path: Path) -> str:
    if softhsm.module != softhsm.library:
        pytest.skip("deletes a token of the local SoftHSM2")
    path = tmp_path / "libsofthsm2-token-loss.so"
    shutil.copy2(softhsm.library, path)
    return str(path)


def delete_victim(softhsm: SoftHSM) -> None:
    subprocess.run(
        ["softhsm2-util", "--delete-token", "--token", VICTIM],
        env={"SOFTHSM2_CONF": str(softhsm.conf_path), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )


@pytest.fixture
def victim(softhsm: SoftHSM, library: str) -> Iterator[None]:
    init_token(softhsm.conf_path, VICTIM, SO_PIN, PIN)
    yield
    with contextlib.suppress(subprocess.CalledProcessError):  # deleted by the test
        delete_victim(softhsm)


def make_key(pool: SessionPool, label: str = "k") -> None:
    with pool.session(rw=True) as s:
        s.generate_key_pair("EC", label=label, curve="P-256")


def test_token_deleted_under_a_warm_pool_and_created_again(
    softhsm: SoftHSM, library: str, victim: None
) -> None:
    with SessionPool(library, VICTIM, PIN) as setup:
        make_key(setup)
    pool = SessionPool(library, VICTIM, PIN)
    other = SessionPool(library, softhsm.token_label, softhsm.pin)
    try:
        key = pool.find_key(key_label="k")
        key.sign("ES256", b"before")
        assert [k.label for k in pool.list_keys()] == ["k"]
        other_key = other.find_key(key_label="ec-key")
        other_key.sign("ES256", b"before")

        delete_victim(softhsm)

        # Everything on other tokens keeps working, new pools and hsm_session included.
        other_key.sign("ES256", b"other token, warm pool")
        with SessionPool(library, softhsm.token_label, softhsm.pin) as fresh:
            fresh.check()
            fresh.find_key(key_label="ec-key").sign("ES256", b"other token, new pool")
        with hsm_session(library, softhsm.token2.label, softhsm.token2.pin) as s:
            assert s.list_keys()

        # The pool of the deleted token says so, naming it, whatever it is asked.
        for call in (pool.check, pool.list_keys, lambda: key.sign("ES256", b"x")):
            with pytest.raises(HSMTokenNotFoundError, match=VICTIM):
                call()
        with pytest.raises(HSMTokenNotFoundError, match=VICTIM), pool.session():
            pass
        other_key.sign("ES256", b"other token, still")

        # A token with the label is there again: the pool binds to it on its next use.
        init_token(softhsm.conf_path, VICTIM, SO_PIN, PIN)
        time.sleep(1.1)  # rescans of the module are at most one a second
        pool.check()
        assert pool.list_keys() == []  # the new token's (empty) key list, not the old one
        make_key(pool)
        new_key = pool.find_key(key_label="k")
        new_key.sign("ES256", b"the new token's key")
        assert new_key.ec_point != key.ec_point
        # The old token's key object never signs with another token's key.
        with pytest.raises(HSMKeyChangedError):
            key.sign("ES256", b"old key object")

        # The other pool healed after the module was re-initialized.
        other_key.sign("ES256", b"other token, after the rescan")
        other.check()
    finally:
        pool.close()
        other.close()


def test_a_new_pool_finds_a_token_created_after_a_deletion(
    softhsm: SoftHSM, library: str, victim: None
) -> None:
    """A module that showed a deleted token looks again for a token it does not show."""
    with SessionPool(library, VICTIM, PIN) as p:
        p.check()
    delete_victim(softhsm)
    with pytest.raises(HSMTokenNotFoundError, match=VICTIM):
        SessionPool(library, VICTIM, PIN).check()
    init_token(softhsm.conf_path, VICTIM, SO_PIN, PIN)
    time.sleep(1.1)
    with SessionPool(library, VICTIM, PIN) as p:
        p.check()
