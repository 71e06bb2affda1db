"""Decryption is no oracle: PKCS#1 v1.5 implicit rejection, uniform OAEP failures, the same
PKCS#11 calls for good and bad ciphertexts, no session churn, c < n checked in software, raw
RSA behind an opt-in, and ECDH secrets that never stay behind in a pooled session.

Call sequences are proven at the PKCS#11 boundary with OpenSC's pkcs11-spy (a new process per
run); session churn with ``stats()["discarded"]``; the destroy-failure path with the
fault-injection module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from helpers import SoftHSM
from helpers.faultmod import (  # noqa: F401  (faultmod_fixture: the `faultmod` fixture)
    FaultModule,
    faultmod_fixture,
)
from helpers.spy import Call, Spy
from hsmkey import HSMJWK, Key, SessionPool
from hsmkey.exceptions import HSMError, HSMMechanismError
from hsmkey.keys import HSMEllipticCurvePrivateKey, HSMRSAPrivateKey, private_key_for
from jwcrypto import jwe, jwk
from jwcrypto.common import json_encode

SHA1, SHA256 = hashes.SHA1(), hashes.SHA256()
PKCS_ONLY_LABEL = "rsa-pkcs-only"


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def public(key: Key) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(
        int.from_bytes(key.public_exponent or b"", "big"), int.from_bytes(key.modulus or b"", "big")
    ).public_key()


def raw_encrypt(pub: rsa.RSAPublicKey, em: bytes) -> bytes:
    """``em^e mod n``: the ciphertext whose raw decryption is ``em``."""
    nums = pub.public_numbers()
    k = (pub.key_size + 7) // 8
    return pow(int.from_bytes(em, "big"), nums.e, nums.n).to_bytes(k, "big")


def bad_v15_ciphertexts(pub: rsa.RSAPublicKey) -> dict[str, bytes]:
    """Ciphertexts whose v1.5 padding is wrong in each of the ways a padding oracle tells."""
    k = (pub.key_size + 7) // 8
    nz = bytes(range(1, 256)) * 2
    return {
        "first byte not 0": raw_encrypt(pub, b"\x01\x02" + nz[: k - 2]),
        "block type 1": raw_encrypt(pub, b"\x00\x01" + b"\xff" * 20 + b"\x00" + b"m" * (k - 23)),
        "no separator": raw_encrypt(pub, b"\x00\x02" + nz[: k - 2]),
        "padding too short": raw_encrypt(pub, b"\x00\x02" + nz[:7] + b"\x00" + b"m" * (k - 10)),
        "random": raw_encrypt(pub, b"\x00" + os.urandom(k - 1)),
    }


def oaep(h: hashes.HashAlgorithm, label: bytes | None = None) -> padding.OAEP:
    return padding.OAEP(padding.MGF1(h), h, label)


# -- PKCS#1 v1.5: implicit rejection ----------------------------------------------------------


def test_bad_v15_ciphertexts_decrypt_to_stable_synthetic_messages(pool: SessionPool) -> None:
    key = pool.find_key(key_label="rsa-key")
    pub = public(key)
    k = (pub.key_size + 7) // 8
    good = pub.encrypt(b"sixteen byte cek", padding.PKCS1v15())
    assert key.decrypt("RSA_PKCS", good) == b"sixteen byte cek"
    before = pool.stats()["discarded"]
    seen: dict[bytes, str] = {}
    for what, ct in bad_v15_ciphertexts(pub).items():
        first = key.decrypt("RSA_PKCS", ct)  # never raises
        assert key.decrypt("RSA_PKCS", ct) == first, what  # the same bytes every time
        assert len(first) <= k - 11, what
        assert first not in seen, (what, seen.get(first))  # different per ciphertext
        seen[first] = what
    # Through the cryptography interface (what jwcrypto's RSA1_5 calls), likewise.
    obj = private_key_for(key)
    assert isinstance(obj, HSMRSAPrivateKey)
    for ct in bad_v15_ciphertexts(pub).values():
        assert obj.decrypt(ct, padding.PKCS1v15()) == key.decrypt("RSA_PKCS", ct)
    assert obj.decrypt(good, padding.PKCS1v15()) == b"sixteen byte cek"
    # No failure reached the pool: no session was replaced.
    assert pool.stats()["discarded"] == before


def test_v15_behaves_like_a_pyca_key_for_the_same_key(pool: SessionPool) -> None:
    """The same RSA key in software (cryptography, OpenSSL implicit rejection) and in the token:
    good ciphertexts give the same plaintext; bad ones give a deterministic synthetic message
    from both and never raise. (The bytes differ: OpenSSL keys them with d, hsmkey with a
    secret the token derives; the algorithm is the same, checked by the Rust unit tests.)"""
    sw = rsa.generate_private_key(65537, 2048)
    label = "v15-pyca-twin"
    with pool.session(rw=True) as s:
        s.import_private_key(sw, label=label, key_id=b"\x7a\x01")
    try:
        hk = pool.find_key(key_label=label)
        pub = sw.public_key()
        for secret in (b"", b"k" * 16, b"x" * 32, b"y" * 245):
            ct = pub.encrypt(secret, padding.PKCS1v15())
            assert hk.decrypt("RSA_PKCS", ct) == sw.decrypt(ct, padding.PKCS1v15()) == secret
        for what, ct in bad_v15_ciphertexts(pub).items():
            ours, theirs = hk.decrypt("RSA_PKCS", ct), sw.decrypt(ct, padding.PKCS1v15())
            assert ours == hk.decrypt("RSA_PKCS", ct), what
            assert theirs == sw.decrypt(ct, padding.PKCS1v15()), what
            assert len(ours) <= 256 - 11 and len(theirs) <= 256 - 11
    finally:
        with pool.session(rw=True) as s:
            s.delete_key(key_label=label)


SNIPPET_DECRYPT = """
    import json, os
    from hsmkey import SessionPool
    pool = SessionPool.from_env()
    key = pool.find_key(key_label=os.environ["KEY_LABEL"])
    out = []
    for spec in json.loads(os.environ["CALLS"]):
        ct = bytes.fromhex(spec["ct"])
        kwargs = spec.get("kwargs", {})
        if "label" in kwargs:
            kwargs["label"] = bytes.fromhex(kwargs["label"])
        try:
            out.append(key.decrypt(spec["mech"], ct, **kwargs).hex())
        except Exception as exc:
            out.append(f"{type(exc).__name__}: {exc} rv={getattr(exc, 'rv', None)}")
    print(json.dumps({"out": out, "stats": pool.stats()}))
    pool.close()
