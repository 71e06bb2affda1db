"""Trust under change: key identity, proven public keys, freshness, duplicates, verification.

The token is changed from outside the way another process or an attacker would change it:
``hsmkey delete`` / ``hsmkey generate`` and ``pkcs11-tool`` in subprocesses, and public-key
objects planted through a read-write *public* session (no login, so no PIN) by PyKCS11 in a
subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers import SoftHSM, Spy
from hsmkey import HSMJWK, SessionPool, jwks
from hsmkey.exceptions import HSMError, HSMKeyChangedError, HSMKeyNotFoundError
from jwcrypto import jwk, jws

P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")

# Creates a public-key object without logging in (a read-write public session): what anyone
# who can reach the token can do without the PIN.
PLANT = r"""
import sys
import PyKCS11
from PyKCS11.LowLevel import CKA_EC_PARAMS, CKA_EC_POINT
module, slot, label, key_id, params, point = sys.argv[1:7]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
s = lib.openSession(int(slot), PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
assert s.getSessionInfo().state == PyKCS11.CKS_RW_PUBLIC_SESSION
s.createObject([
    (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
    (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
    (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
    (PyKCS11.CKA_PRIVATE, PyKCS11.CK_FALSE),
    (PyKCS11.CKA_VERIFY, PyKCS11.CK_TRUE),
    (PyKCS11.CKA_LABEL, label),
    (PyKCS11.CKA_ID, list(bytes.fromhex(key_id))),
    (CKA_EC_PARAMS, list(bytes.fromhex(params))),
    (CKA_EC_POINT, list(bytes.fromhex(point))),
])
s.closeSession()
"""


def plant_public_key(softhsm: SoftHSM, label: str, key_id: bytes) -> bytes:
    """Plants an attacker's P-256 public key under ``label``/``key_id``; returns its point."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    point = attacker.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    der_point = bytes([0x04, len(point)]) + point
    subprocess.run(
        [
            sys.executable,
            "-c",
            PLANT,
            softhsm.module,
            str(softhsm.slot_id),
            label,
            key_id.hex(),
            P256_PARAMS.hex(),
            der_point.hex(),
        ],
        env={**os.environ, **softhsm.env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return point


def hsmkey_cli(softhsm: SoftHSM, *args: str) -> str:
    """Runs the ``hsmkey`` CLI in another process (another PKCS#11 application)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hsmkey", *args],
        env={**os.environ, **softhsm.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def replace_key(softhsm: SoftHSM, label: str, key_type: str = "EC") -> None:
    """Another process deletes the key and makes a new one under the same label."""
    hsmkey_cli(softhsm, "delete", "--label", label, "--yes")
    hsmkey_cli(softhsm, "generate", "--type", key_type, "--label", label)


def unique(prefix: str) -> tuple[str, bytes]:
    tag = uuid.uuid4().hex[:8]
    return f"{prefix}-{tag}", bytes.fromhex(tag)


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


@pytest.fixture
def cleanup(softhsm: SoftHSM) -> Iterator[list[dict[str, object]]]:
    """Queries whose objects (private, public, planted) are deleted after the test."""
    queries: list[dict[str, object]] = []
    yield queries
    with (
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as p,
        p.session(rw=True) as s,
    ):
        for q in queries:
            s.delete_key(**q)  # type: ignore[arg-type]


def verifies(public_jwk: dict[str, object], token: str) -> bool:
    obj = jws.JWS()
    obj.deserialize(token)
    try:
        obj.verify(jwk.JWK(**public_jwk))
    except jws.InvalidJWSSignature:
        return False
    return True


# --- Key identity -------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["EC", "RSA", "Ed25519"])
def test_a_key_replaced_under_its_label_raises_key_changed(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]], key_type: str
) -> None:
    label, _ = unique(f"replaced-{key_type.lower()}")
    cleanup.append({"key_label": label})
    hsmkey_cli(softhsm, "generate", "--type", key_type, "--label", label)
    old = HSMJWK.from_hsm(pool, key_label=label)
    alg = old.default_alg
    assert verifies(old.export_public(as_dict=True), old.sign_compact(b"before", alg=alg))

    replace_key(softhsm, label, key_type)

    with pytest.raises(HSMKeyChangedError, match="not the key this object was made with"):
        old.sign_compact(b"after", alg=alg)
    # It stays that way (no signature by the other key, ever).
    with pytest.raises(HSMKeyChangedError):
        old.hsm_key.sign(alg, b"again")
    # The pool's cache took the new key: a new from_hsm has the new kid and public key.
    new = HSMJWK.from_hsm(pool, key_label=label)
    assert new["kid"] != old["kid"]
    assert verifies(new.export_public(as_dict=True), new.sign_compact(b"new", alg=alg))
    assert not verifies(old.export_public(as_dict=True), new.sign_compact(b"new", alg=alg))
    # A session-bound key loaded in a block sees the new key too.
    with pool.session() as s:
        assert HSMJWK.from_hsm(s, key_label=label)["kid"] == new["kid"]
    assert new["kid"] in {k["kid"] for k in jwks(pool)["keys"]}
    assert old["kid"] not in {k["kid"] for k in jwks(pool)["keys"]}


def test_the_same_key_after_a_relogin_keeps_working(
    softhsm: SoftHSM, pool: SessionPool, faults: object
) -> None:
    # A re-login renumbers SoftHSM2's handles: the key is found again and proven the same
    # (for an EC key without its point on the private object, by a probe signature).
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    before = key.sign_compact(b"x", alg="ES256")
    faults.logout()  # type: ignore[attr-defined]
    after = key.sign_compact(b"y", alg="ES256")
    assert verifies(key.export_public(as_dict=True), before)
    assert verifies(key.export_public(as_dict=True), after)
    assert pool.stats()["relogins"] == 1


# --- Freshness ----------------------------------------------------------------------------


def test_refresh_makes_the_next_lookup_see_the_token_now(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    label, _ = unique("refresh")
    cleanup.append({"key_label": label})
    hsmkey_cli(softhsm, "generate", "--type", "EC", "--label", label)
    old = HSMJWK.from_hsm(pool, key_label=label)
    replace_key(softhsm, label)
    # Within key_cache_ttl (60 s by default) a lookup is the cached one...
    assert HSMJWK.from_hsm(pool, key_label=label)["kid"] == old["kid"]
    # ...until refresh().
    pool.refresh()
    new = HSMJWK.from_hsm(pool, key_label=label)
    assert new["kid"] != old["kid"]
    assert verifies(new.export_public(as_dict=True), new.sign_compact(b"n", alg="ES256"))
    # The refresh found the old object's key gone: the old object says so at once.
    with pytest.raises(HSMKeyChangedError):
        old.sign_compact(b"o", alg="ES256")


def test_lookups_expire_after_key_cache_ttl(
    softhsm: SoftHSM, cleanup: list[dict[str, object]]
) -> None:
    label, _ = unique("ttl")
    cleanup.append({"key_label": label})
    hsmkey_cli(softhsm, "generate", "--type", "EC", "--label", label)
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, key_cache_ttl=0.5) as pool:
        assert pool.key_cache_ttl == 0.5
        with pool.session() as s:
            old = HSMJWK.from_hsm(s, key_label=label)["kid"]
        replace_key(softhsm, label)
        time.sleep(0.6)
        with pool.session() as s:
            new = HSMJWK.from_hsm(s, key_label=label)
            assert new["kid"] != old
            assert verifies(new.export_public(as_dict=True), new.sign_compact(b"t", alg="ES256"))


def test_key_cache_ttl_is_checked(softhsm: SoftHSM) -> None:
    with pytest.raises(ValueError, match="key_cache_ttl"):
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, key_cache_ttl=-1)
    assert SessionPool(softhsm.module, softhsm.token_label, softhsm.pin).key_cache_ttl == 60.0


SHORT_BLOCKS = """
import os
from hsmkey import HSMJWK, SessionPool
pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"],
                   key_cache_ttl=float(os.environ["TTL"]))
bound = HSMJWK.from_hsm(pool, key_label="ec-key")
bound.sign_compact(b"warm", alg="ES256")
with pool.session() as s:
    HSMJWK.from_hsm(s, key_label="ec-key").sign_compact(b"warm", alg="ES256")
for i in range(int(os.environ["BLOCKS"])):
    if os.environ["MODE"] == "bound":
        bound.sign_compact(b"x", alg="ES256")
        continue
    with pool.session() as s:
        key = HSMJWK.from_hsm(s, key_label="ec-key")
        key.sign_compact(b"x", alg="ES256")
pool.close()
"""


def _block_calls(spy: Spy, ttl: str, mode: str = "blocks") -> dict[str, int]:
    """PKCS#11 calls of 20 signatures on a warm pool (a run with them minus one without)."""
    env = {"TTL": ttl, "MODE": mode}
    base = spy(SHORT_BLOCKS, env={**env, "BLOCKS": "0"}).calls
    full = spy(SHORT_BLOCKS, env={**env, "BLOCKS": "20"}).calls
    return {f: full[f] - base[f] for f in full if full[f] != base[f]}


def test_a_warm_signature_is_still_two_calls(spy: Spy) -> None:
    # Identity checks, expiry and proofs cost lookups, never a warm signature.
    assert _block_calls(spy, "0", "bound") == {"C_SignInit": 20, "C_Sign": 20}


def test_short_blocks_cost_no_lookup_while_fresh_and_one_search_after_expiry(spy: Spy) -> None:
    fresh = _block_calls(spy, "60")
    # The seed guide's pattern on a warm pool: two calls a signature, no lookup.
    assert fresh == {"C_SignInit": 20, "C_Sign": 20}, fresh
    expired = _block_calls(spy, "0")
    # key_cache_ttl=0: every lookup searches once and finds the same handle: nothing more.
    assert expired == {
        "C_SignInit": 20,
        "C_Sign": 20,
        "C_FindObjectsInit": 20,
        "C_FindObjects": 20,
        "C_FindObjectsFinal": 20,
    }, expired


# --- Public keys only from proven sources ---------------------------------------------


def _genuine_ec_key(softhsm: SoftHSM, label: str, key_id: bytes) -> None:
    softhsm.pkcs11_tool(
        "--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", key_id.hex()
    )


def test_a_planted_public_key_is_never_published(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    label, key_id = unique("planted")
    cleanup.append({"key_id": key_id})
    _genuine_ec_key(softhsm, label, key_id)
    softhsm.pkcs11_tool("--delete-object", "--type", "pubkey", "--id", key_id.hex())
    planted = plant_public_key(softhsm, label, key_id)

    with pytest.raises(HSMKeyNotFoundError, match="does not verify a signature made by"):
        HSMJWK.from_hsm(pool, key_label=label)
    with pytest.raises(HSMKeyNotFoundError):
        pool.find_key(key_id=key_id)
    # Left out of the listing and of the JWKS; nothing anywhere carries the planted point.
    assert all(k.label != label for k in pool.list_keys())
    assert planted not in [k.ec_point for k in pool.list_keys()]
    assert all(k.get("kid") for k in jwks(pool)["keys"])


def test_a_planted_twin_beside_the_genuine_public_key_is_ignored(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    label, key_id = unique("twin")
    cleanup.append({"key_id": key_id})
    _genuine_ec_key(softhsm, label, key_id)
    genuine = HSMJWK.from_hsm(pool, key_label=label)
    genuine_point = genuine.hsm_key.ec_point
    planted = plant_public_key(softhsm, label, key_id)
    assert planted != genuine_point

    # A new pool (nothing cached) proves the genuine point and ignores the twin.
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as other:
        key = HSMJWK.from_hsm(other, key_label=label)
        assert key.hsm_key.ec_point == genuine_point
        assert key["kid"] == genuine["kid"]
        assert verifies(key.export_public(as_dict=True), key.sign_compact(b"t", alg="ES256"))
        published = [k for k in jwks(other)["keys"] if k["kid"] == genuine["kid"]]
        assert len(published) == 1


# A P-256 key pair that may derive but not sign (CKA_SIGN false, CKA_DERIVE true), made by
# another application; SoftHSM2 keeps its point in the public-key object only. Prints the
# public point (hex).
DERIVE_ONLY = r"""
import sys
import PyKCS11
from PyKCS11.LowLevel import CKA_EC_PARAMS, CKA_EC_POINT
module, slot, pin, label, key_id, params = sys.argv[1:7]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
s = lib.openSession(int(slot), PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
s.login(pin)
kid = list(bytes.fromhex(key_id))
public, private = s.generateKeyPair(
    [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_VERIFY, PyKCS11.CK_FALSE),
        (PyKCS11.CKA_DERIVE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_LABEL, label),
        (PyKCS11.CKA_ID, kid),
        (CKA_EC_PARAMS, list(bytes.fromhex(params))),
    ],
    [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_SENSITIVE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_SIGN, PyKCS11.CK_FALSE),
        (PyKCS11.CKA_DERIVE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_LABEL, label),
        (PyKCS11.CKA_ID, kid),
    ],
    mecha=PyKCS11.MechanismECGENERATEKEYPAIR,
)
point = bytes(s.getAttributeValue(public, [CKA_EC_POINT])[0])
print(point.hex())
s.logout()
s.closeSession()
"""


def _derive_only_key(softhsm: SoftHSM, label: str, key_id: bytes) -> bytes:
    """Makes a derive-only P-256 key pair in the token; returns its uncompressed point."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            DERIVE_ONLY,
            softhsm.module,
            str(softhsm.slot_id),
            softhsm.pin,
            label,
            key_id.hex(),
            P256_PARAMS.hex(),
        ],
        env={**os.environ, **softhsm.env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    der_point = bytes.fromhex(proc.stdout.strip())
    assert der_point[:2] == b"\x04\x41"  # an OCTET STRING around the uncompressed point
    return der_point[2:]


def test_a_derive_only_key_is_proven_by_ecdh(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    """An EC key that may derive but not sign, whose private object does not carry its point,
    gets its public key from the public-key object whose point gives the token's own ECDH
    result with a throwaway peer; a planted twin beside it is ignored. (It used to be left
    out: the proof was a signature, which such a key cannot make.)"""
    label, key_id = unique("derive-only")
    cleanup.append({"key_id": key_id})
    genuine = _derive_only_key(softhsm, label, key_id)
    planted = plant_public_key(softhsm, label, key_id)
    assert planted != genuine

    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as fresh:
        key = fresh.find_key(key_label=label)
        assert key.ec_point == genuine
        peer = ec.generate_private_key(ec.SECP256R1())
        peer_point = peer.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        expected = peer.exchange(
            ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), genuine)
        )
        assert key.ecdh(peer_point) == expected
        listed = [k for k in fresh.list_keys() if k.label == label]
        assert [k.ec_point for k in listed] == [genuine]
        assert planted not in [k.ec_point for k in fresh.list_keys()]


def test_a_derive_only_key_with_only_a_planted_public_key_is_left_out(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    label, key_id = unique("derive-planted")
    cleanup.append({"key_id": key_id})
    _derive_only_key(softhsm, label, key_id)
    softhsm.pkcs11_tool("--delete-object", "--type", "pubkey", "--id", key_id.hex())
    planted = plant_public_key(softhsm, label, key_id)
    with pytest.raises(HSMKeyNotFoundError, match="does not give the private key's ECDH result"):
        pool.find_key(key_label=label)
    assert planted not in [k.ec_point for k in pool.list_keys()]


# --- Duplicates ---------------------------------------------------------------------------


def test_generate_refuses_a_label_or_id_the_token_has(
    pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    label, key_id = unique("dup")
    cleanup.append({"key_label": label})
    with pool.session(rw=True) as s:
        s.generate_key_pair("EC", label=label, key_id=key_id)
        with pytest.raises(ValueError, match=f"has a key with label '{label}' already"):
            s.generate_key_pair("EC", label=label)
        with pytest.raises(ValueError, match=f"has a key with id {key_id.hex()} already"):
            s.generate_key_pair("EC", label=label + "-other", key_id=key_id)
        with pytest.raises(ValueError, match="already"):
            s.import_private_key(ec.generate_private_key(ec.SECP256R1()), label=label)
    assert len([k for k in pool.list_keys() if k.label == label]) == 1


def test_import_refuses_a_key_the_token_has_under_another_label(
    pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    label, _ = unique("imp")
    cleanup.append({"key_label": label})
    cleanup.append({"key_label": label + "-again"})
    for private in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        cleanup.append({"key_label": label})
        with pool.session(rw=True) as s:
            s.import_private_key(private, label=label)
            with pytest.raises(ValueError, match="has this key already"):
                s.import_private_key(private, label=label + "-again")
            s.delete_key(key_label=label)
    assert all(k.label != label + "-again" for k in pool.list_keys())


def test_duplicates_made_by_other_tools(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]]
) -> None:
    # Two keys with one label and one id (pkcs11-tool does not refuse): the hint does not
    # ask for the key_id that was given.
    label, key_id = unique("twice")
    cleanup.append({"key_id": key_id})
    _genuine_ec_key(softhsm, label, key_id)
    _genuine_ec_key(softhsm, label, key_id)
    with pytest.raises(HSMKeyNotFoundError) as info:
        pool.find_key(key_label=label, key_id=key_id)
    assert "give key_id=" not in str(info.value)
    assert "same id twice" in str(info.value)
    with pytest.raises(HSMKeyNotFoundError, match="give key_id="):
        pool.find_key(key_label=label)


def test_jwks_publishes_each_key_once(
    softhsm: SoftHSM, pool: SessionPool, cleanup: list[dict[str, object]], tmp_path: object
) -> None:
    # The same key material stored under two labels (by another tool): one JWKS member.
    label, _ = unique("same")
    der = os.path.join(str(tmp_path), "k.der")
    private = rsa.generate_private_key(65537, 2048)
    with open(der, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    for n, suffix in enumerate(("a", "b")):
        cleanup.append({"key_label": f"{label}-{suffix}"})
        softhsm.pkcs11_tool(
            "--write-object",
            der,
            "--type",
            "privkey",
            "--label",
            f"{label}-{suffix}",
            "--id",
            f"77{n:02x}",
            "--usage-sign",
        )
    kids = [k["kid"] for k in jwks(pool)["keys"]]
    assert len(kids) == len(set(kids))
    mine = [k for k in pool.list_keys() if (k.label or "").startswith(label)]
    assert len(mine) == 2


# --- verify_signatures --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "algs"),
    [
        ("ec-key", ["ES256"]),
        ("rsa-key", ["RS256", "PS256", "RS512", "PS384"]),
        ("ed-key", ["EdDSA"]),
        ("rfc8037-ed25519", ["EdDSA"]),
    ],
)
def test_verify_signatures_checks_every_signature(
    softhsm: SoftHSM, label: str, algs: list[str]
) -> None:
    with SessionPool(
        softhsm.module, softhsm.token_label, softhsm.pin, verify_signatures=True
    ) as pool:
        assert pool.verify_signatures
        key = HSMJWK.from_hsm(pool, key_label=label)
        for alg in algs:
            token = key.sign_compact(b"payload", alg=alg)
            assert verifies(key.export_public(as_dict=True), token)
            assert len(key.hsm_key.sign_many(alg, [b"a", b"b"])) == 2


def test_verify_signatures_covers_every_curve(
    pool: SessionPool, cleanup: list[dict[str, object]], softhsm: SoftHSM
) -> None:
    tag = uuid.uuid4().hex[:8]
    with pool.session(rw=True) as s:
        for key_type, curve in [
            ("EC", "P-384"),
            ("EC", "P-521"),
            ("EC", "secp256k1"),
            ("Ed448", None),
        ]:
            label = f"verify-{curve or key_type}-{tag}"
            cleanup.append({"key_label": label})
            s.generate_key_pair(key_type, label=label, curve=curve)
    with SessionPool(
        softhsm.module, softhsm.token_label, softhsm.pin, verify_signatures=True
    ) as checked:
        for curve, alg in [
            ("P-384", "ES384"),
            ("P-521", "ES512"),
            ("secp256k1", "ES256K"),
            ("Ed448", "EdDSA"),
        ]:
            key = HSMJWK.from_hsm(checked, key_label=f"verify-{curve}-{tag}")
            assert verifies(key.export_public(as_dict=True), key.sign_compact(b"p", alg=alg))


def test_from_env_reads_the_key_cache_ttl(
    softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in softhsm.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HSM_KEY_CACHE_TTL", "5")
    with SessionPool.from_env() as p:
        assert p.key_cache_ttl == 5.0
    monkeypatch.setenv("HSM_KEY_CACHE_TTL", "soon")
    with pytest.raises(ValueError, match="HSM_KEY_CACHE_TTL"):
        SessionPool.from_env()


def test_key_changed_is_an_hsm_error() -> None:
    assert issubclass(HSMKeyChangedError, HSMError)
    assert json.dumps(str(HSMKeyChangedError("m"))) == '"m"'
