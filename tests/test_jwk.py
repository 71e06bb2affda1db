"""hsmkey.HSMJWK: jwcrypto JWS / JWT signing with keys held in the token."""

from __future__ import annotations

import copy
import json
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import hsmkey
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from helpers.softhsm import UNIQUE_KEYS, SoftHSM
from helpers.vectors import RFC7515_A2, RFC8037_A4
from hsmkey.exceptions import HSMError, HSMKeyNotFoundError, HSMMechanismError
from hsmkey.jwk import HSMJWK
from hsmkey.keys import HSMEllipticCurvePrivateKey
from jwcrypto import jwe, jwk, jws, jwt
from jwcrypto.common import json_encode

RSA_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
# label -> the algorithms that key signs
SIGNING = {
    label: (RSA_ALGS if spec.key_type == "RSA" else [spec.alg])
    for label, spec in UNIQUE_KEYS.items()
}
# RFC 9864's fully specified "Ed25519" (jwcrypto >= 1.5.7)
_ED = ["EdDSA", "Ed25519"] if "Ed25519" in jws.default_allowed_algs else ["EdDSA"]
SIGNING["ed-key"] = _ED
SIGNING["rfc8037-ed25519"] = _ED
CASES = [(label, alg) for label, algs in sorted(SIGNING.items()) for alg in algs]


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[Any]:
    with hsmkey.SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as pool:
        yield pool


def public_jwk(key: HSMJWK) -> jwk.JWK:
    """A plain software JWK made from the exported public key: what a verifier has."""
    return jwk.JWK(**json.loads(key.export_public()))


def sign_compact(key: HSMJWK, alg: str, payload: bytes = b"hsmkey payload") -> str:
    token = jws.JWS(payload)
    token.add_signature(key, alg=alg, protected=json_encode({"alg": alg, "kid": key["kid"]}))
    return str(token.serialize(compact=True))


def verify_compact(compact: str, key: jwk.JWK, alg: str) -> bytes:
    token = jws.JWS()
    token.deserialize(compact, key, alg=alg)
    return bytes(token.payload)


# -- signing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "alg"), CASES)
def test_jws_sign_in_session_block(pool: Any, label: str, alg: str) -> None:
    with pool.session() as session:
        key = HSMJWK.from_hsm(session, key_label=label)
        compact = sign_compact(key, alg)
    assert verify_compact(compact, public_jwk(key), alg) == b"hsmkey payload"


@pytest.mark.parametrize(("label", "alg"), CASES)
def test_jwt_with_pool_bound_key(pool: Any, label: str, alg: str) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    token = jwt.JWT(header={"alg": alg, "kid": key["kid"]}, claims={"sub": "hsmkey", "n": 1})
    token.make_signed_token(key)
    check = jwt.JWT(jwt=token.serialize(), key=public_jwk(key), algs=[alg])
    assert json.loads(check.claims) == {"sub": "hsmkey", "n": 1}


def test_rfc7515_a2_byte_for_byte(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="rfc7515-rsa")
    token = jws.JWS(RFC7515_A2.payload_bytes)
    token.add_signature(key, alg="RS256", protected=RFC7515_A2.protected_header)
    assert token.serialize(compact=True) == RFC7515_A2.compact


def test_rfc8037_a4_byte_for_byte(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="rfc8037-ed25519")
    token = jws.JWS(RFC8037_A4.payload_bytes)
    token.add_signature(key, alg="EdDSA", protected=RFC8037_A4.protected_header)
    assert token.serialize(compact=True) == RFC8037_A4.compact


def test_json_serialization_with_two_signatures(pool: Any) -> None:
    rsa_key = HSMJWK.from_hsm(pool, key_label="rsa-key")
    ec_key = HSMJWK.from_hsm(pool, key_label="ec-key")
    token = jws.JWS(b"two signers")
    token.add_signature(rsa_key, alg="PS256", protected=json_encode({"alg": "PS256"}))
    token.add_signature(ec_key, alg="ES256", protected=json_encode({"alg": "ES256"}))
    serialized = token.serialize()
    keys = jwk.JWKSet()
    keys.add(public_jwk(rsa_key))
    keys.add(public_jwk(ec_key))
    check = jws.JWS()
    check.deserialize(serialized, keys)
    assert check.payload == b"two signers"


