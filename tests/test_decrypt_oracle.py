"""No decryption oracle on kryoptic: a token's refusal of a ciphertext never reaches healing.

kryoptic answers ``CKR_DEVICE_ERROR`` from ``C_Decrypt`` for a bad RSA-OAEP block. Taken for
a session fault, that code made the pool ask the session about its health
(``C_GetSessionInfo``), close it and open another (``discarded`` in the stats), for bad
ciphertexts only: an oracle in the call sequence, the stats and the error. Every
``C_Decrypt`` failure that does not say the session is gone is now "the data": good and bad
ciphertexts make the same PKCS#11 calls (pkcs11-spy, in front of the fault module without
faults, in front of kryoptic), leave the same stats, and OAEP fails with one error. ECDH with
another valid peer point makes the same calls too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from helpers import SoftHSM
from helpers.faultmod import (  # noqa: F401  (faultmod_fixture: the `faultmod` fixture)
    FaultModBuildError,
    FaultModule,
    build_faultmod,
    faultmod_fixture,
)
from helpers.softhsm import PKCS11_SPY_CANDIDATES
from helpers.spy import Call, parse_spy_log
from hsmkey import SessionPool
from hsmkey.exceptions import HSMError
from hsmkey.keys import HSMRSAPrivateKey, private_key_for

ROOT = Path(__file__).resolve().parents[1]
PIN = "87654321"
LABEL = "oracle"


@dataclass
class Kryoptic:
    module: str
    spy: str
    faultmod: str
    env: dict[str, str]
    tmp: Path


def _spy_module() -> str | None:
    return next((p for p in PKCS11_SPY_CANDIDATES if Path(p).is_file()), None)


@pytest.fixture(scope="module")
def kryoptic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kryoptic]:
    spy = _spy_module()
    if spy is None or shutil.which("pkcs11-tool") is None:
        pytest.skip("OpenSC (pkcs11-spy.so, pkcs11-tool) is not installed")
    module = os.environ.get("HSMKEY_KRYOPTIC", "")
    if not module:
        built = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-kryoptic")],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        lines = built.stdout.strip().splitlines()
        module = lines[-1] if built.returncode == 0 and lines else ""
    if not module or not Path(module).is_file():
        pytest.skip("kryoptic is not built here (bash scripts/build-kryoptic)")
    try:
        faultmod = str(build_faultmod())
    except (FileNotFoundError, FaultModBuildError) as exc:
        pytest.skip(f"the fault module could not be built: {exc}")
    tmp = tmp_path_factory.mktemp("kryoptic-oracle")
    conf = tmp / "kryoptic.toml"
    conf.write_text(f'[[slots]]\nslot = 0\ndbtype = "sqlite"\ndbargs = "{tmp / "token.sql"}"\n')
    env = {**os.environ, "KRYOPTIC_CONF": str(conf)}
    tool = ["pkcs11-tool", "--module", module]
    so = ["--token-label", LABEL, "--login", "--login-type", "so", "--so-pin", "12345678"]
    user = ["--token-label", LABEL, "--login", "--pin", PIN]
    for args in (
        ["--init-token", "--label", LABEL, "--so-pin", "12345678"],
        [*so, "--init-pin", "--pin", PIN],
        # Any RSA mechanism: OAEP through the token's own CKM_RSA_PKCS_OAEP.
        [*user, "--keypairgen", "--key-type", "rsa:2048", "--label", "rsa", "--id", "01"],
        # PKCS#1 v1.5 only: the token removes the padding (no raw RSA).
        [
            *user,
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            "v15",
            "--id",
            "02",
            "--allowed-mechanisms",
            "RSA-PKCS",
        ],
        [*user, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "ec", "--id", "03"],
    ):
        subprocess.run([*tool, *args], env=env, capture_output=True, timeout=300, check=True)
    yield Kryoptic(module, spy, faultmod, env, tmp)


SNIPPET = """
    import json, os
    from hsmkey import SessionPool
    pool = SessionPool.from_env()
    key = pool.find_key(key_label=os.environ["KEY_LABEL"])
    out = []
    for spec in json.loads(os.environ["CALLS"]):
        data = bytes.fromhex(spec["data"])
        try:
            if spec["mech"] == "ECDH":
                out.append(len(key.ecdh(data)))
            else:
                out.append(key.decrypt(spec["mech"], data, **spec.get("kwargs", {})).hex())
        except Exception as exc:
            out.append(f"{type(exc).__name__}: {exc} rv={getattr(exc, 'rv', None)}")
    print(json.dumps({"out": out, "stats": pool.stats()}))
    pool.close()
