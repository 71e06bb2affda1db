"""The ``hsmkey`` command, run as a subprocess against the test token.

Keys the tests create get unique labels and are deleted again; the fixture keys are only
read. PIN prompts and confirmations run on a pseudo-terminal, as a person would see them.
Tests that need a wrong PIN use a token of their own (a scratch SoftHSM2 directory), so that
the shared token's PIN counters stay untouched.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hsmkey
import hsmkey._hsmkey
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from helpers.softhsm import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hsmkey.testing import find_softhsm2_module
from jwcrypto import jwk, jwt  # type: ignore[import-untyped]

HSMKEY = [sys.executable, "-m", "hsmkey"]
TIMEOUT = 120


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    unset: Sequence[str] = (),
) -> Result:
    """``python -m hsmkey ARGS`` with the test token's environment (plus ``env``), no
    controlling terminal."""
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    proc = subprocess.run(
        [*HSMKEY, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=TIMEOUT,
        start_new_session=True,  # no controlling terminal: prompts are impossible
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    result = run(*args, input=input, env=env)
    assert result.returncode == 0, result
    assert result.stderr == "", result
    return result


def assert_error(result: Result, status: int, *fragments: str) -> None:
    """One line on stderr, ``hsmkey: error: ...``, no traceback, the expected status."""
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr, result.stderr
    # hsmkey's warnings (like a token's low PIN counter) may come first.
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("hsmkey: warning: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hsmkey: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def unique(prefix: str) -> str:
    return f"cli-{prefix}-{uuid.uuid4().hex[:8]}"


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    """An in-process pool on the test token, to check what the command did."""
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    try:
        yield p
    finally:
        p.close()


def thumbprint(label: str, pool: SessionPool, key_id: bytes | None = None) -> str:
    return str(HSMJWK.from_hsm(pool, key_label=label, key_id=key_id)["kid"])


# -- the command itself -----------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = ok("--help")
    for command in ("tokens", "keys", "generate", "import", "delete", "jwks", "sign", "demo"):
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), command
    assert "HSM_PIN" in result.stdout
    assert ok("--version").stdout.strip() == f"hsmkey {hsmkey.__version__}"


def test_console_script_is_installed() -> None:
    script = shutil.which("hsmkey", path=str(Path(sys.executable).parent))
    assert script is not None, "the hsmkey console script is not installed next to python"
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"hsmkey {hsmkey.__version__}"


def test_no_command_prints_help_and_fails() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: hsmkey" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["frobnicate"], "invalid choice"),
        (["keys", "--pin", "123456"], "unrecognized arguments: --pin 123456"),
        (["generate", "--label", "x"], "--type"),
        (["generate", "--type", "DSA", "--label", "x"], "unknown key type 'DSA'"),
        (["generate", "--type", "RSA", "--label", "x", "--bits", "1024"], "--bits must be"),
        (["generate", "--type", "RSA", "--label", "x", "--curve", "P-256"], "--curve is for EC"),
        (["generate", "--type", "EC", "--label", "x", "--bits", "2048"], "--bits is for RSA"),
        (["generate", "--type", "Ed25519", "--label", "x", "--curve", "P-256"], "does not fit"),
        (["generate", "--type", "EC", "--label", "x", "--curve", "Ed25519"], "EC_EDWARDS"),
        (["generate", "--type", "EC_EDWARDS", "--label", "x", "--curve", "P-256"], "of EC_EDWARDS"),
        (["generate", "--type", "EC", "--label", "x", "--curve", "brainpool"], "unknown curve"),
        (["generate", "--type", "EC", "--label", ""], "a key needs a label"),
        (["generate", "--type", "EC", "--label", "  "], "a key needs a label"),
        (["import", "key.pem", "--label", ""], "a key needs a label"),
        (["csr", "--label", "ec-key", "--subject", "garbage"], "'garbage' is not ATTRIBUTE=value"),
        (["csr", "--label", "ec-key", "--subject", "FOO=bar"], "unknown attribute 'FOO'"),
        (["csr", "--label", "ec-key", "--subject", "CN=a,"], "is not ATTRIBUTE=value"),
        (["csr", "--label", "ec-key", "--subject", "CN="], "CN has an empty value"),
        (["generate", "--type", "EC", "--label", "x", "--id", "xyz"], "--id takes hex"),
        (["keys", "--slot", "first"], "not a slot id"),
        (["delete", "--yes"], "--label and/or --id"),
        (["delete", "--label", "rsa-key"], "pass --yes"),
        (["sign"], "--label and/or --id"),
        (["sign", "--label", "rsa-key", "--alg", "HS256"], "not a signing algorithm"),
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    assert_error(run(*args), 2, fragment)


def test_module_and_token_come_from_options_or_environment(softhsm: SoftHSM) -> None:
    assert_error(run("keys", unset=["HSM_MODULE"]), 2, "--module", "HSM_MODULE")
    assert_error(run("keys", unset=["HSM_TOKEN"]), 2, "--token", "HSM_TOKEN")
    # The options win over the environment; they work before and after the command.
    env = {"HSM_MODULE": "/nonexistent.so", "HSM_TOKEN": "no-such-token"}
    before = run("--module", softhsm.module, "--token", softhsm.token_label, "keys", env=env)
    after = run("keys", "--module", softhsm.module, "--token", softhsm.token_label, env=env)
    assert before.returncode == after.returncode == 0, (before, after)
    assert before.stdout == after.stdout
    # --slot and --serial choose the token too (HSM_TOKEN is not needed then).
    by_slot = run("keys", "--slot", str(softhsm.slot_id), unset=["HSM_TOKEN"])
    by_serial = run("keys", "--serial", softhsm.token.serial, unset=["HSM_TOKEN"])
    assert by_slot.stdout == by_serial.stdout == before.stdout


def test_hsm_errors_are_one_line_with_exit_1(softhsm: SoftHSM) -> None:
    assert_error(run("keys", "--module", "/nonexistent/pkcs11.so"), 1, "/nonexistent/pkcs11.so")
    assert_error(run("keys", "--module", "/etc/hostname"), 1, "PKCS#11 module")
    assert_error(run("keys", "--token", "no-such-token"), 1, "no-such-token", "hsmkey-test")
    assert_error(run("keys", "--slot", "4242", unset=["HSM_TOKEN"]), 1, "4242")
    assert_error(run("sign", "--label", "no-such-key", input="{}"), 1, "no-such-key")
    assert_error(run("sign", "--label", "dup-key", input="{}"), 1, "dup-key", "--id")


def test_missing_pin_without_a_terminal_is_an_error() -> None:
    assert_error(run("keys", unset=["HSM_PIN"]), 2, "HSM_PIN")


# -- keys, jwks ------------------------------------------------------------------------------


def test_keys_table(pool: SessionPool) -> None:
    rows = table(ok("keys").stdout)
    assert rows[0] == ["LABEL", "ID", "TYPE", "SIZE", "KID"]
    by_label = {row[0]: row for row in rows[1:]}
    assert by_label["rsa-key"] == ["rsa-key", "01", "RSA", "2048", thumbprint("rsa-key", pool)]
    assert by_label["ec-key"] == ["ec-key", "02", "EC", "P-256", thumbprint("ec-key", pool)]
    assert by_label["ec384-key"][1:4] == ["03", "EC", "P-384"]
    assert by_label["ed-key"][1:4] == ["04", "EC_EDWARDS", "Ed25519"]
    assert by_label["ec521-key"][1:4] == ["05", "EC", "P-521"]
    # Both keys labelled dup-key are listed, each with its own id.
    assert sorted(row[1] for row in rows[1:] if row[0] == "dup-key") == ["07", "08"]
    # Aligned columns: every KID starts at the same offset.
    lines = ok("keys").stdout.splitlines()
    offsets = {line.index(row[4]) for line, row in zip(lines[1:], rows[1:])}
    assert len(offsets) == 1


def test_keys_json(pool: SessionPool) -> None:
    keys = ok("keys", "--json").json()
    assert isinstance(keys, list)
    rsa_key = next(k for k in keys if k["label"] == "rsa-key")
    assert rsa_key == {
        "label": "rsa-key",
        "id": "01",
        "key_type": "RSA",
        "curve": None,
        "key_size": 2048,
        "kid": thumbprint("rsa-key", pool),
    }
    ed = next(k for k in keys if k["label"] == "ed-key")
    assert (ed["key_type"], ed["curve"]) == ("EC_EDWARDS", "Ed25519")
    assert ok("--json", "keys").json() == keys  # --json before the command works too


def test_jwks_is_the_public_key_set(pool: SessionPool) -> None:
    jwks = ok("jwks").json()
    assert isinstance(jwks, dict) and set(jwks) == {"keys"}
    keys = jwks["keys"]
    private_members = {"d", "p", "q", "dp", "dq", "qi"}
    for member in keys:
        assert not private_members & set(member), member
        # Each kid is the RFC 7638 thumbprint of the key it is attached to.
        assert jwk.JWK(**member).thumbprint() == member["kid"]
    kids = {m["kid"] for m in keys}
    for label in ("rsa-key", "ec-key", "ed-key", "ec521-key", "rfc7515-rsa"):
        assert thumbprint(label, pool) in kids, label
    assert {k["kid"] for k in ok("keys", "--json").json()} == kids
    jwk.JWKSet.from_json(json.dumps(jwks))  # jwcrypto reads it


# -- generate, sign, delete ------------------------------------------------------------------


def verify(compact: str, label: str, pool: SessionPool, alg: str) -> dict[str, object]:
    public = jwk.JWK.from_json(HSMJWK.from_hsm(pool, key_label=label).export_public())
    checked = jwt.JWT(jwt=compact, key=public, algs=[alg])
    return dict(json.loads(checked.claims))


@pytest.mark.parametrize(
    ("key_type", "options", "size", "alg"),
    [
        ("RSA", ["--bits", "2048"], "2048", "RS256"),
        ("ec", ["--curve", "P-384", "--id", "c1:c2:c3"], "P-384", "ES384"),
        ("Ed25519", [], "Ed25519", "EdDSA"),
    ],
)
def test_generate_sign_delete(
    key_type: str, options: list[str], size: str, alg: str, pool: SessionPool
) -> None:
    label = unique(key_type.lower())
    rows = table(ok("generate", "--type", key_type, "--label", label, *options).stdout)
    assert rows[0] == ["LABEL", "ID", "TYPE", "SIZE", "KID"]
    assert rows[1][0] == label and rows[1][3] == size
    assert rows[1][4] == thumbprint(label, pool)
    if "--id" in options:
        assert rows[1][1] == "c1c2c3"
        assert pool.find_key(key_label=label).id == bytes.fromhex("c1c2c3")
    try:
        claims = {"sub": "alice", "n": 1}
        compact = ok("sign", "--label", label, input=json.dumps(claims)).stdout.strip()
        header = json.loads(jwk.base64url_decode(compact.split(".")[0]))
        assert header == {"alg": alg, "kid": rows[1][4], "typ": "JWT"}
        assert verify(compact, label, pool, alg) == claims
    finally:
        deleted = ok("delete", "--label", label, "--yes").stdout
    assert deleted.strip() == f"deleted 2 objects with label {label!r}"
    assert label not in ok("keys").stdout


def test_generate_json_and_refusal_of_taken_labels(pool: SessionPool) -> None:
    label = unique("ec521")
    info = ok("generate", "--type", "EC", "--curve", "P-521", "--label", label, "--json").json()
    try:
        assert isinstance(info, dict)
        assert info["label"] == label and info["curve"] == "P-521" and len(info["id"]) == 32
        assert info["jwk"]["kid"] == info["kid"] == thumbprint(label, pool)
        assert "d" not in info["jwk"]
        # A second key with that label (or that id) would make lookups ambiguous.
        again = run("generate", "--type", "Ed25519", "--label", label)
        assert_error(again, 1, "already", label)
        same_id = run("generate", "--type", "EC", "--label", unique("x"), "--id", info["id"])
        assert_error(same_id, 1, "already", info["id"])
    finally:
        ok("delete", "--id", info["id"], "--yes")


def test_sign_options() -> None:
    compact = ok("sign", "--label", "rsa-key", "--alg", "PS256", "--kid", "k1", input="{}").stdout
    header = json.loads(jwk.base64url_decode(compact.split(".")[0]))
    assert header == {"alg": "PS256", "kid": "k1", "typ": "JWT"}
    out = ok("sign", "--label", "dup-key", "--id", "08", "--json", input='{"a": 1}').json()
    assert isinstance(out, dict) and out["alg"] == "ES256" and out["jwt"].count(".") == 2
    wrong = run("sign", "--label", "rsa-key", "--alg", "ES256", input="{}")
    assert_error(wrong, 1, "ES256", "rsa-key")
    assert_error(run("sign", "--label", "rsa-key", input="[1, 2]"), 1, "JSON object")
    assert_error(run("sign", "--label", "rsa-key", input="{not json"), 1, "not JSON")


# -- import ----------------------------------------------------------------------------------


def software_keys() -> dict[str, object]:
    return {
        "rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


def test_import_pem_der_and_encrypted(tmp_path: Path, pool: SessionPool) -> None:
    keys = software_keys()
    files = {
        "rsa": (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL),
        "ec": (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8),
        "ed25519": (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
    }
    labels = []
    try:
        for name, (encoding, fmt) in files.items():
            key = keys[name]
            encrypted = name == "ed25519"
            algorithm = (
                serialization.BestAvailableEncryption(b"s3cret")
                if encrypted
                else serialization.NoEncryption()
            )
            path = tmp_path / f"{name}.key"
            path.write_bytes(key.private_bytes(encoding, fmt, algorithm))  # type: ignore[attr-defined]
            label = unique(f"import-{name}")
            args = ["import", str(path), "--label", label]
            if encrypted:
                # No --password: the error says how to give one.
                assert_error(run(*args), 1, "encrypted", "--password")
                assert_error(run(*args, "--password", input="wrong\n"), 1, "wrong password")
                result = ok(*args, "--password", input="s3cret\n")
            else:
                result = ok(*args)
            labels.append(label)
            row = table(result.stdout)[1]
            public = jwk.JWK.from_pyca(key.public_key())  # type: ignore[attr-defined]
            assert row[0] == label and row[4] == public.thumbprint()
            assert thumbprint(label, pool) == public.thumbprint()
        # The token signs for the imported key; the software public key verifies.
        compact = ok("sign", "--label", labels[1], input='{"x": 1}').stdout.strip()
        checked = jwt.JWT(jwt=compact, key=jwk.JWK.from_pyca(keys["ec"].public_key()))  # type: ignore[attr-defined]
        assert json.loads(checked.claims) == {"x": 1}
    finally:
        for label in labels:
            ok("delete", "--label", label, "--yes")


def test_import_errors(tmp_path: Path) -> None:
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("hello\n")
    assert_error(run("import", str(not_a_key), "--label", "x"), 1, "junk.pem")
    missing = tmp_path / "missing.pem"
    assert_error(run("import", str(missing), "--label", "x"), 1, "missing.pem")
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert_error(
        run("import", str(plain), "--label", "x", "--password", input="pw\n"), 1, "not encrypted"
    )
    assert_error(run("import", str(plain), "--label", "rsa-key"), 1, "already", "rsa-key")


# -- delete ----------------------------------------------------------------------------------


def test_delete_by_id_and_missing_keys(pool: SessionPool) -> None:
    label = unique("del")
    ok("generate", "--type", "EC", "--label", label, "--id", "d0d0d0d0")
    out = ok("delete", "--id", "d0d0d0d0", "--yes", "--json").json()
    assert isinstance(out, dict) and out["deleted_objects"] == 2
    assert [k["label"] for k in out["keys"]] == [label]
    assert_error(run("delete", "--label", label, "--yes"), 1, "no private key", label)
    # The fixture keys are still there.
    assert {"rsa-key", "ec-key"} <= {k.label for k in pool.list_keys()}


# -- on a terminal ---------------------------------------------------------------------------

# Starts a new session, opens the pseudo-terminal (which becomes the controlling terminal,
# /dev/tty) and runs the command: as when a person types it.
_ON_TTY = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.close(fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def run_on_terminal(
    args: Sequence[str], answers: Sequence[tuple[str, str]], env: dict[str, str]
) -> tuple[Result, str]:
    """Run ``hsmkey ARGS`` with a pseudo-terminal as its controlling terminal; when the
    terminal shows the first text of an answer, type the second. Returns the result (stdout,
    stderr are pipes) and what the terminal showed."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _ON_TTY, os.ttyname(slave), *HSMKEY, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    screen += os.read(master, 4096)
                except OSError:
                    break
            if pending and pending[0][0].encode() in screen:
                os.write(master, pending.pop(0)[1].encode())
            if proc.poll() is not None and not ready:
                break
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    return Result(proc.returncode, stdout, stderr), screen.decode(errors="replace")


