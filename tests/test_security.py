"""The security review's findings on PINs, fork and locks (issue 15, items 5 to 8), proven at
the PKCS#11 boundary: a wrong PIN is tried once per process and token, a session borrowed
before fork() is refused in the child, two threads sharing a session never deadlock, and no
repr shows a PIN."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SoftHSM, Spy
from hsmkey import SessionPool
from hsmkey.exceptions import HSMSessionError
from hsmkey.testing import SoftHSM2Token

TESTS = Path(__file__).parent


def test_a_wrong_pin_is_tried_once_per_process_whoever_asks(spy: Spy) -> None:
    """Three pools and three hsm_session blocks with one wrong PIN: one C_Login."""
    run = spy(
        """
        import os
        from hsmkey import SessionPool, hsm_session
        from hsmkey.exceptions import HSMPinError
        module, token = os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"]
        seen = set()
        for _ in range(3):
            pool = SessionPool(module, token, "000000")
            try:
                pool.check()
            except HSMPinError as e:
                seen.add((e.rv, e.function, str(e)))
            else:
                raise SystemExit("a wrong PIN logged in")
            pool.close()
        for _ in range(3):
            try:
                with hsm_session(module, token, "000000"):
                    pass
            except HSMPinError as e:
                seen.add((e.rv, e.function, str(e)))
            else:
                raise SystemExit("a wrong PIN logged in")
        assert len(seen) == 1, seen
        rv, function, message = seen.pop()
        assert (rv, function) == ("CKR_PIN_INCORRECT", "C_Login"), (rv, function)
        assert "will not try this PIN" in message, message
        # Another PIN is another try, and the right one still logs in.
        try:
            SessionPool(module, token, "111111").check()
        except HSMPinError:
            pass
        with SessionPool(module, token, os.environ["HSM_PIN"]) as good:
            good.check()
        """
    )
    logins = [c for c in run.sequence if c.function == "C_Login"]
    assert [c.rv for c in logins] == ["CKR_PIN_INCORRECT", "CKR_PIN_INCORRECT", "CKR_OK"]


def test_a_wrong_pin_stays_refused_in_a_forked_child(spy: Spy) -> None:
    run = spy(
        """
        import os
        from hsmkey import SessionPool
        from hsmkey.exceptions import HSMPinError
        module, token = os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"]
        def refused():
            try:
                SessionPool(module, token, "000000").check()
            except HSMPinError:
                return True
            return False
        assert refused()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if refused() else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        """
    )
    assert run.calls["C_Login"] == 1


pytestmark_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytestmark_fork
def test_a_session_block_open_across_fork_is_refused_in_the_child(softhsm: SoftHSM) -> None:
    pool = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    try:
        with pool.session() as session:
            key = session.find_key(key_label="ec-key")
            key.sign("ES256", b"parent, before the fork")
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                report = []
                for use in (
                    lambda: key.sign("ES256", b"child"),
                    lambda: session.find_key(key_label="ec-key"),
                ):
                    try:
                        use()
                        report.append("ran on the parent's session")
                    except HSMSessionError as e:
                        report.append("refused" if "before fork()" in str(e) else str(e))
                    except BaseException as e:
                        report.append(repr(e))
                # The child's own block works.
                try:
                    with pool.session() as own:
                        own.find_key(key_label="ec-key").sign("ES256", b"child's own")
                    report.append("own block signs")
                except BaseException as e:
                    report.append(repr(e))
                os.write(write, "\n".join(report).encode())
                os._exit(0)
            os.close(write)
            _, status = os.waitpid(pid, 0)
            with os.fdopen(read) as f:
                report = f.read().splitlines()
            assert os.waitstatus_to_exitcode(status) == 0
            assert report == ["refused", "refused", "own block signs"]
            # The parent's session was not touched by the child.
            key.sign("ES256", b"parent, after the child")
        assert pool.stats()["in_use"] == 0
    finally:
        pool.close()


DEADLOCK_SNIPPET = """
import logging, os, sys, threading, time
sys.path.insert(0, {tests!r})
from helpers.faults import Faults
from hsmkey import SessionPool

logging.basicConfig(level=logging.DEBUG, stream=open(os.devnull, "w"))
module, token, pin = os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"]
slot = int(os.environ["HSMKEY_TEST_SLOT"])
pool = SessionPool(module, token, pin)
faults = Faults(module, slot)
stop = time.monotonic() + 2.0
signed = reads = logouts = 0
errors = []

with pool.session() as session:
    key = session.find_key(key_label="ec-key")

    def signer():
        global signed
        while time.monotonic() < stop:
            try:
                key.sign("ES256", b"shared session")
                signed += 1
            except Exception as e:  # a sign racing a logout may fail; it must not hang
                errors.append(type(e).__name__)

    def reader():
        global reads
        while time.monotonic() < stop:
            repr(session)
            session.closed
            pool.stats()
            reads += 1

    def saboteur():
        global logouts
        while time.monotonic() < stop:
            faults.logout()  # another library logs the process out: hsmkey heals and logs
            logouts += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=f) for f in (signer, signer, reader, saboteur)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(signed, reads, logouts, len(errors))
"""


def test_two_threads_sharing_a_session_never_deadlock(softhsm: SoftHSM) -> None:
    """Signers heal (and log) while holding the session's lock, a reader takes repr() and
    .closed holding the GIL: neither waits for the other's lock while holding its own."""
    env = {**os.environ, "HSMKEY_TEST_SLOT": str(softhsm.slot_id)}
    snippet = textwrap.dedent(DEADLOCK_SNIPPET.format(tests=str(TESTS)))
    try:
        out = subprocess.run(
            [sys.executable, "-c", snippet],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("two threads sharing one session deadlocked")
    assert out.returncode == 0, out.stderr
    signed, reads, logouts, _errors = (int(x) for x in out.stdout.split())
    assert signed > 0 and reads > 0 and logouts > 0


def test_no_repr_shows_a_pin(softhsm: SoftHSM, tmp_path: Path) -> None:
    token = SoftHSM2Token(
        module_path=softhsm.module,
        label="repr-test",
        pin="s3cret-user-pin",
        so_pin="s3cret-so-pin",
        directory=tmp_path,
        conf_path=tmp_path / "softhsm2.conf",
    )
    pool = SessionPool(softhsm.module, softhsm.token_label, "s3cret-user-pin")
    shown = repr(token) + repr(pool) + repr(pool.session())
    assert "s3cret" not in shown
    assert "repr-test" in repr(token)
    pool.close()
