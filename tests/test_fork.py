"""After fork, children use the parent's pools and pool-bound keys without touching the
parent's sessions, and the parent keeps signing."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from helpers import SoftHSM
from hsmkey import Key, SessionPool

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def verify(point: bytes, sig: bytes, data: bytes) -> None:
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def run_in_child(fn: object) -> int:
    """Fork, run ``fn()`` in the child, return the child's exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fn()  # type: ignore[operator]
            code = 0
        except BaseException as e:
            os.write(2, f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def sign_and_verify(key: Key, pool: SessionPool, n: int = 20) -> None:
    for i in range(n):
        data = b"child %d" % i
        verify(key.ec_point or b"", key.sign("ES256", data), data)
        with pool.session() as s:
            s.find_key(key_label="ec-key").sign("ES256", data)


def test_child_signs_with_the_parents_pool_and_key(pool: SessionPool) -> None:
    key = pool.find_key(key_label="ec-key")
    verify(key.ec_point or b"", key.sign("ES256", b"parent"), b"parent")
    with pool.session():  # an idle session the child must leave alone
        pass
    parent_stats = pool.stats()

    def child() -> None:
        sign_and_verify(key, pool)
        stats = pool.stats()
        assert stats["logins"] >= 1, stats

    assert run_in_child(child) == 0
    # The parent's sessions and login were not touched by the child.
    verify(key.ec_point or b"", key.sign("ES256", b"parent again"), b"parent again")
    stats = pool.stats()
    assert stats["recoveries"] == 0
    assert stats["relogins"] == 0
    assert stats["created"] == parent_stats["created"]


def test_several_children_while_the_parent_signs(pool: SessionPool) -> None:
    key = pool.find_key(key_label="ec-key")
    pids = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                # SoftHSM2 rewrites its token files during C_Initialize/C_Login; children that
                # log in at the very same moment sometimes get CKR_GENERAL_ERROR from it (seen
                # about once in 100 triple-forks). Real pre-fork servers start workers a few
                # ms apart; so do we.
                time.sleep(0.03 * n)
                sign_and_verify(key, pool, 50)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for i in range(100):
        verify(key.ec_point or b"", key.sign("ES256", b"p%d" % i), b"p%d" % i)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert pool.stats()["recoveries"] == 0


def test_prefork_master_that_never_used_the_pool(softhsm: SoftHSM) -> None:
    # gunicorn --preload: the pool is built in the master but first used in the workers.
    pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)

    def worker() -> None:
        key = pool.find_key(key_label="ec-key")
        sign_and_verify(key, pool)

    assert [run_in_child(worker) for _ in range(2)] == [0, 0]
    assert pool.stats()["logins"] == 0  # the master itself never connected
    pool.close()


def _mp_sign(args: tuple[str, str, str]) -> bytes:
    module, label, pin = args
    with SessionPool(module, label, pin) as p, p.session() as s:
        key = s.find_key(key_label="ec-key")
        sig = key.sign("ES256", b"mp")
        verify(key.ec_point or b"", sig, b"mp")
        return sig


_INHERITED: list[Key] = []


def _mp_inherited(i: int) -> bytes:
    key = _INHERITED[0]
    data = b"inherited %d" % i
    sig = key.sign("ES256", data)
    verify(key.ec_point or b"", sig, data)
    return sig


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing(softhsm: SoftHSM, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    args = (softhsm.module, softhsm.token_label, softhsm.pin)
    with ctx.Pool(2) as workers:
        sigs = workers.map(_mp_sign, [args] * 4)
    assert len(sigs) == 4


def test_multiprocessing_fork_with_inherited_key(pool: SessionPool) -> None:
    _INHERITED[:] = [pool.find_key(key_label="ec-key")]
    try:
        with multiprocessing.get_context("fork").Pool(2) as workers:
            sigs = workers.map(_mp_inherited, range(8))
        assert len(sigs) == 8
        _mp_inherited(99)
    finally:
        _INHERITED.clear()