@pytest.fixture
def no_pin_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "HSM_PIN"}


def test_pin_prompt_is_hidden(softhsm: SoftHSM, no_pin_env: dict[str, str]) -> None:
    result, screen = run_on_terminal(["keys"], [("PIN", softhsm.pin + "\n")], no_pin_env)
    assert result.returncode == 0, (result, screen)
    assert "User PIN for token 'hsmkey-test':" in screen
    assert softhsm.pin not in screen  # not echoed
    assert table(result.stdout)[0] == ["LABEL", "ID", "TYPE", "SIZE", "KID"]


def test_delete_asks_for_confirmation(pool: SessionPool) -> None:
    label = unique("confirm")
    ok("generate", "--type", "Ed25519", "--label", label)
    env = dict(os.environ)
    result, screen = run_on_terminal(["delete", "--label", label], [("[y/N]", "n\n")], env)
    assert_error(result, 1, "nothing deleted")
    assert label in screen and "Delete this key (private and public objects)? [y/N]" in screen
    assert pool.find_key(key_label=label).label == label  # still there
    result, screen = run_on_terminal(["delete", "--label", label], [("[y/N]", "y\n")], env)
    assert result.returncode == 0, (result, screen)
    assert result.stdout.strip() == f"deleted 2 objects with label {label!r}"
    assert label not in ok("keys").stdout


