"""Several simulated network HSMs in one process, for :class:`hsmkey.PoolGroup` tests.

Each member is a copy of the fault module (``tests/faultmod``: a copy is another library to
the loader, so another instance with its own control file and counters) in front of its own
copy of SoftHSM2 (its own sessions and login), whose configuration points at a token
directory of the member's own. The same key material is imported into each member's token.
A member can be slowed down (``latency``) and made unreachable
(:meth:`SimulatedHSM.unreachable`: every call fails with ``CKR_DEVICE_ERROR`` and the member's
sessions and login are gone when it comes back, with :meth:`SimulatedHSM.reachable`).

SoftHSM2 reads ``SOFTHSM2_CONF`` when it is initialized: each member's copy is initialized
(by a first ``pool.check()``) while that variable names the member's configuration, under a
lock, and the variable is restored at once.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hsmkey
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .faultmod import FaultModule, build_faultmod
from .softhsm import find_softhsm2_module, make_token, write_conf

PIN = "123456"
SO_PIN = "1234"
_env_lock = threading.Lock()


class SimulatedHSM:
    """One member: a fault module copy, its SoftHSM2 copy and token, and its control file."""

    def __init__(self, work: Path, name: str, softhsm_library: str, label: str) -> None:
        self.name = name
        self.label = label
        self.dir = work / name
        self.dir.mkdir(parents=True)
        self.conf = write_conf(self.dir)
        make_token(self.conf, label, SO_PIN, PIN)
        self.path = str(self.dir / "libhsmkey_faultmod.so")
        shutil.copy2(build_faultmod(), self.path)
        target = self.dir / "libsofthsm2-member.so"
        shutil.copy2(softhsm_library, target)
        control = self.dir / "control"
        control.write_text("")
        counts = self.dir / "counts.json"
        dll = ctypes.CDLL(self.path)
        dll.hsmkey_fault_configure.restype = ctypes.c_int
        dll.hsmkey_fault_configure.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        for env, value in (
            ("HSMKEY_FAULT_TARGET", target),
            ("HSMKEY_FAULT_CONTROL", control),
            ("HSMKEY_FAULT_COUNTS", counts),
            ("HSMKEY_FAULT_LATENCY", ""),
        ):
            rc = dll.hsmkey_fault_configure(env.encode(), str(value).encode())
            if rc != 0:
                raise RuntimeError(f"hsmkey_fault_configure({env}) returned {rc}")
        self.fault = FaultModule(Path(self.path), control, counts, target)
        self._unreachable: str | None = None
        # Initialize the member's SoftHSM2 copy under its own configuration, now.
        with _env_lock:
            previous = os.environ.get("SOFTHSM2_CONF")
            os.environ["SOFTHSM2_CONF"] = str(self.conf)
            try:
                with self.pool(max_sessions=1) as pool:
                    pool.check()
            finally:
                if previous is None:
                    os.environ.pop("SOFTHSM2_CONF", None)
                else:
                    os.environ["SOFTHSM2_CONF"] = previous

    def pool(self, **kwargs: Any) -> hsmkey.SessionPool:
        """A new pool on this member's token."""
        return hsmkey.SessionPool(self.path, self.label, PIN, **kwargs)

    def import_key(self, key: PrivateKeyTypes, label: str, key_id: bytes) -> None:
        """Store ``key`` in the member's token (replacing what has that label and id)."""
        with self.pool(max_sessions=1) as pool, pool.session(rw=True) as session:
            session.delete_key(key_label=label, key_id=key_id)
            session.import_private_key(key, label=label, key_id=key_id)

    def delete_key(self, label: str, key_id: bytes) -> None:
        with self.pool(max_sessions=1) as pool, pool.session(rw=True) as session:
            session.delete_key(key_label=label, key_id=key_id)

    # -- faults --

    def latency(self, seconds: float) -> None:
        """A round trip of ``seconds`` before every call."""
        for line in [x for x in self.fault.lines if x.startswith("latency")]:
            self.fault.remove(line)
        if seconds > 0:
            self.fault.latency("*", seconds)

    def unreachable(self, delay: float = 0.0) -> None:
        """The member stops answering: every call fails with ``CKR_DEVICE_ERROR`` (after
        ``delay`` seconds); its sessions and login are gone."""
        if self._unreachable is None:
            self._unreachable = self.fault.unreachable(delay=delay)

    def reachable(self) -> None:
        """The member answers again (its old sessions are gone)."""
        if self._unreachable is not None:
            self.fault.remove(self._unreachable)
            self._unreachable = None

    def reset(self) -> None:
        self._unreachable = None
        self.fault.clear()
        self.fault.reset_counts()

    def signs(self) -> int:
        """``C_Sign`` calls through this member since the last reset."""
        return self.fault.count("C_Sign")


class Cluster:
    """``n`` simulated HSMs named ``hsm-a``, ``hsm-b`` ... with the same token label."""

    def __init__(
        self, work: Path, softhsm_library: str, n: int = 3, label: str = "group-token"
    ) -> None:
        self.members = [
            SimulatedHSM(work, f"hsm-{chr(ord('a') + i)}", softhsm_library, label) for i in range(n)
        ]

    def __getitem__(self, i: int) -> SimulatedHSM:
        return self.members[i]

    def __len__(self) -> int:
        return len(self.members)

    def import_key(
        self, key: PrivateKeyTypes, label: str, key_id: bytes, members: Sequence[int] | None = None
    ) -> None:
        for i in range(len(self.members)) if members is None else members:
            self.members[i].import_key(key, label, key_id)

    def group(self, **pool_kwargs: Any) -> hsmkey.PoolGroup:
        return hsmkey.PoolGroup(
            [m.pool(**pool_kwargs) for m in self.members], names=[m.name for m in self.members]
        )

    def reset(self) -> None:
        for m in self.members:
            m.reset()


# The keys every member holds: a P-256 key "sign-ec" (id 01) and an RSA key "sign-rsa" (id 02).
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

_cluster: Cluster | None = None
_cluster_lock = threading.Lock()


def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """The process's three-member cluster (made once: modules cannot be unloaded)."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            cluster = Cluster(tmp_path_factory.mktemp("cluster"), find_softhsm2_module(), n=3)
            cluster.import_key(EC_KEY, "sign-ec", b"\x01")
            cluster.import_key(RSA_KEY, "sign-rsa", b"\x02")
            _cluster = cluster
        return _cluster


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three simulated HSMs with no faults (cleared again after the test)."""
    cluster = shared_cluster(tmp_path_factory)
    cluster.reset()
    yield cluster
    cluster.reset()


@pytest.fixture(name="group")
def group_fixture(cluster: Cluster) -> Iterator[hsmkey.PoolGroup]:
    """A group over the three members (4 sessions each), probing down members every 50 ms."""
    group = hsmkey.PoolGroup(
        [m.pool(max_sessions=4) for m in cluster.members],
        names=[m.name for m in cluster.members],
        probe_interval=0.05,
    )
    yield group
    group.close()
