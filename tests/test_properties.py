"""Property tests: every algorithm signs payloads of any size from 0 bytes to 1 MiB through
jwcrypto, PyJWT and the cryptography interface, and plain software public keys verify them;
a changed payload or signature never verifies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jwt as pyjwt
import pytest
from cryptography.exceptions import InvalidSignature
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto import jwk, jws  # type: ignore[import-untyped]
from jwcrypto.common import base64url_encode  # type: ignore[import-untyped]

# (key label in the test token, JOSE algorithms it signs)
KEYS = [
    ("rsa-key", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]),
    ("ec-key", ["ES256"]),
    ("ec384-key", ["ES384"]),
    ("ec521-key", ["ES512"]),
    ("ed-key", ["EdDSA"]),
]
CASES = [(label, alg) for label, algs in KEYS for alg in algs]
PAYLOAD = st.one_of(
    st.binary(max_size=300),
    # big payloads: a random block repeated up to 1 MiB
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(0, 1 << 20)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    ),
    st.sampled_from([b"", bytes(1 << 20)]),
)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


@pytest.mark.parametrize(("label", "alg"), CASES)
@SETTINGS
@given(payload=PAYLOAD)
def test_jwcrypto_sign_software_verify(
    pool: SessionPool, label: str, alg: str, payload: bytes
) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    token = jws.JWS(payload)
    token.add_signature(key, alg=alg, protected=json.dumps({"alg": alg}))
    compact = token.serialize(compact=True)
    public = jwk.JWK.from_json(key.export_public())
    check = jws.JWS()
    check.deserialize(compact)
    check.verify(public)
    assert check.payload == payload
    # A changed payload under the same signature is caught.
    head, _, sig = compact.split(".")
    other = jws.JWS()
    other.deserialize(".".join([head, base64url_encode(payload + b"x"), sig]))
    with pytest.raises(jws.InvalidJWSSignature):
        other.verify(public)


@pytest.mark.parametrize(("label", "alg"), CASES)
@SETTINGS
@given(claims=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=50)))
def test_pyjwt_sign_software_verify(
    pool: SessionPool, label: str, alg: str, claims: dict[str, object]
) -> None:
    key = HSMJWK.from_hsm(pool, key_label=label)
    token = pyjwt.encode(claims, key.hsm_private_key, algorithm=alg)
    public = key.hsm_private_key.public_key()
    assert pyjwt.decode(token, public, algorithms=[alg], options={"verify_aud": False}) == claims


@pytest.mark.parametrize(("label", "alg"), [c for c in CASES if c[1] in ("PS256", "ES384")])
@SETTINGS
@given(payload=PAYLOAD)
def test_cryptography_interface(pool: SessionPool, label: str, alg: str, payload: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    private = HSMJWK.from_hsm(pool, key_label=label).hsm_private_key
    public = private.public_key()
    if alg == "PS256":
        pad = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        sig = private.sign(payload, pad, hashes.SHA256())  # type: ignore[call-arg]
        public.verify(sig, payload, pad, hashes.SHA256())  # type: ignore[call-arg]
        with pytest.raises(InvalidSignature):
            public.verify(sig, payload + b"x", pad, hashes.SHA256())  # type: ignore[call-arg]
    else:
        sig = private.sign(payload, ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg]
        public.verify(sig, payload, ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg]
        with pytest.raises(InvalidSignature):
            public.verify(sig, payload + b"x", ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg]