# -- a token of its own: wrong PINs, tokens ----------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A SoftHSM2 directory of its own with one empty token ``cli-scratch`` (PIN 1111):
    the environment for subprocesses (this process never sees it)."""
    root = tmp_path_factory.mktemp("cli-softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    env = {
        "SOFTHSM2_CONF": str(conf),
        "HSM_MODULE": find_softhsm2_module(),
        "HSM_TOKEN": "cli-scratch",
        "HSM_PIN": "1111",
    }
    init = ["--init-token", "--free", "--label", "cli-scratch", "--so-pin", "22222222"]
    subprocess.run(
        ["softhsm2-util", *init, "--pin", "1111"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return env


def test_wrong_pin_names_the_return_code(scratch: dict[str, str]) -> None:
    assert ok("keys", env=scratch).stdout.strip() == "no private keys in the token"
    assert ok("keys", "--json", env=scratch).json() == []
    assert ok("jwks", env=scratch).json() == {"keys": []}
    wrong = run("keys", env={**scratch, "HSM_PIN": "9999"})
    assert_error(wrong, 1, "CKR_PIN_INCORRECT")


def test_wrong_pin_typed_at_the_prompt(scratch: dict[str, str]) -> None:
    env = {k: v for k, v in {**os.environ, **scratch}.items() if k != "HSM_PIN"}
    result, screen = run_on_terminal(["keys"], [("PIN", "8888\n")], env)
    assert_error(result, 1, "CKR_PIN_INCORRECT")
    assert "8888" not in screen


def test_output_to_a_closed_pipe_is_quiet() -> None:
    proc = subprocess.Popen(
        [*HSMKEY, "keys"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `hsmkey keys | head -0`
    stderr = proc.stderr.read()
    proc.stderr.close()
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 1
    assert stderr == b""


def test_tokens_table(softhsm: SoftHSM) -> None:
    result = ok("tokens")  # needs the module only: no token, no PIN
    rows = table(result.stdout)
    assert rows[0] == ["SLOT", "LABEL", "SERIAL", "MANUFACTURER", "MODEL", "FLAGS"]
    line = next(line for line in result.stdout.splitlines() if " hsmkey-test " in line)
    assert line.split()[0] == str(softhsm.slot_id)
    assert softhsm.token.serial in line
    assert "token_initialized" in line and "login_required" in line
    assert "hsmkey-test-2" in result.stdout
    assert "(not initialized)" in result.stdout  # SoftHSM2's free slot
    assert run("tokens", unset=["HSM_PIN", "HSM_TOKEN"]).stdout == result.stdout


def test_tokens_json_and_mechanisms(softhsm: SoftHSM) -> None:
    slots = ok("tokens", "--json").json()
    assert isinstance(slots, list)
    test_slot = next(s for s in slots if s["label"] == "hsmkey-test")
    assert test_slot["slot_id"] == softhsm.slot_id
    assert test_slot["serial"] == softhsm.token.serial
    assert test_slot["token_present"] is True
    assert "CKF_TOKEN_INITIALIZED" in test_slot["flags"]
    mechanisms = {m["name"]: m for m in test_slot["mechanisms"]}
    assert "CKF_SIGN" in mechanisms["CKM_ECDSA"]["flags"]
    assert mechanisms["CKM_RSA_PKCS_KEY_PAIR_GEN"]["max_key_size"] >= 4096
    text = ok("tokens", "--mechanisms", "--token", "hsmkey-test").stdout
    assert "hsmkey-test-2" not in text
    assert re.search(r"^CKM_ECDSA\s+\d+\s+\d+\s+\S*sign", text, re.M), text
    only = ok("tokens", "--json", "--slot", str(softhsm.slot_id)).json()
    assert [s["label"] for s in only] == ["hsmkey-test"]


FAKE_SLOTS: list[dict[str, Any]] = [
    {
        "slot_id": 17,
        "slot_description": "Reader 0",
        "slot_manufacturer": "ACME",
        "slot_flags": ["CKF_TOKEN_PRESENT", "CKF_HW_SLOT"],
        "token_present": True,
        "label": "signing",
        "manufacturer": "ACME",
        "model": "HSM 9000",
        "serial": "00ab",
        "flags": ["CKF_RNG", "CKF_LOGIN_REQUIRED", "CKF_TOKEN_INITIALIZED"],
        "hardware_version": "1.0",
        "firmware_version": "2.1",
        "mechanisms": [
            {
                "name": "CKM_ECDSA",
                "type": 0x1041,
                "min_key_size": 256,
                "max_key_size": 521,
                "flags": ["CKF_SIGN", "CKF_VERIFY"],
            }
        ],
    },
    {
        "slot_id": 18,
        "slot_description": "Reader 1",
        "slot_manufacturer": "ACME",
        "slot_flags": ["CKF_TOKEN_PRESENT"],
        "token_present": True,
        "label": "",
        "manufacturer": "ACME",
        "model": "HSM 9000",
        "serial": "00ac",
        "flags": ["CKF_RNG", "CKF_LOGIN_REQUIRED"],
        "hardware_version": "1.0",
        "firmware_version": "2.1",
        "mechanisms": [],
    },
    {
        "slot_id": 19,
        "slot_description": "Reader 2",
        "slot_manufacturer": "ACME",
        "slot_flags": ["CKF_REMOVABLE_DEVICE"],
        "token_present": False,
        "label": None,
        "manufacturer": None,
        "model": None,
        "serial": None,
        "flags": [],
        "hardware_version": None,
        "firmware_version": None,
        "mechanisms": [],
    },
]


def test_tokens_output_of_the_core_function(
    softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """How ``hsmkey tokens`` shows every kind of slot ``_hsmkey.list_tokens`` can return
    (SoftHSM2 has no slot without a token), in this process with a stand-in for it."""
    from hsmkey.cli import main

    calls: list[tuple[str, bool]] = []

    def list_tokens(
        module: str, *, mechanisms: bool = True, init_args: str | None = None
    ) -> list[dict[str, Any]]:
        calls.append((module, mechanisms))
        return FAKE_SLOTS

    monkeypatch.setattr(hsmkey._hsmkey, "list_tokens", list_tokens)
    monkeypatch.delenv("HSM_PIN")  # no PIN needed, none asked for
    assert main(["tokens", "--module", softhsm.module]) == 0
    assert calls == [(softhsm.module, False)]
    assert table(capsys.readouterr().out) == [
        ["SLOT", "LABEL", "SERIAL", "MANUFACTURER", "MODEL", "FLAGS"],
        ["17", "signing", "00ab", "ACME", "HSM", "9000", "rng,login_required,token_initialized"],
        ["18", "(not", "initialized)", "00ac", "ACME", "HSM", "9000", "rng,login_required"],
        ["19", "(no", "token)", "-", "-", "-", "-"],
    ]
    assert main(["tokens", "--mechanisms", "--token", "signing"]) == 0
    out = capsys.readouterr().out
    assert "Reader 1" not in out and "00ac" not in out
    assert "slot 17 (signing): 1 mechanisms" in out
    assert re.search(r"^CKM_ECDSA\s+256\s+521\s+sign,verify$", out, re.M), out
    assert main(["tokens", "--json", "--serial", "00ac"]) == 0
    assert json.loads(capsys.readouterr().out) == [FAKE_SLOTS[1]]
    assert calls[-1] == (softhsm.module, True)  # --json has everything


def test_tokens_without_a_module_is_a_usage_error() -> None:
    assert_error(run("tokens", unset=["HSM_MODULE"]), 2, "--module")


# -- demo ------------------------------------------------------------------------------------


def test_demo_command() -> None:
    result = run("demo", unset=["SOFTHSM2_CONF", "HSM_MODULE", "HSM_TOKEN", "HSM_PIN"])
    assert result.returncode == 0, result
    assert re.search(r"^ES256\s+EC P-256\s+yes\s+yes$", result.stdout, re.M), result.stdout
    # (Only the table: the JWT printed below it may contain "NO" in its base64url.)
    assert not re.search(r"\sNO$", result.stdout, re.M), result.stdout


# -- what a new user meets first (issue 26) --------------------------------------------------


def test_uninitialized_slot_says_how_to_initialize_it(softhsm: SoftHSM) -> None:
    slots = ok("tokens", "--json").json()
    free = [s for s in slots if "CKF_TOKEN_INITIALIZED" not in s.get("flags", ())]
    assert free, slots  # SoftHSM2 always shows one free slot after its tokens
    slot = str(free[0]["slot_id"])
    result = run("keys", "--slot", slot, unset=["HSM_TOKEN"])
    assert_error(result, 1, f"slot id {slot}", "is not initialized", "initialize it first")
    assert f"softhsm2-util --init-token --slot {slot} --label LABEL" in result.stderr
    assert "CKR_TOKEN_NOT_RECOGNIZED" not in result.stderr


@pytest.mark.parametrize("command", ["tokens", "keys"])
def test_module_that_is_a_directory(command: str, tmp_path: Path) -> None:
    result = run(command, "--module", str(tmp_path))
    assert_error(result, 1, f"PKCS#11 module {tmp_path} is a directory, not a shared library")
    # The library says the same.
    with pytest.raises(hsmkey.HSMModuleError, match="is a directory, not a shared library"):
        SessionPool(str(tmp_path), "t", "1")


def test_csr_subject_names_users_write() -> None:
    """Lower-case attribute names and OpenSSL's emailAddress work; the CSR has them."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    pem = ok("csr", "--label", "ec-key", "--subject", "cn=svc.example,emailAddress=a@b.example")
    csr = x509.load_pem_x509_csr(pem.stdout.encode())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "svc.example"
    assert csr.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == "a@b.example"
    slashed = ok("csr", "--label", "ec-key", "--subject", "/O=Example/CN=svc")
    assert (
        x509.load_pem_x509_csr(slashed.stdout.encode()).subject.rfc4514_string()
        == "CN=svc,O=Example"
    )


