"""Ctrl-C interrupts a long GIL-free batch (issue 21, item 7).

``Key.sign_many`` signs the whole batch in one GIL-free section; it checks for signals
between items (about every 50 ms), so SIGINT raises ``KeyboardInterrupt`` within a fraction
of a second and the pool stays usable. Run in a subprocess, which gets the SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.softhsm import SoftHSM

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX")

CHILD = r"""
import sys, time
from hsmkey import SessionPool

pool = SessionPool.from_env()
key = pool.find_key(key_label="rsa-key")
key.sign("RS256", b"warm")
batch = [b"payload %d" % i for i in range(5000)]  # 3 s of RS256 on SoftHSM2, more if busy
print("signing", flush=True)
start = time.monotonic()
try:
    key.sign_many("RS256", batch)
    print("finished", time.monotonic() - start, flush=True)
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), flush=True)
# The pool is usable afterwards.
assert len(key.sign("RS256", b"after")) == 256
with pool.session() as s:
    s.find_key(key_label="ec-key").sign("ES256", b"after")
assert pool.stats()["in_use"] == 0, pool.stats()
print("usable", flush=True)
"""


def test_ctrl_c_interrupts_sign_many(softhsm: SoftHSM) -> None:
    env = {**os.environ, **softhsm.env}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "signing"
        time.sleep(0.5)  # into the batch
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        assert line and line[0] == "interrupted", (line, proc.stderr and proc.stderr.read())
        assert float(line[1]) - sent < 0.5, f"Ctrl-C took {float(line[1]) - sent:.3f} s"
        out, err = proc.communicate(timeout=60)
        assert "usable" in out, err
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