"""


def run_decrypts(
    spy: Spy, label: str, calls: list[dict[str, Any]]
) -> tuple[list[Call], list[str], dict[str, int]]:
    run = spy(SNIPPET_DECRYPT, env={"KEY_LABEL": label, "CALLS": json.dumps(calls)})
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return run.sequence, result["out"], result["stats"]


def v15(ct: bytes) -> dict[str, Any]:
    return {"mech": "RSA_PKCS", "ct": ct.hex()}


def test_v15_good_and_bad_make_the_same_pkcs11_calls(pool: SessionPool, spy: Spy) -> None:
    key = pool.find_key(key_label="rsa-key")
    pub = public(key)
    warm = pub.encrypt(b"warm-up", padding.PKCS1v15())
    good = [pub.encrypt(bytes([i]) * 16, padding.PKCS1v15()) for i in range(5)]
    bad = list(bad_v15_ciphertexts(pub).values())
    assert len(bad) == len(good)
    seq_good, out_good, stats_good = run_decrypts(
        spy, "rsa-key", [v15(warm)] + [v15(c) for c in good]
    )
    seq_bad, out_bad, stats_bad = run_decrypts(spy, "rsa-key", [v15(warm)] + [v15(c) for c in bad])
    assert [bytes.fromhex(o) for o in out_good[1:]] == [bytes([i]) * 16 for i in range(5)]
    assert all(not o.startswith(("HSM", "Value")) for o in out_bad), out_bad
    # The same calls with the same return codes, call for call.
    assert seq_good == seq_bad
    assert not [c for c in seq_bad if c.rv != "CKR_OK" and c.function.startswith("C_Decrypt")]
    assert stats_good["discarded"] == stats_bad["discarded"] == 0
    # Per decryption: C_DecryptInit (raw RSA) + one C_Decrypt into a buffer of the modulus'
    # size, nothing else. The first one also derives the key's rejection secret first (one
    # more raw decryption, through cryptoki: it asks for the length too).
    decrypts = [c.function for c in seq_bad if c.function.startswith("C_Decrypt")]
    assert decrypts == ["C_DecryptInit", "C_Decrypt", "C_Decrypt"] + [
        "C_DecryptInit",
        "C_Decrypt",
    ] * (1 + len(bad))
    assert sum(c.function == "C_GetSessionInfo" for c in seq_bad) == sum(
        c.function == "C_GetSessionInfo" for c in seq_good
    )


SNIPPET_ONE = """
    import os, sys
    from hsmkey import SessionPool
    pool = SessionPool.from_env()
    key = pool.find_key(key_label=os.environ["KEY_LABEL"])
    print(key.decrypt("RSA_PKCS", bytes.fromhex(os.environ["CT"])).hex())
    pool.close()