"""


def run(
    k: Kryoptic, key: str, calls: list[dict[str, Any]]
) -> tuple[list[Call], list[Any], dict[str, int]]:
    """The calls through pkcs11-spy in front of kryoptic, each result, the pool's stats."""
    n = len(list(k.tmp.glob("spy-*.log")))
    log = k.tmp / f"spy-{n}.log"
    script = k.tmp / "snippet.py"
    script.write_text(textwrap.dedent(SNIPPET))
    control = k.tmp / "faults"
    control.write_text("")  # no faults: the fault module only hides C_GetInterface
    env = {
        **k.env,
        "HSM_MODULE": k.spy,
        "HSM_TOKEN": LABEL,
        "HSM_PIN": PIN,
        # pkcs11-spy passes a PKCS#11 3.x module's C_GetInterface through and then sees no
        # call: it spies on the fault module (a 2.40 function list), which calls kryoptic.
        "PKCS11SPY": k.faultmod,
        "HSMKEY_FAULT_TARGET": k.module,
        "HSMKEY_FAULT_CONTROL": str(control),
        "HSMKEY_FAULT_COUNTS": str(k.tmp / "counts"),
        "PKCS11SPY_OUTPUT": str(log),
        "KEY_LABEL": key,
        "CALLS": json.dumps(calls),
    }
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return parse_spy_log(log.read_text(errors="replace")), result["out"], result["stats"]


def public_rsa(k: Kryoptic, label: str) -> rsa.RSAPublicKey:
    der = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            k.module,
            "--token-label",
            LABEL,
            "--read-object",
            "--type",
            "pubkey",
            "--label",
            label,
        ],
        env=k.env,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    pub = serialization.load_der_public_key(der)
    assert isinstance(pub, rsa.RSAPublicKey)
    return pub


def functions(seq: list[Call]) -> list[str]:
    return [c.function for c in seq]


def assert_no_oracle(
    good: tuple[list[Call], list[Any], dict[str, int]],
    bad: tuple[list[Call], list[Any], dict[str, int]],
) -> None:
    seq_good, _, stats_good = good
    seq_bad, _, stats_bad = bad
    # The same calls in the same order; only return codes of C_Decrypt may differ.
    assert functions(seq_good) == functions(seq_bad)
    differ = [(a, b) for a, b in zip(seq_good, seq_bad, strict=True) if a.rv != b.rv]
    assert all(a.function == "C_Decrypt" for a, _ in differ), differ
    assert stats_good == stats_bad
    assert stats_bad["discarded"] == 0 and stats_bad["relogins"] == 0
    assert stats_bad.get("recoveries", 0) == 0


def token_refusals(seq: list[Call]) -> list[str | None]:
    """The return codes of the C_Decrypt calls that failed."""
    return [c.rv for c in seq if c.function == "C_Decrypt" and c.rv != "CKR_OK"]


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_oaep_good_and_bad_make_the_same_calls_on_kryoptic(
    kryoptic: Kryoptic, hash_name: str
) -> None:
    """OAEP with the token's own CKM_RSA_PKCS_OAEP: a bad block (kryoptic: CKR_DEVICE_ERROR
    from C_Decrypt) makes the same calls as a good one, no session is diagnosed or replaced,
    and every failure is the one "decryption failed" error."""
    pub = public_rsa(kryoptic, "rsa")
    h = hashes.SHA1() if hash_name == "sha1" else hashes.SHA256()
    oaep = padding.OAEP(padding.MGF1(h), h, None)
    other = padding.OAEP(padding.MGF1(hashes.SHA512()), hashes.SHA512(), None)
    kwargs = {"hash": hash_name}
    warm = pub.encrypt(b"warm", oaep)
    good = [pub.encrypt(bytes([i]) * 16, oaep) for i in range(3)]
    bad = [
        pub.encrypt(b"wrong hash", other),  # a valid RSA value, not an OAEP block for hash
        bytes(255) + b"\x02",  # small value: a leading byte that is not zero after unmasking
        bytearray(good[0]),
    ]
    bad[2][-1] ^= 1
    calls = [{"mech": "RSA_OAEP", "data": c.hex(), "kwargs": kwargs} for c in [warm, *good]]
    bad_calls = [{"mech": "RSA_OAEP", "data": bytes(c).hex(), "kwargs": kwargs} for c in bad]
    g = run(kryoptic, "rsa", calls)
    b = run(kryoptic, "rsa", calls[:1] + bad_calls)
    assert [bytes.fromhex(o) for o in g[1]] == [b"warm"] + [bytes([i]) * 16 for i in range(3)]
    assert bytes.fromhex(b[1][0]) == b"warm"
    assert token_refusals(b[0]) == ["CKR_DEVICE_ERROR"] * 3
    assert_no_oracle(g, b)
    errors = b[1][1:]
    assert len(set(errors)) == 1, errors
    assert errors[0].startswith("HSMError: decryption failed"), errors
    assert errors[0].endswith("rv=None"), errors
    # The token's OAEP did it: a C_DecryptInit per decryption, no session calls in between.
    assert "C_GetSessionInfo" not in functions(b[0][functions(b[0]).index("C_DecryptInit") :])