def test_pool_bound_key_signs_from_threads(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    verifier = public_jwk(key)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(20):
                payload = f"thread {threading.get_ident()} {i}".encode()
                assert (
                    verify_compact(sign_compact(key, "ES256", payload), verifier, "ES256")
                    == payload
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_session_key_is_unusable_after_the_block(pool: Any) -> None:
    with pool.session() as session:
        key = HSMJWK.from_hsm(session, key_label="ec-key")
    with pytest.raises(HSMError):
        sign_compact(key, "ES256")


# -- the public JWK -------------------------------------------------------------------------


def test_public_parameters_and_thumbprint_match_the_published_key(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="rfc7515-rsa")
    published = jwk.JWK(**RFC7515_A2.public_jwk)
    assert key.thumbprint() == published.thumbprint()
    assert key["kid"] == published.thumbprint()  # RFC 7638 kid by default
    assert {k: v for k, v in key.export_public(as_dict=True).items() if k != "kid"} == {
        "kty": "RSA",
        "n": RFC7515_A2.jwk["n"],
        "e": "AQAB",
    }
    ed = HSMJWK.from_hsm(pool, key_label="rfc8037-ed25519")
    assert ed.export_public(as_dict=True) == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": RFC8037_A4.jwk["x"],
        "kid": jwk.JWK(**RFC8037_A4.public_jwk).thumbprint(),
    }


@pytest.mark.parametrize("label", sorted(UNIQUE_KEYS))
def test_thumbprint_equals_jwcrypto_s_own(pool: Any, label: str) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    plain = public_jwk(key)
    assert key.thumbprint() == plain.thumbprint()
    assert key.thumbprint_uri() == plain.thumbprint_uri()
    spec = UNIQUE_KEYS[label]
    assert key["kty"] == {"RSA": "RSA", "EC": "EC", "EC_EDWARDS": "OKP"}[spec.key_type]
    if spec.curve is not None:
        assert key["crv"] == spec.curve


def test_kid_can_be_given(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key", kid="signing-2024")
    assert key["kid"] == "signing-2024"
    assert key.export_public(as_dict=True)["kid"] == "signing-2024"
    assert key.thumbprint() != "signing-2024"


def test_find_by_id_and_by_label_give_equal_keys(pool: Any) -> None:
    by_label = HSMJWK.from_hsm(pool, key_label="ec-key")
    with pool.session() as session:
        by_id = HSMJWK.from_hsm(session, key_id=b"\x02")
    assert by_label == by_id
    assert hash(by_label) == hash(by_id)
    assert by_label.hsm_key.id == b"\x02"
    assert by_label.hsm_key.label == "ec-key"


def test_op_keys(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    assert key.has_private
    assert key.has_public
    assert not key.is_symmetric
    assert isinstance(key.get_op_key("sign"), HSMEllipticCurvePrivateKey)
    assert key.get_op_key("sign") is key.hsm_private_key
    assert key.get_op_key("unwrapKey") is key.hsm_private_key
    pub = key.get_op_key("verify")
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert not isinstance(pub, ec.EllipticCurvePrivateKey)
    assert key.get_op_key("wrapKey") is pub
    assert key.hsm_private_key.public_key() is pub


def test_use_and_key_ops_constraints_apply(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    key["use"] = "enc"
    with pytest.raises(jwk.InvalidJWKUsage):
        key.get_op_key("sign")
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    key["key_ops"] = ["verify"]
    with pytest.raises(jwk.InvalidJWKOperation):
        key.get_op_key("sign")


# -- wrong algorithm for the key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "alg", "pattern"),
    [
        ("ec-key", "ES384", r"ES384 needs an EC key on P-384.*'ec-key'.*P-256"),
        ("ec384-key", "ES256", r"ES256 needs an EC key on P-256.*'ec384-key'.*P-384"),
        ("ec-key", "ES512", r"ES512.*P-521.*'ec-key'"),
        ("ec-key", "ES256K", r"ES256K.*secp256k1.*'ec-key'"),
        ("rsa-key", "ES256", r"ES256.*P-256.*'rsa-key'.*RSA 2048"),
        ("ed-key", "ES256", r"ES256.*P-256.*'ed-key'.*Ed25519"),
        ("ec-key", "RS256", r"RS256.*'ec-key'"),
        ("ec-key", "PS384", r"PS384.*'ec-key'"),
        ("ed-key", "RS256", r"RS256.*'ed-key'"),
    ],
)
def test_wrong_algorithm_names_algorithm_and_key(
    pool: Any, label: str, alg: str, pattern: str
) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    with pytest.raises(HSMMechanismError, match=pattern):
        sign_compact(key, alg)


# -- the private key stays in the token -----------------------------------------------------


@pytest.mark.parametrize("label", ["rsa-key", "ec-key", "ed-key"])
def test_private_export_raises(pool: Any, label: str) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    with pytest.raises(HSMMechanismError, match="cannot be exported"):
        key.export()
    with pytest.raises(HSMMechanismError, match="cannot be exported"):
        key.export(private_key=True)
    with pytest.raises(HSMMechanismError, match="cannot be exported"):
        key.export_private()
    with pytest.raises(HSMMechanismError, match="cannot be exported"):
        key.export_to_pem(private_key=True, password=None)
    public = json.loads(key.export(private_key=False))
    assert "d" not in public
    assert public == key.export_public(as_dict=True)
    assert b"PUBLIC KEY" in key.export_to_pem()
    keyset = jwk.JWKSet()
    keyset.add(key)
    assert json.loads(keyset.export(private_keys=False))["keys"] == [public]


def test_public_returns_a_plain_jwk(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="rsa-key")
    public = key.public()
    assert type(public) is jwk.JWK
    assert not public.has_private
    assert isinstance(public.get_op_key("verify"), rsa.RSAPublicKey)


# -- an HSMJWK always refers to its token key -----------------------------------------------


def test_key_members_cannot_change(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    key["kty"] = "EC"  # same value: fine
    key["alg"] = "ES256"
    key["use"] = "sig"
    with pytest.raises(ValueError, match="'kty'"):
        key["kty"] = "RSA"
    with pytest.raises(ValueError, match="'x'"):
        key["x"] = key["y"]
    with pytest.raises(ValueError, match="'d'"):
        key["d"] = key["x"]
    with pytest.raises(ValueError, match="'crv'"):
        del key["crv"]
    with pytest.raises(TypeError):
        key.import_key(kty="oct", k="AAAA")
    sign_compact(key, "ES256")


def test_constructors_other_than_from_hsm_are_refused() -> None:
    with pytest.raises(TypeError, match="from_hsm"):
        HSMJWK(kty="oct", k="AAAA")
    with pytest.raises(TypeError, match="from_hsm"):
        HSMJWK.from_json('{"kty": "oct", "k": "AAAA"}')
    with pytest.raises(TypeError, match="from_hsm"):
        HSMJWK.generate(kty="EC", crv="P-256")
    with pytest.raises(TypeError, match="from_hsm"):
        HSMJWK.from_pyca(ed25519.Ed25519PrivateKey.generate())


def test_from_hsm_arguments(pool: Any) -> None:
    with pytest.raises(TypeError, match="key_label"):
        HSMJWK.from_hsm(pool)
    with pytest.raises(HSMKeyNotFoundError, match="kid"):
        HSMJWK.from_hsm(pool, kid="some-kid")
    with pytest.raises(HSMKeyNotFoundError):
        HSMJWK.from_hsm(pool, key_label="no-such-key")
    with pytest.raises(HSMKeyNotFoundError):
        HSMJWK.from_hsm(pool, key_label="dup-key")
    with pytest.raises(TypeError, match="source"):
        HSMJWK.from_hsm(object(), key_label="ec-key")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kid"):
        HSMJWK.from_hsm(pool, key_label="ec-key", kid=b"bytes")  # type: ignore[arg-type]
    # a Key found before is a source too
    found = pool.find_key(key_label="ec-key")
    assert HSMJWK.from_hsm(found).hsm_key is found


def test_copies_share_the_token_key(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    key["key_ops"] = ["sign", "verify"]
    for other in (copy.copy(key), copy.deepcopy(key)):
        assert type(other) is HSMJWK
        assert other == key
        assert other.get_op_key("sign") is key.get_op_key("sign")
        assert other["key_ops"] == ["sign", "verify"]
    deep = copy.deepcopy(key)
    assert deep["key_ops"] is not key["key_ops"]
    assert verify_compact(sign_compact(deep, "ES256"), public_jwk(key), "ES256")


def test_pickling_is_refused(pool: Any) -> None:
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(HSMJWK.from_hsm(pool, key_label="ec-key"))


def test_repr_shows_kid_and_token_object(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    shown = json.loads(repr(key))
    assert shown == {
        "kid": key["kid"],
        "thumbprint": key.thumbprint(),
        "hsm_label": "ec-key",
        "hsm_id": "02",
    }


def test_ed448_jws(pool: Any) -> None:
    label = "test-jwk-ed448"
    with pool.session(rw=True) as session:
        session.generate_key_pair("Ed448", label=label)
    try:
        algs = ["EdDSA", "Ed448"] if "Ed448" in jws.default_allowed_algs else ["EdDSA"]
        with pool.session() as session:
            key = HSMJWK.from_hsm(session, key_label=label)
            assert (key["kty"], key["crv"]) == ("OKP", "Ed448")
            compacts = {alg: sign_compact(key, alg) for alg in algs}
        for alg, compact in compacts.items():
            assert verify_compact(compact, public_jwk(key), alg) == b"hsmkey payload"
    finally:
        with pool.session(rw=True) as session:
            session.delete_key(key_label=label)


# -- JWE: key management in the token -------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "alg"),
    [
        ("rsa-key", "RSA-OAEP"),
        ("rsa-key", "RSA-OAEP-256"),
        ("rsa-key", "RSA1_5"),
        ("rfc7515-rsa", "RSA-OAEP-256"),
        ("ec-key", "ECDH-ES"),
        ("ec-key", "ECDH-ES+A128KW"),
        ("ec384-key", "ECDH-ES+A192KW"),
        ("ec521-key", "ECDH-ES+A256KW"),
    ],
)
@pytest.mark.parametrize("enc", ["A128GCM", "A256CBC-HS512"])
def test_jwe_decrypt(pool: Any, label: str, alg: str, enc: str) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    algs = [alg, enc]  # RSA1_5 is not allowed by default
    header = json_encode({"alg": alg, "enc": enc, "kid": key["kid"]})
    token = jwe.JWE(b"for the HSM only", header, algs=algs)
    token.add_recipient(public_jwk(key))  # the sender has the public key only
    compact = token.serialize(compact=True)
    with pool.session() as session:
        received = jwe.JWE(algs=algs)
        received.deserialize(compact, HSMJWK.from_hsm(session, key_label=label))
    assert received.payload == b"for the HSM only"


def test_encrypted_jwt_to_hsm_key(pool: Any) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    token = jwt.JWT(header={"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}, claims={"sub": "x"})
    token.make_encrypted_token(public_jwk(key))
    received = jwt.JWT(jwt=token.serialize(), key=key, algs=["ECDH-ES+A256KW", "A256GCM"])
    assert json.loads(received.claims) == {"sub": "x"}