"""


def test_synthetic_messages_are_the_same_in_every_process(
    pool: SessionPool, softhsm: SoftHSM
) -> None:
    """The secret behind them comes from the key in the token, not from the process: a bad
    ciphertext sent to two workers (or before and after a restart) gets the same answer."""
    key = pool.find_key(key_label="rsa-key")
    ct = bad_v15_ciphertexts(public(key))["random"]
    here = key.decrypt("RSA_PKCS", ct).hex()
    env = {**os.environ, **softhsm.env, "KEY_LABEL": "rsa-key", "CT": ct.hex()}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SNIPPET_ONE)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert proc.stdout.strip() == here


def test_a_forked_child_gives_the_same_synthetic_message(pool: SessionPool) -> None:
    key = pool.find_key(key_label="rsa-key")
    ct = bad_v15_ciphertexts(public(key))["no separator"]
    parent = key.decrypt("RSA_PKCS", ct)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the pool re-initializes after fork; the key's secret is the same
        try:
            os.close(read)
            os.write(write, key.decrypt("RSA_PKCS", ct))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as r:
        child = r.read()
    os.waitpid(pid, 0)
    assert child == parent


# -- c >= n, raw RSA --------------------------------------------------------------------------


def test_ciphertexts_not_below_the_modulus_never_reach_the_token(
    pool: SessionPool, spy: Spy
) -> None:
    key = pool.find_key(key_label="rsa-key")
    n = key.modulus or b""
    too_big = [n, b"\xff" * len(n), (int.from_bytes(n, "big") + 1).to_bytes(len(n), "big")]
    for ct in too_big:
        for mech, kwargs in (("RSA_PKCS", {}), ("RSA_OAEP", {"hash": "sha256"})):
            with pytest.raises(ValueError, match="not smaller than the RSA modulus"):
                key.decrypt(mech, ct, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not smaller than the RSA modulus"):
            key.decrypt("RSA_X_509", ct, allow_raw=True)
    calls = [v15(c) for c in too_big] + [
        {"mech": "RSA_OAEP", "ct": c.hex(), "kwargs": {"hash": "sha1"}} for c in too_big
    ]
    seq, out, _ = run_decrypts(spy, "rsa-key", calls)
    assert all(o.startswith("ValueError") for o in out), out
    assert not [c for c in seq if c.function.startswith("C_Decrypt")]


def test_raw_decryption_needs_the_opt_in(pool: SessionPool) -> None:
    key = pool.find_key(key_label="rsa-key")
    pub = public(key)
    ct = pub.encrypt(b"raw", padding.PKCS1v15())
    with pytest.raises(HSMMechanismError, match="allow_raw=True"):
        key.decrypt("RSA_X_509", ct)
    with pytest.raises(HSMMechanismError, match="allow_raw=True"):
        key.decrypt("RSA_X_509", ct, allow_raw=False)
    em = key.decrypt("RSA_X_509", ct, allow_raw=True)
    assert len(em) == 256 and em[:2] == b"\x00\x02" and em.endswith(b"\x00raw")


# -- OAEP: one error, no churn, labels --------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "label"), [(SHA1, None), (SHA256, None), (SHA1, b"a label"), (SHA256, b"a label")]
)
def test_bad_oaep_raises_one_error_without_session_churn(
    pool: SessionPool, h: hashes.HashAlgorithm, label: bytes | None
) -> None:
    key = pool.find_key(key_label="rsa-key")
    obj = private_key_for(key)
    assert isinstance(obj, HSMRSAPrivateKey)
    pub = public(key)
    good = pub.encrypt(b"oaep secret", oaep(h, label))
    assert obj.decrypt(good, oaep(h, label)) == b"oaep secret"
    before = pool.stats()["discarded"]
    messages = set()
    bads = [raw_encrypt(pub, b"\x00" + os.urandom(255)) for _ in range(8)]
    bads.append(
        raw_encrypt(pub, b"\x01" + obj.hsm_key.decrypt("RSA_X_509", good, allow_raw=True)[1:])
    )
    flipped = bytearray(good)
    flipped[100] ^= 1
    bads.append(bytes(flipped))
    for ct in bads:
        with pytest.raises(HSMError) as info:
            obj.decrypt(ct, oaep(h, label))
        assert type(info.value) is HSMError
        assert info.value.rv is None and info.value.function is None
        messages.add(str(info.value))
    assert len(messages) == 1, messages
    assert "decryption failed" in messages.pop()
    assert pool.stats()["discarded"] == before  # 10 bad ciphertexts, not one session replaced
    assert obj.decrypt(good, oaep(h, label)) == b"oaep secret"


@pytest.mark.parametrize("h", [SHA1, SHA256])
def test_oaep_labels_are_checked_although_softhsm_ignores_them(
    pool: SessionPool, h: hashes.HashAlgorithm
) -> None:
    """SoftHSM2 decrypts CKM_RSA_PKCS_OAEP with the empty label whatever label it is given: a
    wrong label must still fail, so hsmkey removes the padding itself when there is one."""
    obj = private_key_for(pool.find_key(key_label="rsa-key"))
    assert isinstance(obj, HSMRSAPrivateKey)
    pub = obj.public_key()
    with_label = pub.encrypt(b"labelled", oaep(h, b"right"))
    without = pub.encrypt(b"unlabelled", oaep(h))
    assert obj.decrypt(with_label, oaep(h, b"right")) == b"labelled"
    assert obj.decrypt(without, oaep(h)) == b"unlabelled"
    for ct, wrong in ((with_label, b"wrong"), (with_label, None), (without, b"right")):
        with pytest.raises(HSMError, match="decryption failed"):
            obj.decrypt(ct, oaep(h, wrong))


def oaep_call(ct: bytes, hash_name: str, label: bytes | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"hash": hash_name}
    if label is not None:
        kwargs["label"] = label.hex()
    return {"mech": "RSA_OAEP", "ct": ct.hex(), "kwargs": kwargs}


@pytest.mark.parametrize(
    ("hash_name", "h", "label", "software"),
    [
        ("sha1", SHA1, None, False),  # the token's CKM_RSA_PKCS_OAEP
        ("sha256", SHA256, None, True),  # SoftHSM2 refuses SHA-256 OAEP at C_DecryptInit
        ("sha1", SHA1, b"lbl", True),  # a label: raw RSA, padding in software
    ],
)
def test_oaep_good_and_bad_make_the_same_pkcs11_calls(
    pool: SessionPool,
    spy: Spy,
    hash_name: str,
    h: hashes.HashAlgorithm,
    label: bytes | None,
    software: bool,
) -> None:
    key = pool.find_key(key_label="rsa-key")
    pub = public(key)
    warm = oaep_call(pub.encrypt(b"warm", oaep(h, label)), hash_name, label)
    good = [
        oaep_call(pub.encrypt(bytes([i]) * 16, oaep(h, label)), hash_name, label) for i in range(4)
    ]
    bad = [
        oaep_call(raw_encrypt(pub, b"\x00" + os.urandom(255)), hash_name, label) for _ in range(4)
    ]
    seq_good, out_good, stats_good = run_decrypts(spy, "rsa-key", [warm, *good])
    seq_bad, out_bad, stats_bad = run_decrypts(spy, "rsa-key", [warm, *bad])
    assert [bytes.fromhex(o) for o in out_good[1:]] == [bytes([i]) * 16 for i in range(4)]
    assert len(set(out_bad[1:])) == 1 and out_bad[1].startswith("HSMError: decryption failed")
    assert stats_good["discarded"] == stats_bad["discarded"] == 0
    # The same functions, call for call: no C_GetSessionInfo, C_CloseSession or C_OpenSession
    # after a failure.
    assert [c.function for c in seq_good] == [c.function for c in seq_bad]
    failed = [c for c in seq_bad if c.rv != "CKR_OK" and c.function.startswith("C_Decrypt")]
    if software:
        # Raw RSA never fails: only the one refused C_DecryptInit (SHA-256) of the warm-up.
        assert seq_good == seq_bad
        assert all(c.function == "C_DecryptInit" for c in failed)
        assert len(failed) == (1 if hash_name == "sha256" else 0)
    else:
        # The token's own OAEP: its verdict is the return code of the last C_Decrypt.
        assert [c.function for c in failed] == ["C_Decrypt"] * len(bad)


# -- a key that refuses raw RSA (CKA_ALLOWED_MECHANISMS) --------------------------------------


@pytest.fixture(scope="module")
def pkcs_only_key(softhsm: SoftHSM) -> Iterator[str]:
    """An RSA key pair whose CKA_ALLOWED_MECHANISMS lack CKM_RSA_X_509."""
    softhsm.pkcs11_tool(
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        PKCS_ONLY_LABEL,
        "--id",
        "7b01",
        "--allowed-mechanisms",
        "RSA-PKCS,SHA256-RSA-PKCS,RSA-PKCS-OAEP",
    )
    yield PKCS_ONLY_LABEL
    for kind in ("privkey", "pubkey"):
        softhsm.pkcs11_tool("--delete-object", "--type", kind, "--label", PKCS_ONLY_LABEL)


def test_a_key_without_raw_rsa_still_rejects_implicitly(
    pool: SessionPool, pkcs_only_key: str, spy: Spy
) -> None:
    key = pool.find_key(key_label=pkcs_only_key)
    pub = public(key)
    ct = pub.encrypt(b"x" * 32, padding.PKCS1v15())
    with pytest.raises(HSMMechanismError):  # the token enforces the allowed mechanisms
        key.decrypt("RSA_X_509", ct, allow_raw=True)
    assert key.decrypt("RSA_PKCS", ct) == b"x" * 32
    before = pool.stats()["discarded"]
    bad = bad_v15_ciphertexts(pub)
    answers = {what: key.decrypt("RSA_PKCS", c) for what, c in bad.items()}
    assert answers == {what: key.decrypt("RSA_PKCS", c) for what, c in bad.items()}
    assert len(set(answers.values())) == len(bad)
    assert pool.stats()["discarded"] == before
    # OAEP through the token's own mechanism (raw refused), good and bad.
    assert key.decrypt("RSA_OAEP", pub.encrypt(b"o", oaep(SHA1))) == b"o"
    with pytest.raises(HSMError, match="decryption failed"):
        key.decrypt("RSA_OAEP", bad["random"])
    assert pool.stats()["discarded"] == before
    # At the PKCS#11 boundary: the same functions for good and bad; the token's verdict is
    # the return code of C_Decrypt (the token-side signal that remains on such keys).
    warm = pub.encrypt(b"warm", padding.PKCS1v15())
    good = [pub.encrypt(bytes([i]) * 16, padding.PKCS1v15()) for i in range(len(bad))]
    seq_good, out_good, stats_good = run_decrypts(
        spy, pkcs_only_key, [v15(warm)] + [v15(c) for c in good]
    )
    seq_bad, out_bad, stats_bad = run_decrypts(
        spy, pkcs_only_key, [v15(warm)] + [v15(c) for c in bad.values()]
    )
    assert [bytes.fromhex(o) for o in out_good[1:]] == [bytes([i]) * 16 for i in range(len(bad))]
    assert [bytes.fromhex(o) for o in out_bad[1:]] == list(answers.values())
    assert [c.function for c in seq_good] == [c.function for c in seq_bad]
    assert stats_good["discarded"] == stats_bad["discarded"] == 0
    differ = [(a, b) for a, b in zip(seq_good, seq_bad) if a != b]
    assert differ and all(a.function == b.function == "C_Decrypt" for a, b in differ)
    # The rejection secret came from a signature (C_SignInit + C_Sign, once), after the one
    # refused raw C_DecryptInit.
    assert [c.function for c in seq_bad if c.function.startswith("C_Sign")] == [
        "C_SignInit",
        "C_Sign",
        "C_Sign",
    ]


def test_a_key_that_allows_neither_raw_nor_signing_fails_closed(
    pool: SessionPool, faultmod: FaultModule, softhsm: SoftHSM, caplog: pytest.LogCaptureFixture
) -> None:
    """A key whose token refuses both ways of deriving the implicit-rejection secret (made
    here by the fault module answering the raw C_DecryptInit and the C_SignInit as such a
    token would) has no secret that is the same in every process: a per-process one would give
    a bad ciphertext different plaintexts in two workers, which tells bad padding from good.
    PKCS#1 v1.5 decryption is refused, before any decryption and the same for every
    ciphertext, with an error naming what the key lacks; ``allow_process_secret=True`` is the
    documented opt-in (then v1.5 never raises and stays deterministic within the process)."""
    sw = rsa.generate_private_key(65537, 2048)
    label = "v15-no-raw-no-sign"
    with pool.session(rw=True) as s:
        s.import_private_key(sw, label=label, key_id=b"\x7a\x02")
    fpool = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin)
    try:
        key = fpool.find_key(key_label=label)
        pub = sw.public_key()
        good = pub.encrypt(b"k" * 16, padding.PKCS1v15())
        faultmod.fail("C_DecryptInit", "CKR_MECHANISM_INVALID", nth=1, mode="before")
        faultmod.fail("C_SignInit", "CKR_KEY_FUNCTION_NOT_PERMITTED", nth=1, mode="before")
        messages = set()
        decrypts = faultmod.count("C_Decrypt")
        with caplog.at_level("WARNING", logger="hsmkey"):
            for ct in [good, *bad_v15_ciphertexts(pub).values()]:
                with pytest.raises(HSMMechanismError) as info:
                    key.decrypt("RSA_PKCS", ct)
                messages.add(str(info.value))
        assert faultmod.injected("C_DecryptInit") == 1
        assert faultmod.injected("C_SignInit") == 1
        assert faultmod.count("C_Decrypt") == decrypts  # refused before any decryption
        assert len(messages) == 1, messages
        message = messages.pop()
        for needed in ("CKM_RSA_X_509", "CKA_SIGN", "allow_process_secret=True"):
            assert needed in message, message
        assert any("allows neither raw RSA nor signing" in r.getMessage() for r in caplog.records)
        # Through the cryptography interface (what jwcrypto's RSA1_5 calls), likewise.
        obj = private_key_for(key)
        assert isinstance(obj, HSMRSAPrivateKey)
        with pytest.raises(HSMMechanismError, match="allow_process_secret"):
            obj.decrypt(good, padding.PKCS1v15())
        # The opt-in: the token removes the padding; bad ciphertexts still never raise.
        assert key.decrypt("RSA_PKCS", good, allow_process_secret=True) == b"k" * 16
        assert obj.decrypt(good, padding.PKCS1v15(), allow_process_secret=True) == b"k" * 16
        before = fpool.stats()["discarded"]
        for what, ct in bad_v15_ciphertexts(pub).items():
            first = key.decrypt("RSA_PKCS", ct, allow_process_secret=True)
            assert key.decrypt("RSA_PKCS", ct, allow_process_secret=True) == first, what
        assert fpool.stats()["discarded"] == before
        assert faultmod.count("C_SignInit") == 1  # derived once, then cached
        # OAEP is unaffected (it needs no rejection secret).
        assert key.decrypt("RSA_OAEP", pub.encrypt(b"o", oaep(SHA1))) == b"o"
    finally:
        fpool.close()
        with pool.session(rw=True) as s:
            s.delete_key(key_label=label)


# -- JOSE ------------------------------------------------------------------------------------


def test_jwe_rsa1_5_with_a_tampered_key_fails_quietly(pool: SessionPool) -> None:
    """jwcrypto's RSA1_5 gets a synthetic CEK from the token key, not an HSMError: the JWE
    fails as it would with a software key, and no session is replaced."""
    key = HSMJWK.from_hsm(pool, key_label="rsa-key")
    algs = ["RSA1_5", "A128GCM"]
    pub = jwk.JWK(**key.export_public(as_dict=True))
    token = jwe.JWE(b"payload", json_encode({"alg": "RSA1_5", "enc": "A128GCM"}), algs=algs)
    token.add_recipient(pub)
    compact = token.serialize(compact=True)
    parts = compact.split(".")
    ek = bytearray(jwk.base64url_decode(parts[1]))
    ek[-1] ^= 1
    parts[1] = jwk.base64url_encode(bytes(ek))
    before = pool.stats()["discarded"]
    with pytest.raises(jwe.InvalidJWEData):
        jwe.JWE(algs=algs).deserialize(".".join(parts), key)
    assert pool.stats()["discarded"] == before
    received = jwe.JWE(algs=algs)
    received.deserialize(compact, key)
    assert received.payload == b"payload"


@pytest.mark.parametrize("alg", ["ECDH-ES", "ECDH-ES+A256KW"])
def test_jwe_ecdh_es_still_works(pool: SessionPool, alg: str) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    pub = jwk.JWK(**key.export_public(as_dict=True))
    token = jwe.JWE(
        b"to the HSM", json_encode({"alg": alg, "enc": "A256GCM"}), algs=[alg, "A256GCM"]
    )
    token.add_recipient(pub)
    received = jwe.JWE(algs=[alg, "A256GCM"])
    received.deserialize(token.serialize(compact=True), key)
    assert received.payload == b"to the HSM"


SNIPPET_ECDH = """
    import os
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from hsmkey import SessionPool
    pool = SessionPool.from_env()
    key = pool.find_key(key_label="ec-key")
    peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    for _ in range(3):
        key.ecdh(peer)
    print(pool.stats()["discarded"])
    pool.close()