def test_softhsm2_configuration_missing_is_named(tmp_path: Path) -> None:
    module = find_softhsm2_module()
    conf = tmp_path / "nowhere" / "softhsm2.conf"
    result = run("keys", "--module", module, env={"SOFTHSM2_CONF": str(conf)})
    assert_error(
        result,
        1,
        "C_Initialize returned CKR_GENERAL_ERROR",
        f"SoftHSM2 cannot read its configuration file {conf} (named by SOFTHSM2_CONF)",
    )
    # A configuration whose token directory is missing: the message names the directory.
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'no-tokens'}\n")
    result = run("tokens", "--module", module, env={"SOFTHSM2_CONF": str(conf)})
    assert_error(result, 1, f"the token directory {tmp_path / 'no-tokens'}", str(conf))
    # The library's exception carries the same words (this process has SoftHSM2 loaded
    # already, so ask a fresh one).
    code = (
        "import sys\n"
        "from hsmkey import SessionPool, HSMModuleError\n"
        "try:\n"
        "    SessionPool(sys.argv[1], 't', '1').check()\n"
        "except HSMModuleError as e:\n"
        "    print(e.rv, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, module],
        env={**os.environ, "SOFTHSM2_CONF": "/nonexistent/softhsm2.conf"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.stdout.startswith("CKR_GENERAL_ERROR "), proc
    assert "configuration file /nonexistent/softhsm2.conf (named by SOFTHSM2_CONF)" in proc.stdout


def test_import_refuses_what_is_not_an_importable_key(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import dsa, x25519
    from cryptography.x509.oid import NameOID

    def pem(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    x = tmp_path / "x25519.pem"
    x.write_bytes(pem(x25519.X25519PrivateKey.generate()))
    result = run("import", str(x), "--label", "x")
    assert_error(result, 1, f"{x} holds a key of type X25519", "hsmkey cannot import")
    assert "import_private_key" not in result.stderr and "PrivateKey" not in result.stderr
    d = tmp_path / "dsa.pem"
    d.write_bytes(pem(dsa.generate_private_key(2048)))
    assert_error(run("import", str(d), "--label", "x"), 1, "holds a key of type DSA", "RSA, EC")
    brainpool = tmp_path / "bp.pem"
    brainpool.write_bytes(pem(ec.generate_private_key(ec.BrainpoolP256R1())))
    assert_error(run("import", str(brainpool), "--label", "x"), 1, "brainpoolP256r1")
    # Files that are no private key at all.
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = run("import", str(text), "--label", "x")
    assert_error(result, 1, f"{text} is a text file, not a private key file", "PEM", "DER")
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert_error(run("import", str(public), "--label", "x"), 1, "holds a public key")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    request = tmp_path / "req.pem"
    request.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    assert_error(run("import", str(request), "--label", "x"), 1, "certificate signing request")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    assert_error(run("import", str(empty), "--label", "x"), 1, "is empty")


@pytest.mark.parametrize(
    ("curve", "shown"),
    [("prime256v1", "P-256"), ("secp384r1", "P-384"), ("p521", "P-521")],
)
def test_generate_takes_openssl_curve_names(curve: str, shown: str, pool: SessionPool) -> None:
    label = unique("curve")
    rows = table(ok("generate", "--type", "EC", "--curve", curve, "--label", label).stdout)
    try:
        assert rows[1][2:4] == ["EC", shown]
        assert pool.find_key(key_label=label).curve == shown
    finally:
        ok("delete", "--label", label, "--yes")


def test_key_types_are_named_as_hsmkey_keys_shows_them(pool: SessionPool) -> None:
    """The TYPE column (Key.key_type) is what generate --type takes, and the old names stay."""
    for key_type, options in (("EC_EDWARDS", []), ("ec_edwards", ["--curve", "Ed25519"])):
        label = unique("edwards")
        rows = table(ok("generate", "--type", key_type, *options, "--label", label).stdout)
        try:
            assert rows[1][2:4] == ["EC_EDWARDS", "Ed25519"]
            key = pool.find_key(key_label=label)
            assert (key.key_type, key.curve) == ("EC_EDWARDS", "Ed25519")
            # What the listing shows, generate takes back.
            again = run("generate", "--type", rows[1][2], "--curve", rows[1][3], "--label", "")
            assert_error(again, 2, "a key needs a label")
        finally:
            ok("delete", "--label", label, "--yes")
    help_text = ok("generate", "--help").stdout
    assert "EC_EDWARDS" in help_text and "prime256v1" in help_text


def test_delete_with_several_matches_needs_id_or_all(pool: SessionPool, softhsm: SoftHSM) -> None:
    # The fixture's dup-key names two keys: nothing is deleted without --id or --all.
    result = run("delete", "--label", "dup-key", "--yes")
    assert_error(result, 1, "2 keys have label 'dup-key'", "07", "08", "--id", "--all")
    assert sorted(k.id for k in pool.list_keys() if k.label == "dup-key") == [b"\x07", b"\x08"]
    # Two keys of one label made by another tool (hsmkey refuses to make them): --all
    # deletes both.
    label = unique("pair")
    for key_id in ("e1", "e2"):
        softhsm.pkcs11_tool(
            "--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", key_id
        )
    pool.refresh()
    assert_error(run("delete", "--label", label, "--yes"), 1, "e1, e2", "--all")
    out = ok("delete", "--label", label, "--yes", "--all", "--json").json()
    assert out["deleted_objects"] == 4 and sorted(k["id"] for k in out["keys"]) == ["e1", "e2"]
    assert label not in ok("keys").stdout


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_async_threads_variable_is_checked(value: str) -> None:
    result = run("--version", env={"HSMKEY_ASYNC_THREADS": value})
    assert result.returncode != 0
    assert f'HSMKEY_ASYNC_THREADS="{value}" is not a number of threads' in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("ValueError: ")


@pytest.mark.parametrize("value", ["4", " 16 ", ""])
def test_async_threads_variable_accepts_counts(value: str) -> None:
    assert ok("--version", env={"HSMKEY_ASYNC_THREADS": value}).stdout.startswith("hsmkey ")


def test_missing_module_and_token_say_what_there_is(softhsm: SoftHSM) -> None:
    result = run("keys", unset=["HSM_MODULE"])
    assert_error(result, 2, "--module PATH", "HSM_MODULE", "(SoftHSM2 is ")
    result = run("keys", unset=["HSM_TOKEN"])
    assert_error(result, 2, "--token LABEL", "HSM_TOKEN", "the module's tokens: ")
    assert f"'{softhsm.token_label}'" in result.stderr


def test_sign_without_claims_says_how_to_give_them() -> None:
    result = run("sign", "--label", "ec-key", input="")
    assert_error(result, 1, "no claims on stdin", 'echo \'{"sub": "alice"}\' | hsmkey sign')


def test_key_not_found_lists_the_labels() -> None:
    result = run("sign", "--label", "no-such-key", input="{}")
    assert_error(result, 1, "no-such-key", "the token's keys: ", "'ec-key'", "hsmkey keys")


INIT_MY_TOKEN = ["softhsm2-util", "--init-token", "--free", "--label", "my-token"]


def test_the_cli_page_walkthrough_runs(tmp_path: Path) -> None:
    """docs/cli.rst's command sequence works as written on a fresh token (with --yes where
    the page's delete would ask on the terminal)."""
    page = (Path(__file__).parent.parent / "docs" / "cli.rst").read_text()
    block = re.search(r"\.\. code-block:: bash\n\n((?:   .*\n|\n)+)", page)
    assert block is not None
    lines = [ln[3:] for ln in block.group(1).splitlines() if ln.strip()]
    assert lines[0].startswith("export HSM_MODULE=")
    # A token of its own, my-token as on the page (this process never sees it).
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    scratch = {
        "SOFTHSM2_CONF": str(conf),
        "HSM_MODULE": find_softhsm2_module(),
        "HSM_TOKEN": "my-token",
        "HSM_PIN": "123456",
    }
    subprocess.run(
        [*INIT_MY_TOKEN, "--so-pin", "12345678", "--pin", "123456"],
        env={**os.environ, **scratch},
        check=True,
        capture_output=True,
        timeout=60,
    )
    env = {**os.environ, **scratch}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    for line in lines[1:]:
        command = line.split("   #")[0]
        if command.startswith("hsmkey delete"):
            command += " --yes"
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0 and "error" not in proc.stderr, (line, proc)
    assert (tmp_path / "service.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    labels = {k["label"] for k in ok("keys", "--json", env=scratch).json()}
    assert labels == {"signing-key", "ca-key"}  # service-key was deleted
