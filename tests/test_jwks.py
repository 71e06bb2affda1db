"""Finding keys by kid, and the token's public JWK Set."""

from __future__ import annotations

from collections.abc import Iterator

import hsmkey
import pytest
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hsmkey.exceptions import HSMKeyNotFoundError
from jwcrypto import jwk, jws  # type: ignore[import-untyped]


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def test_find_by_kid(pool: SessionPool) -> None:
    by_label = HSMJWK.from_hsm(pool, key_label="ed-key")
    kid = by_label["kid"]
    by_kid = HSMJWK.from_hsm(pool, kid=kid)
    assert by_kid.hsm_key.label == "ed-key"
    assert by_kid["kid"] == kid
    with pool.session() as s:  # again, from a session, through the cached hint
        assert HSMJWK.from_hsm(s, kid=kid).hsm_key.id == b"\x04"
    with pytest.raises(HSMKeyNotFoundError, match="thumbprint"):
        HSMJWK.from_hsm(pool, kid="not-a-thumbprint")


def test_jwks_publishes_every_key_and_verifies(pool: SessionPool) -> None:
    doc = hsmkey.jwks(pool)
    keyset = jwk.JWKSet.from_json(__import__("json").dumps(doc))
    labels = {k.label for k in pool.list_keys()}
    assert len(doc["keys"]) == len(pool.list_keys())
    assert all("d" not in member for member in doc["keys"])
    assert {"rsa-key", "ec-key", "ed-key"} <= labels
    # A token signed by the HSM verifies against the published set, chosen by kid.
    signer = HSMJWK.from_hsm(pool, key_label="ec-key")
    token = jws.JWS(b"published")
    token.add_signature(signer, alg="ES256", protected={"alg": "ES256", "kid": signer["kid"]})
    compact = token.serialize(compact=True)
    check = jws.JWS()
    check.deserialize(compact)
    check.verify(keyset.get_key(signer["kid"]))
    assert check.payload == b"published"


def test_typed_private_key_accessors(pool: SessionPool) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from hsmkey.exceptions import HSMMechanismError

    assert isinstance(HSMJWK.from_hsm(pool, key_label="rsa-key").rsa_private_key, rsa.RSAPrivateKey)
    ec_key = HSMJWK.from_hsm(pool, key_label="ec-key")
    assert isinstance(ec_key.ec_private_key, ec.EllipticCurvePrivateKey)
    assert ec_key.ec_private_key is ec_key.hsm_private_key
    ed = HSMJWK.from_hsm(pool, key_label="ed-key")
    assert isinstance(ed.ed25519_private_key, ed25519.Ed25519PrivateKey)
    with pytest.raises(HSMMechanismError, match="not an RSA key"):
        ec_key.rsa_private_key  # noqa: B018
    with pytest.raises(HSMMechanismError, match="not an Ed448 key"):
        ed.ed448_private_key  # noqa: B018