"""


def test_ecdh_secret_objects_are_destroyed(spy: Spy) -> None:
    run = spy(SNIPPET_ECDH)
    derives = [c for c in run.sequence if c.function in ("C_DeriveKey", "C_DestroyObject")]
    assert [c.function for c in derives] == ["C_DeriveKey", "C_DestroyObject"] * 3
    assert all(c.rv == "CKR_OK" for c in derives)
    assert run.stdout.strip() == "0"
    # Read once, between derive and destroy.
    fns = [c.function for c in run.sequence]
    i = fns.index("C_DeriveKey")
    j = fns.index("C_DestroyObject", i)
    assert set(fns[i + 1 : j]) == {"C_GetAttributeValue"}


def test_a_failed_destroy_discards_the_session(faultmod: FaultModule, softhsm: SoftHSM) -> None:
    """If the token cannot destroy the derived secret, the session that holds it is closed
    (session objects die with it) instead of going back to the pool."""
    pool = SessionPool(faultmod.path, softhsm.token_label, softhsm.pin)
    try:
        key = private_key_for(pool.find_key(key_label="ec-key"))
        assert isinstance(key, HSMEllipticCurvePrivateKey)
        peer = ec.generate_private_key(ec.SECP256R1())
        ours = key.exchange(ec.ECDH(), peer.public_key())
        assert ours == peer.exchange(ec.ECDH(), key.public_key())
        before = pool.stats()["discarded"]
        closes = faultmod.count("C_CloseSession")
        faultmod.fail("C_DestroyObject", "CKR_DEVICE_ERROR", nth=1, mode="before")
        assert key.exchange(ec.ECDH(), peer.public_key()) == ours  # the caller still gets it
        assert faultmod.injected("C_DestroyObject") == 1
        assert pool.stats()["discarded"] == before + 1
        assert faultmod.count("C_CloseSession") == closes + 1
        assert key.exchange(ec.ECDH(), peer.public_key()) == ours  # and the pool goes on
        assert pool.stats()["discarded"] == before + 1
    finally:
        pool.close()
