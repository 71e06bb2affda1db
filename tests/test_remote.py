"""A real remote token: hsmkey through p11-kit's RPC (``p11-kit server`` in front of SoftHSM2,
``p11-kit-client.so`` in the process that signs), and the server going down under a warm
pool and coming back.

Each scenario runs in a fresh process (p11-kit-client reads ``P11_KIT_SERVER_ADDRESS`` when it
is initialized, and the test suite's own process may have loaded it with another address);
the test starts and stops the server and tells the process what to do, line by line, with a
bound on every wait.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SoftHSM
from helpers.faultmod import build_faultmod
from helpers.p11kit import P11KitMissing, P11KitServer

WAIT = 30.0  # seconds: the most any one step may take (a hang fails the test, never blocks it)

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from hsmkey import SessionPool
    from hsmkey.exceptions import HSMError

    pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"],
                       acquire_timeout=5)
    key = pool.find_key(key_label="ec-key")

    def block():
        with pool.session() as s:
            return s.find_key(key_label="ec-key").sign("ES256", b"block")

    async def in_loop():
        return await key.sign_async("ES256", b"async")

    ops = {
        "sign": lambda: key.sign("ES256", b"x"),
        "block": block,
        "async": lambda: asyncio.run(in_loop()),
    }
    print(json.dumps({"ready": len(key.sign("ES256", b"warm"))}), flush=True)
    for line in sys.stdin:
        op = line.strip()
        if op == "stats":
            print(json.dumps(pool.stats()), flush=True)
            continue
        t0 = time.monotonic()
        try:
            out = {"ok": len(ops[op]())}
        except HSMError as e:
            out = {"error": type(e).__name__, "rv": e.rv, "message": str(e)}
        out["seconds"] = round(time.monotonic() - t0, 3)
        print(json.dumps(out), flush=True)
    pool.close()
    """
)


class Child:
    """A Python process signing through p11-kit-client, driven line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # the process ended

    def answer(self) -> dict[str, object]:
        import json

        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=WAIT)
            pytest.fail(f"no answer within {WAIT} s (the process hung); stderr: {err}")
        if not line:
            _, err = self.proc.communicate(timeout=WAIT)
            pytest.fail(f"the process ended (exit code {self.proc.returncode}): {err}")
        result: dict[str, object] = json.loads(line)
        return result

    def ask(self, op: str) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(op + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def server(softhsm: SoftHSM, tmp_path: Path) -> Iterator[P11KitServer]:
    try:
        srv = P11KitServer(softhsm, tmp_path / "p11.sock")
    except P11KitMissing as exc:
        pytest.skip(str(exc))
    srv.start()
    yield srv
    srv.stop()


def test_signs_through_p11_kit(server: P11KitServer) -> None:
    child = Child(server.env)
    try:
        assert child.answer() == {"ready": 64}
        for op in ("sign", "block", "async"):
            assert child.ask(op)["ok"] == 64, op
    finally:
        child.close()


@pytest.mark.parametrize("op", ["sign", "block", "async"])
def test_server_restart_under_a_warm_pool(server: P11KitServer, op: str) -> None:
    """The server goes away: every call fails at once with a clear HSMError (no hang, no
    crash). The server comes back: the next call heals (the module re-initialized, the
    token found again, one login) and signs."""
    child = Child(server.env)
    try:
        assert child.answer() == {"ready": 64}
        assert child.ask(op)["ok"] == 64
        server.stop()
        for _ in range(2):  # and again while it is still down
            down = child.ask(op)
            assert "error" in down, down
            message = str(down["message"])
            assert down["error"].startswith("HSM"), down
            assert "hsmkey-test" in message or "token" in message, message
            assert float(str(down["seconds"])) < 10, down
        server.start()
        healed = child.ask(op)
        assert healed.get("ok") == 64, healed
        assert child.ask(op).get("ok") == 64
        stats = child.ask("stats")
        assert stats["in_use"] == 0, stats
        assert int(str(stats["logins"])) + int(str(stats["relogins"])) >= 2, stats
    finally:
        child.close()


@pytest.fixture
def faulty_server(softhsm: SoftHSM, tmp_path: Path) -> Iterator[tuple[P11KitServer, Path]]:
    """A p11-kit server whose provider is the fault module over SoftHSM2: faults made on
    the server's side of the connection, in the sessions the client really uses."""
    try:
        library = build_faultmod()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    control = tmp_path / "control"
    control.write_text("")
    env = {"HSMKEY_FAULT_TARGET": softhsm.library, "HSMKEY_FAULT_CONTROL": str(control)}
    try:
        srv = P11KitServer(softhsm, tmp_path / "p11.sock", provider=str(library), env=env)
    except P11KitMissing as exc:
        pytest.skip(str(exc))
    srv.start()
    yield srv, control
    srv.stop()


def arm(control: Path, line: str) -> None:
    tmp = control.with_suffix(".tmp")
    tmp.write_text(line + "\n")
    tmp.replace(control)  # the server's fault module reads it at its next call


@pytest.mark.parametrize(
    ("fault", "healed_by"),
    [
        ("fail C_Sign CKR_SESSION_HANDLE_INVALID nth=1 effect=close_session", "recoveries"),
        ("fail C_Sign CKR_SESSION_CLOSED nth=1 effect=close_all", "relogins"),
        ("fail C_SignInit CKR_USER_NOT_LOGGED_IN nth=1 effect=logout", "relogins"),
        ("fail C_SignInit CKR_OBJECT_HANDLE_INVALID nth=1", "recoveries"),
    ],
    ids=["session-closed", "all-sessions-closed", "logged-out", "stale-handle"],
)
@pytest.mark.parametrize("op", ["sign", "block", "async"])
def test_recovery_through_p11_kit(
    faulty_server: tuple[P11KitServer, Path], op: str, fault: str, healed_by: str
) -> None:
    """Sessions closed, the login lost, a handle gone, on the far side of the RPC: each is
    healed with one retry, and the call signs."""
    server, control = faulty_server
    child = Child(server.env)
    try:
        assert child.answer() == {"ready": 64}
        assert child.ask(op)["ok"] == 64
        before = child.ask("stats")
        arm(control, fault)
        assert child.ask(op).get("ok") == 64
        after = child.ask("stats")
        assert int(str(after["recoveries"])) == int(str(before["recoveries"])) + 1, after
        assert int(str(after[healed_by])) >= int(str(before[healed_by])) + 1, after
        assert after["in_use"] == 0
        arm(control, "")
        assert child.ask(op)["ok"] == 64
    finally:
        child.close()
