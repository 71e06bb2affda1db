"""What production HSMs make a client handle (../shared/FACTS.md, "Production HSMs"), proved
through the fault module behaving as those tokens do (tests/faultmod: ``init_args``,
``no_login``, ``max_sessions``, ``hide_mechanism``, ``token_flags``) in front of SoftHSM2:

- a module that needs ``C_Initialize`` arguments (NSS softokn, kmsp11, YubiHSM's connector);
- a token that needs no login (kmsp11);
- a session limit, stated in ``ulMaxSessionCount`` or not (YubiHSM 2: 16, CloudHSM: 1,024);
- a ``CK_TOKEN_INFO`` that cryptoki's parser refuses (opencryptoki's clock field);
- a token without the hash-and-sign mechanisms (opencryptoki: no CKM_SHA256_RSA_PKCS), or
  without EC at all;
- raw RSA that fails at ``C_Decrypt`` (kryoptic), for the implicit-rejection secret.

Module initialization is once per process, so each case runs in a fresh Python process with
its own control file (the module reads it from its first call on, ``C_Initialize`` included).
The same behaviours on the real implementations: ``nox -s kryoptic nss opencryptoki``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import SoftHSM
from helpers.faultmod import build_faultmod

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("HSMKEY_TEST_REMOTE") or os.environ.get("HSMKEY_TEST_TOKEN")),
    reason="fault-module token models run in front of SoftHSM2 only",
)

PRELUDE = """
import ctypes, json, os, sys, threading, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from hsmkey import HSMJWK, SessionPool
from hsmkey.exceptions import *
M = os.environ["FAULTMOD"]
LABEL = os.environ["HSM_TOKEN"]
PIN = os.environ["HSM_PIN"]
FM = ctypes.CDLL(M)
FM.hsmkey_fault_count.restype = ctypes.c_uint64
FM.hsmkey_fault_injected.restype = ctypes.c_uint64
def count(fn): return FM.hsmkey_fault_count(fn.encode())
def injected(fn): return FM.hsmkey_fault_injected(fn.encode())
def error(f):
    try:
        f()
    except Exception as e:
        return [type(e).__name__, str(e), getattr(e, "rv", None)]
    return None
out = {}
"""


@pytest.fixture(scope="module")
def faultmod_library() -> Path:
    try:
        return build_faultmod()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def model(
    softhsm: SoftHSM,
    library: Path,
    tmp_path: Path,
    control: str,
    code: str,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``code`` in a new process against the fault module with ``control``; returns the
    ``out`` dict it fills."""
    control_file = tmp_path / "control"
    control_file.write_text(textwrap.dedent(control))
    env = {
        **os.environ,
        **softhsm.env,
        "HSMKEY_FAULT_TARGET": softhsm.library,
        "HSMKEY_FAULT_CONTROL": str(control_file),
        "FAULTMOD": str(library),
        **(extra_env or {}),
    }
    env.pop("HSMKEY_FAULT_COUNTS", None)
    script = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


# ---- 1. init_args ----------------------------------------------------------------------------


def test_a_module_that_needs_init_args(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "init_args configdir='sql:/nowhere' certPrefix='' flags=\n",
        """
        ARGS = "configdir='sql:/nowhere' certPrefix='' flags="
        # No arguments, then the wrong ones: refused, and the module stays free.
        out["none"] = error(lambda: SessionPool(M, LABEL, PIN).check())
        out["wrong"] = error(lambda: SessionPool(M, LABEL, PIN, init_args="nope").check())
        with SessionPool(M, LABEL, PIN, init_args=ARGS) as pool:
            pool.check()
            key = HSMJWK.from_hsm(pool, key_label="ec-key").get_op_key("sign")
            sig = key.sign(b"x", ec.ECDSA(hashes.SHA256()))
            key.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA256()))
            out["init_args"] = pool.init_args
            # Initialized once per process: other arguments for the same module are refused.
            out["other"] = error(lambda: SessionPool(M, LABEL, PIN, init_args="x=1").check())
            out["missing"] = error(lambda: SessionPool(M, LABEL, PIN).check())
            # The same arguments share the module.
            with SessionPool(M, LABEL, PIN, init_args=ARGS) as second:
                second.check()
        out["initialize_calls"] = count("C_Initialize")
        # HSM_INIT_ARGS for from_env
        os.environ["HSM_MODULE"] = M
        os.environ["HSM_INIT_ARGS"] = ARGS
        with SessionPool.from_env() as pool:
            pool.check()
            out["from_env"] = pool.init_args
        out["empty"] = error(lambda: SessionPool(M, LABEL, PIN, init_args=""))
        """,
    )
    for case in ("none", "wrong"):
        name, message, rv = out[case]
        assert name == "HSMModuleError", out[case]
        assert rv == "CKR_ARGUMENTS_BAD"
    assert "init_args" in out["none"][1] and "HSM_INIT_ARGS" in out["none"][1]
    assert "refused the init_args" in out["wrong"][1]
    assert out["init_args"] == out["from_env"] == "configdir='sql:/nowhere' certPrefix='' flags="
    for case in ("other", "missing"):
        name, message, _ = out[case]
        assert name == "HSMModuleError", out[case]
        assert "already initialized in this process" in message
        assert "same init_args" in message
    # Two refused, one that worked: the later pools shared the initialized module.
    assert out["initialize_calls"] == 3
    assert out["empty"][0] == "ValueError"


