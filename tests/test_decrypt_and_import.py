"""Decryption and ECDH in the token; importing software keys; listing keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils
from helpers import SoftHSM
from hsmkey import Key, SessionPool
from hsmkey.exceptions import HSMError, HSMMechanismError

HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha512": hashes.SHA512()}


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def rsa_public(key: Key) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(
        int.from_bytes(key.public_exponent or b"", "big"), int.from_bytes(key.modulus or b"", "big")
    ).public_key()


@pytest.mark.parametrize("hash_name", sorted(HASHES))
@pytest.mark.parametrize("label", [None, b"a label"])
def test_oaep_decrypts_with_every_hash(
    pool: SessionPool, hash_name: str, label: bytes | None
) -> None:
    key = pool.find_key(key_label="rsa-key")
    h = HASHES[hash_name]
    for secret in (b"", b"k" * 16, b"x" * 32):
        ct = rsa_public(key).encrypt(secret, padding.OAEP(padding.MGF1(h), h, label))
        assert key.decrypt("RSA_OAEP", ct, hash=hash_name, label=label) == secret  # type: ignore[arg-type]


def test_oaep_rejects_wrong_hash_and_tampering(pool: SessionPool) -> None:
    key = pool.find_key(key_label="rsa-key")
    h = hashes.SHA256()
    ct = rsa_public(key).encrypt(b"secret", padding.OAEP(padding.MGF1(h), h, None))
    with pytest.raises(HSMError, match="decryption failed"):
        key.decrypt("RSA_OAEP", ct, hash="sha512")
    bad = bytearray(ct)
    bad[10] ^= 1
    with pytest.raises(HSMError):
        key.decrypt("RSA_OAEP", bytes(bad), hash="sha256")
    # The pool is fine afterwards.
    assert key.decrypt("RSA_OAEP", ct, hash="sha256") == b"secret"


def test_pkcs1v15_and_raw(pool: SessionPool) -> None:
    key = pool.find_key(key_label="rsa-key")
    ct = rsa_public(key).encrypt(b"v1.5", padding.PKCS1v15())
    assert key.decrypt("RSA_PKCS", ct) == b"v1.5"
    raw = key.decrypt("RSA_X_509", ct, allow_raw=True)
    assert len(raw) == 256 and raw.endswith(b"\x00v1.5") and raw[:2] == b"\x00\x02"


def test_decrypt_errors(pool: SessionPool) -> None:
    key = pool.find_key(key_label="rsa-key")
    with pytest.raises(ValueError, match="256 bytes"):
        key.decrypt("RSA_PKCS", b"short")
    with pytest.raises(HSMMechanismError, match="unknown decryption"):
        key.decrypt("AES", b"x" * 256)  # type: ignore[arg-type]
    with pytest.raises(HSMMechanismError, match="RSA key"):
        pool.find_key(key_label="ec-key").decrypt("RSA_PKCS", b"x" * 256)


@pytest.mark.parametrize(
    ("label", "curve"),
    [("ec-key", ec.SECP256R1()), ("ec384-key", ec.SECP384R1()), ("ec521-key", ec.SECP521R1())],
)
def test_ecdh_matches_software(pool: SessionPool, label: str, curve: ec.EllipticCurve) -> None:
    key = pool.find_key(key_label=label)
    peer = ec.generate_private_key(curve)
    point = peer.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ours = key.ecdh(point)
    theirs = peer.exchange(
        ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, key.ec_point or b"")
    )
    assert ours == theirs


def test_ecdh_errors(pool: SessionPool) -> None:
    key = pool.find_key(key_label="ec-key")
    with pytest.raises(ValueError, match="uncompressed"):
        key.ecdh(b"\x04" + b"\x01" * 10)
    with pytest.raises(HSMMechanismError, match="ECDH"):
        pool.find_key(key_label="rsa-key").ecdh(b"\x04" * 65)


def software_keys() -> list[object]:
    return [
        rsa.generate_private_key(65537, 2048),
        rsa.generate_private_key(65537, 3072),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP521R1()),
        ec.generate_private_key(ec.SECP256K1()),
        ed25519.Ed25519PrivateKey.generate(),
        ed448.Ed448PrivateKey.generate(),
    ]


def test_import_private_keys_then_sign_and_verify(pool: SessionPool, softhsm: SoftHSM) -> None:
    keys = software_keys()
    labels = [f"imported-{i}" for i in range(len(keys))]
    try:
        with pool.session(rw=True) as s:
            for i, (sw, label) in enumerate(zip(keys, labels)):
                hk = s.import_private_key(sw, label=label, key_id=bytes([0x60 + i]))
                verify_with(sw, hk)
        listing = softhsm.pkcs11_tool("--list-objects", "--type", "privkey")
        for label in labels:
            block = listing.split(f"label:      {label}")[1].split("Object")[0]
            access = block.split("Access:")[1].splitlines()[0]
            assert "sensitive" in access and " extractable" not in access.replace("never", ""), (
                access
            )
        with pool.session() as s:
            found = {k.label for k in s.list_keys()}
        assert set(labels) <= found
    finally:
        with pool.session(rw=True) as s:
            for label in labels:
                s.delete_key(key_label=label)


def verify_with(sw: object, hk: Key) -> None:
    data = b"imported key signs"
    if isinstance(sw, rsa.RSAPrivateKey):
        sw.public_key().verify(hk.sign("RS256", data), data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(sw, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            sw.curve.name, "ES256K"
        )
        h = {"ES384": hashes.SHA384(), "ES512": hashes.SHA512()}.get(alg, hashes.SHA256())
        sig = hk.sign(alg, data)
        n = len(sig) // 2
        der = utils.encode_dss_signature(
            int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big")
        )
        sw.public_key().verify(der, data, ec.ECDSA(h))
    else:
        sw.public_key().verify(hk.sign("EdDSA", data), data)  # type: ignore[attr-defined]


def test_import_rejects_other_objects(pool: SessionPool) -> None:
    with pool.session(rw=True) as s, pytest.raises(TypeError, match="import_private_key"):
        s.import_private_key("not a key", label="x")


def test_list_keys_skips_nothing_usable(pool: SessionPool) -> None:
    keys = pool.list_keys()
    labels = sorted(k.label or "" for k in keys)
    for expected in ("ec-key", "rsa-key", "ed-key", "rfc7515-rsa", "rfc8037-ed25519", "k1-key"):
        assert expected in labels
    assert labels.count("dup-key") == 2
    for k in keys:
        assert (
            k.sign({"RSA": "RS256", "EC_EDWARDS": "EdDSA"}.get(k.key_type, "ES256"), b"x")
            if (k.key_type != "EC" or k.curve == "P-256")
            else True
        )
