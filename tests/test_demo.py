"""The README's demo runs and verifies every algorithm."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_signs_and_verifies_every_algorithm() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "hsmkey.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for alg in ("RS256", "PS256", "ES256", "ES384", "ES512", "ES256K", "EdDSA"):
        assert any(line.startswith(alg) and line.rstrip().endswith("yes") for line in lines), alg
    # (Only the table: the JWT printed below it may contain "NO" in its base64url.)
    assert not any(line.rstrip().endswith(" NO") for line in lines)
    jwt = lines[-1]
    assert jwt.count(".") == 2 and jwt.startswith("eyJ")
