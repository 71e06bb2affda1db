"""A real remote token: p11-kit's RPC server in front of SoftHSM2, and its client module.

``p11-kit server -f -n SOCKET --provider libsofthsm2.so "pkcs11:"`` serves every slot of the
provider on a Unix socket; in a process whose environment has
``P11_KIT_SERVER_ADDRESS=unix:path=SOCKET`` (read at ``C_Initialize``), the module
``p11-kit-client.so`` shows those slots (with slot ids of its own). The server forks one
``p11-kit-remote`` per connection, so "the server went down" means its whole process group:
:meth:`P11KitServer.stop` ends all of it.

What p11-kit-client does when its connection goes (checked with p11-kit 0.24): every call,
``C_GetSessionInfo`` and ``C_GetSlotList`` included, returns ``CKR_DEVICE_ERROR``, and it
never reconnects by itself; after ``C_Finalize`` + ``C_Initialize`` it connects again (the
server's new process knows no session and no login). Initialized while the server is down,
it shows no slot, until it is initialized again.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .softhsm import SoftHSM

CLIENT_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib64/pkcs11/p11-kit-client.so",
    "/usr/lib/pkcs11/p11-kit-client.so",
)


class P11KitMissing(RuntimeError):
    """p11-kit (the ``p11-kit`` command or ``p11-kit-client.so``) is not installed."""


def find_client() -> str:
    """The path of p11-kit-client.so (``HSMKEY_P11KIT_CLIENT`` overrides the search)."""
    override = os.environ.get("HSMKEY_P11KIT_CLIENT")
    for path in ([override] if override else []) + list(CLIENT_CANDIDATES):
        if Path(path).is_file():
            return path
    raise P11KitMissing(
        "p11-kit-client.so not found: install p11-kit-modules (Debian) or set HSMKEY_P11KIT_CLIENT"
    )


def find_server() -> str:
    found = shutil.which("p11-kit")
    if found is None:
        raise P11KitMissing("the p11-kit command is not installed (Debian: p11-kit)")
    return found


class P11KitServer:
    """``p11-kit server`` for every token of ``softhsm``, on ``socket``; start, stop and start
    again on the same socket (clients keep their ``P11_KIT_SERVER_ADDRESS``)."""

    def __init__(
        self,
        softhsm: SoftHSM,
        socket: Path,
        provider: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``provider``: the module the server serves (default SoftHSM2 itself); ``env``: more
        environment for the server (e.g. a fault module's control file)."""
        self.softhsm = softhsm
        self.socket = socket
        self.provider = provider or softhsm.library
        self.server_env = env or {}
        self.command = find_server()
        self.client = find_client()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs: the address, and the ``HSM_*`` variables naming the
        client module."""
        return {
            **self.softhsm.env,
            "P11_KIT_SERVER_ADDRESS": self.address,
            "HSM_MODULE": self.client,
        }

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            raise RuntimeError("the p11-kit server is already running")
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                self.command,
                "server",
                "-f",
                "-n",
                str(self.socket),
                "--provider",
                self.provider,
                "pkcs11:",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "SOFTHSM2_CONF": str(self.softhsm.conf_path), **self.server_env},
            start_new_session=True,  # its own process group: stop() ends the forks too
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if "P11_KIT_SERVER_ADDRESS=" not in line:
            self.stop()
            raise RuntimeError(f"p11-kit server did not start (printed {line!r})")
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"p11-kit server made no socket at {self.socket}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the server and every connection it serves (its process group)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.stdout is not None:
            proc.stdout.close()
        # The connection processes may outlive the leader for a moment (a short, bounded
        # wait: an exited process that nobody reaps would still answer kill(0)).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> P11KitServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_slots(client: str, env: dict[str, str]) -> dict[str, int]:
    """Token label -> slot id as p11-kit-client shows them (asked in another process, so
    that this one does not initialize the client before the code under test does)."""
    out = subprocess.run(
        ["pkcs11-tool", "--module", client, "-L"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    slots: dict[str, int] = {}
    slot: int | None = None
    for line in out.splitlines():
        if line.startswith("Slot ") and "(0x" in line:
            slot = int(line.split("(0x", 1)[1].split(")", 1)[0], 16)
        elif "token label" in line and slot is not None:
            slots[line.split(":", 1)[1].strip()] = slot
    return slots
