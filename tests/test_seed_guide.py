"""Every code block of the guide hsmkey started from (shared/seeds/session-management-guide.rst)
runs as written, with only its placeholders (``...``, ``items``) filled in.

Each block runs in a fresh interpreter against a token labelled ``my-token`` with PIN
``12345678`` (the names the guide uses), holding an RSA key ``my-key``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hsmkey.testing import find_softhsm2_module

PRELUDE = """
import json, os
from jwcrypto.jws import JWS
from hsmkey import SessionPool, HSMJWK, hsm_session
module_path = os.environ["HSM_MODULE"]
token_label = "my-token"
pin = "12345678"
items = [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
PROTECTED = json.dumps({"alg": "RS256"})
pool = SessionPool(module_path=module_path, token_label=token_label, user_pin=pin)
"""

MAKE_TOKEN = """
import sys
from hsmkey import SessionPool
pool = SessionPool(sys.argv[1], "my-token", "12345678")
with pool.session(rw=True) as s:
    s.generate_key_pair("RSA", label="my-key", bits=2048)
pool.close()
"""


@pytest.fixture(scope="module")
def guide_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("seed-guide")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "HSM_MODULE": find_softhsm2_module()}
    env["HSM_TOKEN"], env["HSM_PIN"] = "my-token", "12345678"
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "my-token",
            "--so-pin",
            "87654321",
            "--pin",
            "12345678",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        [sys.executable, "-c", MAKE_TOKEN, env["HSM_MODULE"]], check=True, env=env, timeout=60
    )
    yield env


def run_block(env: dict[str, str], block: str, tmp: Path) -> str:
    script = tmp / "block.py"
    script.write_text(PRELUDE + textwrap.dedent(block))
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


BLOCKS = {
    "basic-usage": """
        from hsmkey import SessionPool

        pool = SessionPool(
            module_path="/usr/lib/softhsm/libsofthsm2.so",
            token_label="my-token",
            user_pin="12345678"
        )

        # Use context manager for automatic session cleanup
        with pool.session() as session:
            # Work with session
            pass

        # Session is automatically closed
        """,
    "hsm-session": """
        from hsmkey import hsm_session

        with hsm_session(module_path, token_label, pin) as session:
            # Work with session
            key = HSMJWK.from_hsm(session, key_label="my-key")
        print(key.thumbprint())
        """,
    "opening-sessions": """
        with pool.session() as session:
            # Session is now open and logged in
            pass
        # Session is closed and logged out
        """,
    "read-write": """
        with pool.session(rw=True) as session:
            # Can perform write operations
            pass
        """,
    "keep-sessions-short": """
        # Good: Short session
        def sign_data(data):
            with pool.session() as session:
                key = HSMJWK.from_hsm(session, key_label="my-key")
                jws = JWS(data)
                jws.add_signature(key, alg="RS256", protected=PROTECTED)
                return jws.serialize(compact=True)

        # Bad: Long-lived session
        session = pool.open_session()  # Don't keep open
        # ... later ...
        session.close()
        print(sign_data(b"payload"))
        """,
    "cache-keys": """
        with pool.session() as session:
            # Load key once
            key = HSMJWK.from_hsm(session, key_label="my-key")

            # Reuse for multiple operations
            for data in items:
                jws = JWS(data)
                jws.add_signature(key, alg="RS256", protected=PROTECTED)
        """,
    "batch": """
        # Efficient: Single session for batch
        with pool.session() as session:
            key = HSMJWK.from_hsm(session, key_label="my-key")
            tokens = []
            for i in range(100):
                jws = JWS(f'{{"id": {i}}}'.encode())
                jws.add_signature(key, alg="RS256", protected=PROTECTED)
                tokens.append(jws.serialize(compact=True))

        # Inefficient: New session for each operation
        tokens = []
        for i in range(100):
            with pool.session() as session:  # Unnecessary overhead
                key = HSMJWK.from_hsm(session, key_label="my-key")
                jws = JWS(f'{{"id": {i}}}'.encode())
                jws.add_signature(key, alg="RS256", protected=PROTECTED)
                tokens.append(jws.serialize(compact=True))
        assert len(set(tokens)) == 100
        print(pool.stats())
        """,
    "error-handling": """
        from hsmkey.exceptions import HSMSessionError, HSMPinError

        try:
            with pool.session() as session:
                key = HSMJWK.from_hsm(session, key_label="my-key")
        except HSMPinError:
            print("Invalid PIN")
        except HSMSessionError as e:
            print(f"Session error: {e}")

        bad = SessionPool(module_path, token_label, "00000000")
        pool.close()  # the process logs out, so the next pool really tries its PIN
        try:
            with bad.session() as session:
                key = HSMJWK.from_hsm(session, key_label="my-key")
        except HSMPinError:
            print("Invalid PIN")
        """,
    "nested-sessions": """
        # This may fail with "UserAlreadyLoggedIn" on some tokens
        with pool.session() as session1:
            with pool.session() as session2:  # May fail
                pass
        """,
    "module-caching": """
        pool1 = SessionPool(module_path, "token1", "pin1")
        pool2 = SessionPool(module_path, "token2", "pin2")
        # Both pools share the same library instance
        """,
    "environment": """
        import os

        pool = SessionPool(
            module_path=os.environ.get("HSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so"),
            token_label=os.environ.get("HSM_TOKEN", "default-token"),
            user_pin=os.environ.get("HSM_PIN")
        )
        with pool.session() as session:
            pass
        """,
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_seed_guide_block(name: str, guide_env: dict[str, str], tmp_path: Path) -> None:
    if name == "basic-usage" and not Path("/usr/lib/softhsm/libsofthsm2.so").exists():
        pytest.skip("the guide names /usr/lib/softhsm/libsofthsm2.so, not present here")
    out = run_block(guide_env, BLOCKS[name], tmp_path)
    if name == "error-handling":
        assert out.splitlines() == ["Invalid PIN"]
    if name == "keep-sessions-short":
        assert out.strip().count(".") == 2
