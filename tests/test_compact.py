"""HSMJWK.sign_compact / sign_compact_many / make_jwt: compact JWS made without jwcrypto's
JWS object, verified by jwcrypto and PyJWT with the public key."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jwt as pyjwt
import pytest
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hsmkey.exceptions import HSMMechanismError
from jwcrypto import jwk, jws  # type: ignore[import-untyped]

CASES = [
    ("rsa-key", "RS256", None),
    ("rsa-key", "RS256", "PS512"),
    ("ec-key", "ES256", None),
    ("ec384-key", "ES384", None),
    ("ec521-key", "ES512", None),
    ("k1-key", "ES256K", None),
    ("ed-key", "EdDSA", None),
]


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


@pytest.mark.parametrize(("label", "default", "alg"), CASES)
def test_sign_compact_verifies(
    pool: SessionPool, label: str, default: str, alg: str | None
) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    assert key.default_alg == default
    public = jwk.JWK.from_json(key.export_public())
    for payload in (b"", b"hello", bytes(5000)):
        compact = key.sign_compact(payload, alg, headers={"cty": "x"})
        check = jws.JWS()
        check.deserialize(compact)
        check.verify(public)
        assert check.payload == payload
        header = check.jose_header
        assert header["alg"] == (alg or default)
        assert header["kid"] == key["kid"] and header["cty"] == "x"


def test_sign_compact_many_and_make_jwt(pool: SessionPool) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    public = key.hsm_private_key.public_key()
    tokens = key.sign_compact_many([json.dumps({"n": i}).encode() for i in range(50)])
    assert len(tokens) == 50
    for i, token in enumerate(tokens):
        assert pyjwt.decode(token, public, algorithms=["ES256"]) == {"n": i}
    jwt_token = key.make_jwt({"sub": "alice", "n": 1})
    assert pyjwt.get_unverified_header(jwt_token)["typ"] == "JWT"
    assert pyjwt.decode(jwt_token, public, algorithms=["ES256"]) == {"sub": "alice", "n": 1}


def test_wrong_algorithm_is_refused(pool: SessionPool) -> None:
    key = HSMJWK.from_hsm(pool, key_label="ec-key")
    with pytest.raises(HSMMechanismError, match="ES384"):
        key.sign_compact(b"x", "ES384")
    with pytest.raises(HSMMechanismError, match="HS256"):
        key.sign_compact(b"x", "HS256")