def test_v15_through_the_token_makes_the_same_calls_on_kryoptic(kryoptic: Kryoptic) -> None:
    """PKCS#1 v1.5 with a key that allows only CKM_RSA_PKCS: the token removes the padding;
    good and bad blocks give a message (implicit rejection) with the same calls."""
    pub = public_rsa(kryoptic, "v15")
    warm = pub.encrypt(b"warm", padding.PKCS1v15())
    good = [pub.encrypt(bytes([i]) * 16, padding.PKCS1v15()) for i in range(3)]
    bad = [bytes(255) + b"\x07", b"\x00\x01" + b"\xff" * 254, bytearray(good[0])]
    bad[2][-1] ^= 1
    kwargs = {"allow_process_secret": True}
    calls = [{"mech": "RSA_PKCS", "data": bytes(c).hex(), "kwargs": kwargs} for c in [warm, *good]]
    bad_calls = [{"mech": "RSA_PKCS", "data": bytes(c).hex(), "kwargs": kwargs} for c in bad]
    g = run(kryoptic, "v15", calls)
    b = run(kryoptic, "v15", calls[:1] + bad_calls)
    assert [bytes.fromhex(o) for o in g[1]] == [b"warm"] + [bytes([i]) * 16 for i in range(3)]
    assert not [o for o in b[1] if "Error" in o], b[1]  # synthetic messages, never an error
    # kryoptic's CKM_RSA_PKCS (OpenSSL 3.2+) does implicit rejection itself: it never refuses
    # a block, so the token's return code says nothing either.
    assert token_refusals(b[0]) == []
    assert_no_oracle(g, b)


def test_good_decryption_after_a_bad_one_on_the_same_session(kryoptic: Kryoptic) -> None:
    """A refused C_Decrypt ends the operation on kryoptic: the next decryption on the same
    (kept) session makes the same calls as after a good one (no CKR_OPERATION_ACTIVE)."""
    pub = public_rsa(kryoptic, "rsa")
    h = hashes.SHA1()
    oaep = padding.OAEP(padding.MGF1(h), h, None)
    good = pub.encrypt(b"again", oaep)
    calls = [{"mech": "RSA_OAEP", "data": c.hex()} for c in (good, bytes(255) + b"\x02", good)]
    seq, out, stats = run(kryoptic, "rsa", calls)
    assert bytes.fromhex(out[0]) == bytes.fromhex(out[2]) == b"again"
    assert out[1].startswith("HSMError: decryption failed")
    assert stats["discarded"] == 0
    assert not [c for c in seq if c.rv == "CKR_OPERATION_ACTIVE"]


def test_ecdh_with_another_valid_peer_makes_the_same_calls_on_kryoptic(
    kryoptic: Kryoptic,
) -> None:
    """ECDH: any point that passes the software check (on P-256, cofactor 1: a valid public
    key, whoever made it) makes the same calls, and the same stats."""

    def point() -> str:
        return (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            .hex()
        )

    a = run(kryoptic, "ec", [{"mech": "ECDH", "data": point()} for _ in range(3)])
    b = run(kryoptic, "ec", [{"mech": "ECDH", "data": point()} for _ in range(3)])
    assert a[1] == b[1] == [32, 32, 32]
    assert_no_oracle(a, b)


# -- SoftHSM2, with the fault module answering as kryoptic does ------------------------------


def test_any_c_decrypt_refusal_is_the_data_and_a_lost_session_still_heals(
    faultmod: FaultModule, softhsm: SoftHSM
) -> None:
    """On SoftHSM2, the fault module answers a good ciphertext's C_Decrypt with kryoptic's
    CKR_DEVICE_ERROR (after the real call, which ended the operation): the one "decryption
    failed" error, no C_GetSessionInfo, nothing discarded or recovered, and the session
    decrypts next time. A session really lost at C_Decrypt (CKR_SESSION_HANDLE_INVALID, the
    session closed in the token) is still healed and the decryption retried."""
    pool = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin)
    try:
        key = private_key_for(pool.find_key(key_label="rsa-key"))
        assert isinstance(key, HSMRSAPrivateKey)
        oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
        ct = key.public_key().encrypt(b"k" * 16, oaep)
        assert key.decrypt(ct, oaep) == b"k" * 16
        before = pool.stats()
        infos = faultmod.count("C_GetSessionInfo")
        faultmod.fail("C_Decrypt", "CKR_DEVICE_ERROR", nth=1, mode="after")
        with pytest.raises(HSMError) as info:
            key.decrypt(ct, oaep)
        assert str(info.value).startswith("decryption failed")
        assert info.value.rv is None
        assert faultmod.injected("C_Decrypt") == 1
        assert faultmod.count("C_GetSessionInfo") == infos
        after = pool.stats()
        for counter in ("discarded", "recoveries", "relogins", "created"):
            assert after[counter] == before[counter], counter
        assert key.decrypt(ct, oaep) == b"k" * 16
        faultmod.fail(
            "C_Decrypt", "CKR_SESSION_HANDLE_INVALID", nth=1, mode="after", effect="close_session"
        )
        assert key.decrypt(ct, oaep) == b"k" * 16
        assert faultmod.injected("C_Decrypt") == 2
        assert pool.stats()["recoveries"] == before["recoveries"] + 1
    finally:
        pool.close()