def test_cli_takes_init_args(softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path) -> None:
    args = "configdir='sql:/cli'"
    (tmp_path / "control").write_text(f"init_args {args}\n")
    env = {
        **os.environ,
        **softhsm.env,
        "HSMKEY_FAULT_TARGET": softhsm.library,
        "HSMKEY_FAULT_CONTROL": str(tmp_path / "control"),
    }
    cli = [sys.executable, "-m", "hsmkey", "tokens", "--json", "--module", str(faultmod_library)]

    def labels(result: subprocess.CompletedProcess[str]) -> list[str]:
        assert result.returncode == 0, result.stderr
        return [s["label"] for s in json.loads(result.stdout) if s.get("token_present")]

    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "init_args" in refused.stderr
    ok = subprocess.run([*cli, "--init-args", args], env=env, capture_output=True, text=True)
    assert softhsm.token.label in labels(ok)
    by_env = subprocess.run(cli, env={**env, "HSM_INIT_ARGS": args}, capture_output=True, text=True)
    assert softhsm.token.label in labels(by_env)
    keys = subprocess.run(
        [sys.executable, "-m", "hsmkey", "keys", "--json", "--module", str(faultmod_library)],
        env={**env, "HSM_INIT_ARGS": args},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr
    assert "ec-key" in keys.stdout


# ---- 2. login-less tokens --------------------------------------------------------------------


def test_a_token_that_needs_no_login_gets_no_login(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        f"no_login {softhsm.token.pin}\n",
        """
        with SessionPool(M, LABEL, None) as pool:
            key = HSMJWK.from_hsm(pool, key_label="ec-key").get_op_key("sign")
            for _ in range(3):
                sig = key.sign(b"x", ec.ECDSA(hashes.SHA256()))
                key.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA256()))
            with pool.session() as s:
                out["found"] = s.find_key(key_label="rsa-key") is not None
            out["logins"] = count("C_Login")
            out["stats_logins"] = pool.stats()["logins"]
        """,
    )
    assert out == {"found": True, "logins": 0, "stats_logins": 0}


def test_a_pool_without_pin_on_a_token_that_needs_login(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "",
        """
        pool = SessionPool(M, LABEL)  # no PIN: constructing is fine, the first use says why
        out["first"] = error(pool.check)
        out["again"] = error(lambda: pool.session().__enter__())
        out["logins"] = count("C_Login")
        # A pool with the PIN works beside it.
        with SessionPool(M, LABEL, PIN) as good:
            good.check()
        """,
    )
    for case in ("first", "again"):
        name, message, _ = out[case]
        assert name == "HSMPinError", out[case]
        assert "requires a login" in message and "user_pin" in message
    assert out["logins"] == 0


# ---- 3. session limits -----------------------------------------------------------------------

SIGN_FROM_12_THREADS = """
errors = []
def work(key):
    for _ in range(15):
        try:
            sig = key.sign(b"x", ec.ECDSA(hashes.SHA256()))
            key.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA256()))
        except Exception as e:
            errors.append(repr(e))
with SessionPool(M, LABEL, PIN) as pool:
    key = HSMJWK.from_hsm(pool, key_label="ec-key").get_op_key("sign")
    threads = [threading.Thread(target=work, args=(key,)) for _ in range(12)]
    for t in threads: t.start()
    for t in threads: t.join()
    out["stats"] = pool.stats()
out["errors"] = errors[:3]
out["refused_opens"] = injected("C_OpenSession")
"""


def test_a_stated_session_limit_is_never_exceeded(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    """YubiHSM-like: 3 sessions, stated in ulMaxSessionCount. The pool (default size 64) opens
    at most 2 beside the login's anchor session and never meets CKR_SESSION_COUNT."""
    out = model(
        softhsm, faultmod_library, tmp_path, "max_sessions 3 report\n", SIGN_FROM_12_THREADS
    )
    assert out["errors"] == []
    assert out["refused_opens"] == 0
    assert out["stats"]["max_in_use"] <= 2
    assert out["stats"]["waits"] > 0


def test_an_unstated_session_limit_means_waiting(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    """The same limit, not stated (CK_UNAVAILABLE_INFORMATION): CKR_SESSION_COUNT while the pool
    holds sessions means waiting for one of them, counted as a wait, not an error."""
    out = model(softhsm, faultmod_library, tmp_path, "max_sessions 3\n", SIGN_FROM_12_THREADS)
    assert out["errors"] == []
    assert out["refused_opens"] >= 1
    assert out["stats"]["max_in_use"] <= 2
    assert out["stats"]["waits"] > 0
    assert out["stats"]["timeouts"] == 0


def test_session_count_with_no_session_held_is_a_clear_error(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    """Another application holds every session the token allows: the pool holds none to wait
    for, and says so (after the wait is bounded by acquire_timeout elsewhere)."""
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "max_sessions 2\n",
        """
        pool = SessionPool(M, LABEL, PIN, acquire_timeout=0.5)
        with pool.session():
            pass
        pool.close()  # logged out, nothing open
        # Another user of the token takes both sessions: the login's anchor and one lent.
        other = SessionPool(M, LABEL, PIN)
        held = other.open_session()
        pool2 = SessionPool(M, LABEL, PIN, acquire_timeout=0.5)
        out["error"] = error(pool2.check)
        held.close()
        other.close()  # its session is closed; the login stays, pool2 shares it
        pool2.check()  # a session is free again: usable
        out["ok"] = True
        pool2.close()
        """,
    )
    name, message, rv = out["error"]
    assert name == "HSMPoolExhaustedError", out["error"]
    assert rv == "CKR_SESSION_COUNT"
    assert "holds none" in message
    assert out["ok"]


# ---- 4. token information --------------------------------------------------------------------


def test_token_info_cryptoki_cannot_parse(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    """opencryptoki sets CKF_CLOCK_ON_TOKEN with a utcTime that is not digits; cryptoki's
    parser refuses the whole CK_TOKEN_INFO. hsmkey reads it field by field."""
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "token_flags +CKF_CLOCK_ON_TOKEN\nutc_time ??????????????\n",
        """
        from hsmkey import _hsmkey
        tokens = [t for t in _hsmkey.list_tokens(M, mechanisms=False) if t["token_present"]]
        out["listed"] = sorted(t["label"] for t in tokens)
        out["flags"] = [t["flags"] for t in tokens if t["label"] == LABEL][0]
        serial = [t["serial"] for t in tokens if t["label"] == LABEL][0]
        with SessionPool(M, LABEL, PIN) as pool:
            pool.check()
        with SessionPool(M, None, PIN, token_serial=serial) as pool:
            pool.check()
            out["by_serial"] = True
        """,
    )
    assert softhsm.token.label in out["listed"]
    assert "CKF_CLOCK_ON_TOKEN" in out["flags"] and "CKF_LOGIN_REQUIRED" in out["flags"]
    assert out["by_serial"]


# ---- 5. mechanisms ---------------------------------------------------------------------------


def test_rsa_without_hash_and_sign_mechanisms(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    """opencryptoki-like: no CKM_SHA*_RSA_PKCS(_PSS). RS256/384/512 hash locally and sign the
    DigestInfo with CKM_RSA_PKCS, PSS hashes locally for CKM_RSA_PKCS_PSS; still two calls per
    signature."""
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "hide_mechanism CKM_SHA256_RSA_PKCS CKM_SHA384_RSA_PKCS CKM_SHA512_RSA_PKCS "
        "CKM_SHA256_RSA_PKCS_PSS CKM_SHA384_RSA_PKCS_PSS CKM_SHA512_RSA_PKCS_PSS\n",
        """
        with SessionPool(M, LABEL, PIN) as pool:
            key = HSMJWK.from_hsm(pool, key_label="rsa-key").get_op_key("sign")
            key.sign(b"warm", padding.PKCS1v15(), hashes.SHA256())
            before = {f: count(f) for f in ("C_SignInit", "C_Sign", "C_FindObjectsInit")}
            n = 0
            for h in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
                sig = key.sign(b"msg", padding.PKCS1v15(), h)
                key.public_key().verify(sig, b"msg", padding.PKCS1v15(), h)
                pss = padding.PSS(padding.MGF1(h), h.digest_size)
                sig = key.sign(b"msg", pss, h)
                key.public_key().verify(sig, b"msg", pss, h)
                n += 2
            out["per_signature"] = {f: (count(f) - before[f]) / n for f in before}
            out["refused"] = injected("C_SignInit")
        """,
    )
    assert out["per_signature"] == {"C_SignInit": 1, "C_Sign": 1, "C_FindObjectsInit": 0}


def test_a_token_without_ec_names_itself(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "hide_mechanism CKM_ECDSA CKM_ECDSA_SHA256\n",
        """
        with SessionPool(M, LABEL, PIN) as pool:
            before = count("C_SignInit")
            def use():
                # (Finding an EC key proves its public key with a probe signature: the
                # error may come from the lookup already.)
                key = HSMJWK.from_hsm(pool, key_label="ec-key").get_op_key("sign")
                key.sign(b"x", ec.ECDSA(hashes.SHA256()))
            out["error"] = error(use)
            out["sign_inits"] = count("C_SignInit") - before
        """,
    )
    name, message, _ = out["error"]
    assert name == "HSMMechanismError"
    assert "CKM_ECDSA" in message and softhsm.token.label in message
    assert out["sign_inits"] == 0  # decided from the token's list, not by trying


# ---- 6. implicit rejection when raw RSA fails at C_Decrypt -----------------------------------


def test_rejection_secret_falls_back_when_raw_rsa_fails_at_decrypt(
    softhsm: SoftHSM, faultmod_library: Path, tmp_path: Path
) -> None:
    """kryoptic 1.5 accepts CKM_RSA_X_509 at C_DecryptInit and answers CKR_GENERAL_ERROR from
    C_Decrypt: the first raw decryption (the derivation of the implicit-rejection secret)
    fails here the same way. The secret is then derived from a signature, and RSA1_5
    decryption works; bad ciphertexts still give the same synthetic message each time."""
    out = model(
        softhsm,
        faultmod_library,
        tmp_path,
        "fail C_Decrypt CKR_GENERAL_ERROR nth=1\n",
        """
        with SessionPool(M, LABEL, PIN) as pool:
            key = HSMJWK.from_hsm(pool, key_label="rsa-key").get_op_key("unwrapKey")
            ct = key.public_key().encrypt(b"sixteen byte key", padding.PKCS1v15())
            out["plain"] = key.decrypt(ct, padding.PKCS1v15()).decode()
            bad = bytes(len(ct))[:-1] + b"\\x07"
            a = key.decrypt(bad, padding.PKCS1v15())
            b = key.decrypt(bad, padding.PKCS1v15())
            out["synthetic_stable"] = a == b
            out["signs"] = count("C_Sign")
            out["failed"] = injected("C_Decrypt")
        """,
    )
    assert out["plain"] == "sixteen byte key"
    assert out["synthetic_stable"]
    assert out["failed"] == 1
    assert out["signs"] >= 1  # the signature derivation ran


# ---- the pytest plugin -----------------------------------------------------------------------


def test_plugin_tokens_carry_init_args(softhsm: SoftHSM, tmp_path: Path) -> None:
    """hsmkey.testing's token (what the plugin's fixtures hand out) passes its init_args to
    its pools and to HSM_INIT_ARGS; without any, hsm_env clears a HSM_INIT_ARGS left over."""
    import dataclasses

    from hsmkey.testing import SoftHSM2Token

    token = SoftHSM2Token(
        module_path=softhsm.module,
        label="x",
        pin="1234",
        so_pin="5678",
        directory=tmp_path,
        conf_path=tmp_path / "softhsm2.conf",
        init_args="configdir='sql:/x'",
    )
    assert token.env["HSM_INIT_ARGS"] == "configdir='sql:/x'"
    with token.pool() as pool:  # lazy: no PKCS#11 call
        assert pool.init_args == "configdir='sql:/x'"
    plain = dataclasses.replace(token, init_args=None)
    assert "HSM_INIT_ARGS" not in plain.env
    with plain.pool() as pool:
        assert pool.init_args is None
