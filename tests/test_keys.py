"""hsmkey.keys: HSM-backed keys behind pyca/cryptography's private-key interfaces."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from typing import Any

import hsmkey
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils
from helpers.softhsm import UNIQUE_KEYS, SoftHSM
from helpers.vectors import RFC7515_A2, RFC8037_A4, b64url_decode
from hsmkey.exceptions import HSMError, HSMMechanismError
from hsmkey.keys import (
    NOT_EXTRACTABLE,
    HSMEd448PrivateKey,
    HSMEd25519PrivateKey,
    HSMEllipticCurvePrivateKey,
    HSMRSAPrivateKey,
    private_key_for,
)

DATA = b"hsmkey signs this"
HASHES = [hashes.SHA1(), hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[Any]:
    with hsmkey.SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as pool:
        yield pool


def key(pool: Any, label: str) -> Any:
    return private_key_for(pool.find_key(key_label=label))


def digest(h: hashes.HashAlgorithm, data: bytes = DATA) -> bytes:
    ctx = hashes.Hash(h)
    ctx.update(data)
    return ctx.finalize()


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "cls", "abc", "size"),
    [
        ("rsa-key", HSMRSAPrivateKey, rsa.RSAPrivateKey, 2048),
        ("rfc7515-rsa", HSMRSAPrivateKey, rsa.RSAPrivateKey, 2048),
        ("ec-key", HSMEllipticCurvePrivateKey, ec.EllipticCurvePrivateKey, 256),
        ("ec384-key", HSMEllipticCurvePrivateKey, ec.EllipticCurvePrivateKey, 384),
        ("ec521-key", HSMEllipticCurvePrivateKey, ec.EllipticCurvePrivateKey, 521),
        ("k1-key", HSMEllipticCurvePrivateKey, ec.EllipticCurvePrivateKey, 256),
        ("ed-key", HSMEd25519PrivateKey, ed25519.Ed25519PrivateKey, None),
        ("rfc8037-ed25519", HSMEd25519PrivateKey, ed25519.Ed25519PrivateKey, None),
    ],
)
def test_factory_picks_the_class(
    pool: Any, label: str, cls: Any, abc: Any, size: int | None
) -> None:
    k = key(pool, label)
    assert type(k) is cls and isinstance(k, abc)
    assert k.hsm_key.label == label
    if size is not None:
        assert k.key_size == size
    # the class constructors work too, and share the cached public key
    assert cls(pool.find_key(key_label=label)).public_key() is k.public_key()


def test_curves(pool: Any) -> None:
    assert isinstance(key(pool, "ec-key").curve, ec.SECP256R1)
    assert isinstance(key(pool, "ec384-key").curve, ec.SECP384R1)
    assert isinstance(key(pool, "ec521-key").curve, ec.SECP521R1)
    assert isinstance(key(pool, "k1-key").curve, ec.SECP256K1)


def test_class_constructor_refuses_another_key_type(pool: Any) -> None:
    with pytest.raises(HSMMechanismError, match="ec-key"):
        HSMRSAPrivateKey(pool.find_key(key_label="ec-key"))


def test_public_key_of_imported_rsa_key_is_the_published_one(pool: Any) -> None:
    numbers = key(pool, "rfc7515-rsa").public_key().public_numbers()
    assert numbers.n == int.from_bytes(b64url_decode(RFC7515_A2.jwk["n"]), "big")
    assert numbers.e == 65537


# -- RSA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_rsa_pkcs1v15(pool: Any, h: hashes.HashAlgorithm) -> None:
    k = key(pool, "rsa-key")
    sig = k.sign(DATA, padding.PKCS1v15(), h)
    k.public_key().verify(sig, DATA, padding.PKCS1v15(), h)
    # deterministic: the prehashed form gives the same signature
    assert k.sign(digest(h), padding.PKCS1v15(), utils.Prehashed(h)) == sig


def test_rsa_pkcs1v15_reproduces_rfc7515_a2(pool: Any) -> None:
    sig = key(pool, "rfc7515-rsa").sign(
        RFC7515_A2.signing_input, padding.PKCS1v15(), hashes.SHA256()
    )
    assert sig == RFC7515_A2.signature_bytes


@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
@pytest.mark.parametrize(
    "salt", [padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH, 0, 20], ids=str
)
def test_rsa_pss(pool: Any, h: hashes.HashAlgorithm, salt: Any) -> None:
    k = key(pool, "rsa-key")
    pss = padding.PSS(padding.MGF1(h), salt)
    sig = k.sign(DATA, pss, h)
    # verifying with the exact salt length proves the HSM used the length asked for
    want = {
        padding.PSS.DIGEST_LENGTH: h.digest_size,
        padding.PSS.MAX_LENGTH: 256 - h.digest_size - 2,
    }
    exact = want.get(salt, salt)
    k.public_key().verify(sig, DATA, padding.PSS(padding.MGF1(h), exact), h)
    sig = k.sign(digest(h), pss, utils.Prehashed(h))
    k.public_key().verify(sig, DATA, padding.PSS(padding.MGF1(h), exact), h)


def test_rsa_pss_auto_is_for_verification_only(pool: Any) -> None:
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO)
    with pytest.raises(ValueError, match="Auto"):
        key(pool, "rsa-key").sign(DATA, pss, hashes.SHA256())


def test_rsa_pss_salt_too_long(pool: Any) -> None:
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 256 - 32 - 1)
    with pytest.raises(ValueError, match="too long"):
        key(pool, "rsa-key").sign(DATA, pss, hashes.SHA256())


def test_rsa_pss_mgf1_hash_must_match(pool: Any) -> None:
    pss = padding.PSS(padding.MGF1(hashes.SHA1()), 32)
    with pytest.raises(HSMMechanismError, match="MGF1"):
        key(pool, "rsa-key").sign(DATA, pss, hashes.SHA256())


def test_rsa_unsupported_hash_and_padding(pool: Any) -> None:
    k = key(pool, "rsa-key")
    with pytest.raises(HSMMechanismError, match="sha3-256"):
        k.sign(DATA, padding.PKCS1v15(), hashes.SHA3_256())
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    with pytest.raises(HSMMechanismError, match="OAEP"):
        k.sign(DATA, oaep, hashes.SHA256())
    with pytest.raises(TypeError):
        k.sign(DATA, padding.PKCS1v15(), "sha256")


def test_rsa_prehashed_length_is_checked(pool: Any) -> None:
    with pytest.raises(ValueError, match="digest size"):
        key(pool, "rsa-key").sign(b"short", padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
@pytest.mark.parametrize("label", [None, b"oaep label"])
def test_rsa_decrypt_oaep(pool: Any, h: hashes.HashAlgorithm, label: bytes | None) -> None:
    k = key(pool, "rsa-key")
    oaep = padding.OAEP(padding.MGF1(h), h, label)
    for secret in (b"k" * 16, b"x" * 32):
        assert k.decrypt(k.public_key().encrypt(secret, oaep), oaep) == secret


def test_rsa_decrypt_pkcs1v15(pool: Any) -> None:
    k = key(pool, "rsa-key")
    ciphertext = k.public_key().encrypt(b"v1.5 secret", padding.PKCS1v15())
    assert k.decrypt(ciphertext, padding.PKCS1v15()) == b"v1.5 secret"
    assert k.decrypt(bytearray(ciphertext), padding.PKCS1v15()) == b"v1.5 secret"


def test_rsa_decrypt_errors(pool: Any) -> None:
    k = key(pool, "rsa-key")
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    ciphertext = k.public_key().encrypt(b"secret", oaep)
    with pytest.raises(HSMError):  # wrong hash: the padding does not check out
        k.decrypt(ciphertext, padding.OAEP(padding.MGF1(hashes.SHA512()), hashes.SHA512(), None))
    with pytest.raises(HSMMechanismError, match="encryption padding"):
        k.decrypt(ciphertext, padding.PSS(padding.MGF1(hashes.SHA256()), 32))
    with pytest.raises(HSMMechanismError, match="sha3-256"):
        k.decrypt(ciphertext, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA3_256(), None))
    assert k.decrypt(ciphertext, oaep) == b"secret"  # the key still works


# -- EC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["ec-key", "ec384-key", "ec521-key", "k1-key"])
@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_ecdsa(pool: Any, label: str, h: hashes.HashAlgorithm) -> None:
    k = key(pool, label)
    der = k.sign(DATA, ec.ECDSA(h))
    utils.decode_dss_signature(der)  # DER, like cryptography's own keys
    k.public_key().verify(der, DATA, ec.ECDSA(h))
    der = k.sign(digest(h), ec.ECDSA(utils.Prehashed(h)))
    k.public_key().verify(der, DATA, ec.ECDSA(h))
    with pytest.raises(InvalidSignature):
        k.public_key().verify(der, DATA + b"!", ec.ECDSA(h))


def test_ecdsa_accepts_bytes_like_data(pool: Any) -> None:
    k = key(pool, "ec-key")
    for data in (bytearray(DATA), memoryview(DATA)):
        k.public_key().verify(
            k.sign(data, ec.ECDSA(hashes.SHA256())), DATA, ec.ECDSA(hashes.SHA256())
        )


def test_ecdsa_deterministic_is_refused(pool: Any) -> None:
    try:
        algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except Exception:  # older cryptography or OpenSSL
        pytest.skip("deterministic ECDSA not available in this cryptography")
    with pytest.raises(HSMMechanismError, match="RFC 6979"):
        key(pool, "ec-key").sign(DATA, algorithm)


@pytest.mark.parametrize("label", ["ec-key", "ec384-key", "ec521-key"])
def test_ecdh_exchange(pool: Any, label: str) -> None:
    k = key(pool, label)
    peer = ec.generate_private_key(k.curve)
    assert k.exchange(ec.ECDH(), peer.public_key()) == peer.exchange(ec.ECDH(), k.public_key())


def test_ecdh_exchange_errors(pool: Any) -> None:
    k = key(pool, "ec-key")
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError, match="same curve"):
        k.exchange(ec.ECDH(), other_curve)
    with pytest.raises(TypeError):
        k.exchange(ec.ECDH(), ed25519.Ed25519PrivateKey.generate().public_key())


def test_rsa_call_on_ec_key_names_algorithm_and_key(pool: Any) -> None:
    with pytest.raises(HSMMechanismError, match=r"RS256.*'ec-key'"):
        key(pool, "ec-key").sign(DATA, padding.PKCS1v15(), hashes.SHA256())


# -- Ed25519 --------------------------------------------------------------------------------


def test_ed25519(pool: Any) -> None:
    k = key(pool, "ed-key")
    sig = k.sign(DATA)
    k.public_key().verify(sig, DATA)
    assert k.sign(DATA) == sig  # pure EdDSA is deterministic


def test_ed25519_reproduces_rfc8037_a4(pool: Any) -> None:
    k = key(pool, "rfc8037-ed25519")
    assert k.public_key().public_bytes_raw() == b64url_decode(RFC8037_A4.jwk["x"])
    assert k.sign(RFC8037_A4.signing_input) == RFC8037_A4.signature_bytes


def test_ecdsa_call_on_ed25519_key_is_refused(pool: Any) -> None:
    with pytest.raises(HSMMechanismError, match="ECDSA"):
        key(pool, "ed-key").sign(DATA, ec.ECDSA(hashes.SHA256()))


# -- not extractable, copies, pickling, repr ------------------------------------------------


@pytest.mark.parametrize("label", ["rsa-key", "ec-key", "ed-key"])
def test_private_key_cannot_be_exported(pool: Any, label: str) -> None:
    k = key(pool, label)
    with pytest.raises(HSMMechanismError, match="cannot be exported") as info:
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    assert str(info.value) == NOT_EXTRACTABLE
    assert isinstance(info.value, HSMError)
    if label == "ed-key":
        with pytest.raises(HSMMechanismError, match="cannot be exported"):
            k.private_bytes_raw()
    else:
        with pytest.raises(HSMMechanismError, match="cannot be exported"):
            k.private_numbers()


def test_copies_are_the_same_object(pool: Any) -> None:
    k = key(pool, "ec-key")
    assert copy.copy(k) is k
    assert copy.deepcopy(k) is k


def test_pickling_is_refused(pool: Any) -> None:
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(key(pool, "ec-key"))


def test_repr_shows_label_and_id(pool: Any) -> None:
    text = repr(key(pool, "ec-key"))
    assert "HSMEllipticCurvePrivateKey" in text
    assert "'ec-key'" in text
    assert "02" in text
    assert "P-256" in text


# -- PyJWT accepts the key objects ----------------------------------------------------------


@pytest.mark.parametrize(
    "label", sorted(label for label, spec in UNIQUE_KEYS.items() if spec.alg != "ES256K")
)
def test_pyjwt(pool: Any, label: str) -> None:
    jwt = pytest.importorskip("jwt")
    spec = UNIQUE_KEYS[label]
    k = key(pool, label)
    algs = (
        ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
        if spec.key_type == "RSA"
        else [spec.alg]
    )
    for alg in algs:
        token = jwt.encode({"sub": "hsmkey"}, k, algorithm=alg)
        assert jwt.decode(token, k.public_key(), algorithms=[alg]) == {"sub": "hsmkey"}


# -- Ed448 (pkcs11-tool cannot make one: generated here, deleted after) ---------------------


@pytest.fixture(scope="module")
def ed448_label(pool: Any) -> Iterator[str]:
    label = "test-keys-ed448"
    with pool.session(rw=True) as session:
        session.generate_key_pair("Ed448", label=label, key_id=b"\xee\x48")
    try:
        yield label
    finally:
        with pool.session(rw=True) as session:
            session.delete_key(key_label=label)


def test_ed448(pool: Any, ed448_label: str) -> None:
    k = key(pool, ed448_label)
    assert type(k) is HSMEd448PrivateKey
    assert isinstance(k, ed448.Ed448PrivateKey)
    sig = k.sign(DATA)
    assert len(sig) == 114
    k.public_key().verify(sig, DATA)
    with pytest.raises(HSMMechanismError, match="cannot be exported"):
        k.private_bytes_raw()
    jwt = pytest.importorskip("jwt")
    token = jwt.encode({"sub": "ed448"}, k, algorithm="EdDSA")
    assert jwt.decode(token, k.public_key(), algorithms=["EdDSA"]) == {"sub": "ed448"}
