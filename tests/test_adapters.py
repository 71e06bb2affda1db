"""hsmkey.adapters: token keys as joserfc, Authlib and josepy key objects.

Every algorithm each library offers for each key type signs in the token and verifies in
software with the published public key; what the key objects serialize holds the public
members only; asking for private members raises.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import authlib.deprecate  # noqa: F401  (it sets an "always" filter for its warnings when imported)
import josepy
import pytest
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hsmkey.adapters import PRIVATE_MEMBERS, authlib_key, josepy_jwk, joserfc_key
from hsmkey.exceptions import HSMMechanismError
from hsmkey.keys import private_key_for
from joserfc import jwe as jose_jwe
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, SecurityWarning
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from joserfc.jwk import import_key as jose_import_key

with warnings.catch_warnings():
    # Authlib 1.7+ deprecates authlib.jose in favour of joserfc; its users still import it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import authlib.jose as authlib_jose
    from authlib.jose.errors import BadSignatureError as AuthlibBadSignature

AUTHLIB_DEPRECATION = "ignore::authlib.deprecate.AuthlibDeprecationWarning"

# label -> (kty, the algorithms each library signs with for it)
KEYS = {
    "rsa-key": "RSA",
    "ec-key": "EC",
    "ec384-key": "EC",
    "ec521-key": "EC",
    "k1-key": "EC",
    "ed-key": "OKP",
    "rfc8037-ed25519": "OKP",  # CKA_EC_PARAMS as an OID
    "rfc7515-rsa": "RSA",  # a private-key object with no public object beside it
}
RSA_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
EC_ALGS = {"ec-key": "ES256", "ec384-key": "ES384", "ec521-key": "ES512", "k1-key": "ES256K"}
ED448_LABEL = f"adapters-ed448-{uuid.uuid4().hex[:8]}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def algorithms(label: str, eddsa: list[str]) -> list[str]:
    if label in EC_ALGS:
        return [EC_ALGS[label]]
    if KEYS.get(label) == "RSA":
        return RSA_ALGS
    return eddsa


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    with p.session(rw=True) as s:
        s.generate_key_pair("Ed448", label=ED448_LABEL)
    try:
        yield p
    finally:
        with p.session(rw=True) as s:
            s.delete_key(key_label=ED448_LABEL)
        p.close()


def hsm_jwk(pool: SessionPool, label: str) -> HSMJWK:
    return HSMJWK.from_hsm(pool, key_label=label)


def assert_public(members: dict[str, Any], jwk: HSMJWK) -> None:
    assert not PRIVATE_MEMBERS & members.keys(), members
    public = jwk.export_public(as_dict=True)
    for name in ("kty", "n", "e", "crv", "x", "y"):
        assert members.get(name) == public.get(name), name


ALL_LABELS = [*KEYS, ED448_LABEL]


# -- joserfc ---------------------------------------------------------------------------------


def jose_eddsa(label: str) -> list[str]:
    return ["Ed448"] if label == ED448_LABEL else ["Ed25519"]


@pytest.mark.parametrize("label", ALL_LABELS)
def test_joserfc_signs_every_algorithm_in_the_token(pool: SessionPool, label: str) -> None:
    jwk = hsm_jwk(pool, label)
    key = joserfc_key(jwk)
    assert isinstance(key, (RSAKey, ECKey, OKPKey))
    assert key.is_private and key.kid == jwk["kid"]
    published = jose_import_key(key.as_dict())
    assert not published.is_private
    for alg in algorithms(label, jose_eddsa(label)):
        header = {"alg": alg, "kid": key.kid}
        token = jose_jwt.encode(header, {"sub": "alice", "alg": alg}, key, algorithms=[alg])
        claims = jose_jwt.decode(token, published, algorithms=[alg]).claims
        assert claims == {"sub": "alice", "alg": alg}
        # The signature is the token's: a changed payload does not verify.
        head, _, sig = token.split(".")
        forged = head + "." + b64url(b'{"sub":"mallory"}') + "." + sig
        with pytest.raises(BadSignatureError):
            jose_jwt.decode(forged, published, algorithms=[alg])


def test_joserfc_eddsa_name_works_with_joserfc_warning(pool: SessionPool) -> None:
    key = joserfc_key(hsm_jwk(pool, "ed-key"))
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        token = jose_jwt.encode({"alg": "EdDSA"}, {"sub": "a"}, key, algorithms=["EdDSA"])
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        assert jose_jwt.decode(token, jose_import_key(key.as_dict()), algorithms=["EdDSA"])


@pytest.mark.parametrize("label", ALL_LABELS)
def test_joserfc_key_serializes_the_public_half_only(pool: SessionPool, label: str) -> None:
    jwk = hsm_jwk(pool, label)
    key = joserfc_key(jwk)
    assert_public(key.as_dict(), jwk)
    assert key.thumbprint() == jwk.thumbprint()
    assert key.as_pem() == jwk.export_to_pem()
    key_set = KeySet([key]).as_dict()
    for member in key_set["keys"]:
        assert_public(dict(member), jwk)
    assert "PRIVATE" not in repr(key) and jwk["kid"] in repr(key)
    with pytest.raises(HSMMechanismError, match="public members only"):
        key.as_dict(private=True)
    with pytest.raises(HSMMechanismError):
        key.as_pem(private=True)
    with pytest.raises(HSMMechanismError):
        KeySet([key]).as_dict(private=True)
    with pytest.raises(TypeError, match="inside a token"):
        __import__("pickle").dumps(key)


def test_joserfc_from_private_key_object_and_token_key(pool: SessionPool) -> None:
    jwk = hsm_jwk(pool, "ec-key")
    from_private = joserfc_key(jwk.ec_private_key)
    assert isinstance(from_private, ECKey)
    assert from_private.kid == jwk.thumbprint()
    assert from_private.get_op_key("sign") is jwk.ec_private_key
    from_key = joserfc_key(pool.find_key(key_label="rsa-key"))
    assert isinstance(from_key, RSAKey)
    from_factory = joserfc_key(private_key_for(pool.find_key(key_label="ed-key")))
    assert isinstance(from_factory, OKPKey)


def test_joserfc_kid_and_parameters(pool: SessionPool) -> None:
    named = HSMJWK.from_hsm(pool, key_label="ec-key", kid="2026-12-signing")
    named["use"] = "sig"
    key = joserfc_key(named)
    assert key.kid == "2026-12-signing" and key.get("use") == "sig"
    assert joserfc_key(named, kid="other").kid == "other"
    key = joserfc_key(named.ec_private_key, parameters={"alg": "ES256", "use": "sig"})
    assert key.alg == "ES256" and key.as_dict()["use"] == "sig"
    with pytest.raises(ValueError, match=r"cannot set \['d'\]"):
        joserfc_key(named, parameters={"d": "AAAA"})
    with pytest.raises(ValueError, match="cannot set"):
        joserfc_key(named, parameters={"x": "AAAA"})
    with pytest.raises(TypeError, match="kid must be a str"):
        joserfc_key(named, kid=5)  # type: ignore[arg-type]


def test_joserfc_key_set_rotation_by_kid(pool: SessionPool) -> None:
    old = joserfc_key(hsm_jwk(pool, "rsa-key"), kid="2026-11")
    new = joserfc_key(hsm_jwk(pool, "ec-key"), kid="2026-12")
    signing = KeySet([new, old])
    published = KeySet.import_key_set(signing.as_dict())
    for kid, alg in (("2026-12", "ES256"), ("2026-11", "RS256")):
        token = jose_jwt.encode({"alg": alg, "kid": kid}, {"sub": kid}, signing)
        assert jose_jwt.decode(token, published).claims == {"sub": kid}
    assert all(not PRIVATE_MEMBERS & k.keys() for k in published.as_dict()["keys"])


def test_joserfc_jwe_decrypts_in_the_token(pool: SessionPool) -> None:
    rsa = joserfc_key(hsm_jwk(pool, "rsa-key"))
    for alg in ("RSA-OAEP", "RSA-OAEP-256"):
        algs = [alg, "A256GCM"]
        sealed = jose_jwe.encrypt_compact(
            {"alg": alg, "enc": "A256GCM"}, b"secret", jose_import_key(rsa.as_dict()), algs
        )
        assert jose_jwe.decrypt_compact(sealed, rsa, algorithms=algs).plaintext == b"secret"
    ec = joserfc_key(hsm_jwk(pool, "ec-key"))
    for alg in ("ECDH-ES", "ECDH-ES+A128KW"):
        algs = [alg, "A128GCM"]
        sealed = jose_jwe.encrypt_compact(
            {"alg": alg, "enc": "A128GCM"}, b"agreed", jose_import_key(ec.as_dict()), algs
        )
        assert jose_jwe.decrypt_compact(sealed, ec, algorithms=algs).plaintext == b"agreed"


# -- Authlib ---------------------------------------------------------------------------------


def authlib_eddsa(label: str) -> list[str]:
    return ["EdDSA"]


@pytest.mark.parametrize("label", ALL_LABELS)
def test_authlib_signs_every_algorithm_in_the_token(pool: SessionPool, label: str) -> None:
    jwk = hsm_jwk(pool, label)
    key = authlib_key(jwk)
    assert isinstance(key, (authlib_jose.RSAKey, authlib_jose.ECKey, authlib_jose.OKPKey))
    assert key.kid == jwk["kid"] and not key.public_only
    published = authlib_jose.JsonWebKey.import_key(key.as_dict())
    assert published.public_only
    for alg in algorithms(label, authlib_eddsa(label)):
        token = authlib_jose.jwt.encode({"alg": alg, "kid": key.kid}, {"sub": alg}, key)
        claims = authlib_jose.jwt.decode(token, published)
        claims.validate()
        assert claims == {"sub": alg}
        head, _, sig = token.split(b".")
        other = authlib_jose.jwt.encode({"alg": alg}, {"sub": "mallory"}, key).split(b".")[1]
        with pytest.raises(AuthlibBadSignature):
            authlib_jose.jwt.decode(head + b"." + other + b"." + sig, published)


@pytest.mark.parametrize("label", ALL_LABELS)
def test_authlib_key_serializes_the_public_half_only(pool: SessionPool, label: str) -> None:
    jwk = hsm_jwk(pool, label)
    key = authlib_key(jwk)
    assert_public(key.as_dict(), jwk)
    assert_public(json.loads(key.as_json()), jwk)
    assert key.thumbprint() == jwk.thumbprint()
    assert key.as_pem() == jwk.export_to_pem()
    for member in authlib_jose.KeySet([key]).as_dict()["keys"]:
        assert_public(member, jwk)
    assert jwk["kid"] in repr(key)
    with pytest.raises(HSMMechanismError, match="joserfc_key"):
        key.as_dict(is_private=True)
    with pytest.raises(HSMMechanismError):
        key.as_pem(is_private=True)
    with pytest.raises(HSMMechanismError):
        authlib_jose.KeySet([key]).as_json(is_private=True)


def test_authlib_key_set_rotation_and_jwe(pool: SessionPool) -> None:
    old = authlib_key(hsm_jwk(pool, "rsa-key"), kid="2026-11")
    new = authlib_key(hsm_jwk(pool, "ec-key").ec_private_key, kid="2026-12")
    signing = authlib_jose.KeySet([new, old])
    published = authlib_jose.JsonWebKey.import_key_set(signing.as_dict())
    for kid, alg in (("2026-12", "ES256"), ("2026-11", "PS384")):
        token = authlib_jose.jwt.encode({"alg": alg, "kid": kid}, {"sub": kid}, signing)
        assert authlib_jose.jwt.decode(token, published) == {"sub": kid}
    jwe = authlib_jose.JsonWebEncryption()
    public_rsa = authlib_jose.JsonWebKey.import_key(old.as_dict())
    sealed = jwe.serialize_compact({"alg": "RSA-OAEP", "enc": "A256GCM"}, b"secret", public_rsa)
    assert jwe.deserialize_compact(sealed, old)["payload"] == b"secret"
    public_ec = authlib_jose.JsonWebKey.import_key(new.as_dict())
    sealed = jwe.serialize_compact({"alg": "ECDH-ES", "enc": "A128GCM"}, b"agreed", public_ec)
    assert jwe.deserialize_compact(sealed, new)["payload"] == b"agreed"


class _Client:
    """The client model Authlib's grant code asks (a plain object, as an app would have)."""

    id_token_signed_response_alg = "ES256"

    def get_client_id(self) -> str:
        return "client-1"


def _openid_request(alg: str = "ES256") -> Any:
    from authlib.oauth2.rfc6749 import OAuth2Request

    request = OAuth2Request("POST", "https://op.example/token")
    request.client = _Client()
    request.client.id_token_signed_response_alg = alg
    request.user = {"id": "alice"}
    return request


def _openid_code(key: Any) -> Any:
    from authlib.oidc.core.grants import OpenIDCode

    class HSMOpenIDCode(OpenIDCode):  # type: ignore[misc]
        def resolve_client_private_key(self, client: Any) -> Any:
            return key

        def get_client_claims(self, client: Any) -> dict[str, Any]:
            return {"iss": "https://op.example", "aud": [client.get_client_id()]}

        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return False

        def generate_user_info(self, user: Any, scope: str) -> dict[str, Any]:
            return {"sub": user["id"]}

    return HSMOpenIDCode()


def test_authlib_oidc_id_token_signed_with_joserfc_key(pool: SessionPool) -> None:
    """Authlib >= 1.7 signs ID tokens with joserfc: the server code takes joserfc_key().
    A key set of the current key puts its kid in the header; the JWKS publishes both."""
    previous = joserfc_key(hsm_jwk(pool, "rsa-key"), kid="2026-11")
    jwk = hsm_jwk(pool, "ec-key")
    current = joserfc_key(jwk, kid="2026-12")
    jwks = KeySet([current, previous]).as_dict()
    assert all(not PRIVATE_MEMBERS & k.keys() for k in jwks["keys"])
    published = KeySet.import_key_set(jwks)
    token = {"access_token": "at-123", "scope": "openid profile", "token_type": "Bearer"}
    old_id_token = _openid_code(KeySet([previous])).encode_id_token(
        token, _openid_request(alg="RS256")
    )
    assert jose_jwt.decode(old_id_token, published, algorithms=["RS256"]).claims["sub"] == "alice"
    id_token = _openid_code(KeySet([current])).encode_id_token(token, _openid_request())
    decoded = jose_jwt.decode(id_token, published, algorithms=["ES256"])
    assert decoded.header == {"alg": "ES256", "kid": "2026-12", "typ": "JWT"}
    claims = decoded.claims
    assert claims["iss"] == "https://op.example" and claims["aud"] == ["client-1"]
    assert claims["sub"] == "alice" and claims["exp"] > time.time()
    assert "at_hash" in claims


@pytest.mark.filterwarnings(AUTHLIB_DEPRECATION)
def test_authlib_key_in_oidc_server_code_says_what_to_use(pool: SessionPool) -> None:
    extension = _openid_code(authlib_key(hsm_jwk(pool, "ec-key")))
    token = {"access_token": "at-123", "scope": "openid", "token_type": "Bearer"}
    with pytest.raises(HSMMechanismError, match="joserfc_key"):
        extension.encode_id_token(token, _openid_request())


# -- josepy ----------------------------------------------------------------------------------

JOSEPY_ALGS = {
    "rsa-key": RSA_ALGS,
    "rfc7515-rsa": ["RS256"],
    "ec-key": ["ES256"],
    "ec384-key": ["ES384"],
    "ec521-key": ["ES512"],
}


@pytest.mark.parametrize("label", list(JOSEPY_ALGS))
def test_josepy_signs_in_the_token(pool: SessionPool, label: str) -> None:
    jwk = hsm_jwk(pool, label)
    key = josepy_jwk(jwk)
    assert isinstance(key, (josepy.JWKRSA, josepy.JWKEC))
    public = josepy.JWK.from_json(jwk.export_public(as_dict=True))
    for name in JOSEPY_ALGS[label]:
        alg = josepy.JWASignature.from_json(name)
        signed = josepy.JWS.sign(b"payload", key=key, alg=alg, protect=frozenset(["alg"]))
        received = josepy.JWS.from_compact(signed.to_compact())
        assert received.verify(public) and received.payload == b"payload"
        assert received.signature.combined.alg == alg
        # include_jwk puts the public key in the header, and the receiver verifies with it.
        header_jwk = signed.signature.header.jwk
        assert header_jwk == public
        assert josepy.JWS.from_json(signed.to_json()).verify()
        tampered = josepy.JWS.from_compact(signed.to_compact().replace(b".cGF5", b".cGF6"))
        assert not tampered.verify(public)


@pytest.mark.parametrize("label", list(JOSEPY_ALGS))
def test_josepy_jwk_serializes_the_public_half_only(pool: SessionPool, label: str) -> None:
    jwk = hsm_jwk(pool, label)
    key = josepy_jwk(jwk)
    for members in (key.to_partial_json(), key.to_json(), json.loads(key.json_dumps())):
        assert_public(dict(members), jwk)
    thumbprint = josepy.b64.b64encode(key.thumbprint()).decode()
    assert thumbprint == jwk.thumbprint()
    assert key.public_key() == josepy.JWK.from_json(jwk.export_public(as_dict=True))
    assert key == josepy_jwk(jwk.hsm_private_key) and hash(key) == hash(josepy_jwk(jwk))
    assert key != key.public_key()
    assert "PRIVATE" not in repr(key) and (jwk.hsm_key.label or "") in repr(key)


def test_josepy_refuses_keys_it_has_no_class_for(pool: SessionPool) -> None:
    for label in ("ed-key", "k1-key", ED448_LABEL):
        with pytest.raises(HSMMechanismError, match="josepy has no JWK class"):
            josepy_jwk(hsm_jwk(pool, label))


def test_acme_account_key_in_the_token(pool: SessionPool) -> None:
    """certbot's acme package: JWS requests, key authorizations, the account's JWK."""
    from acme import challenges, jws, messages
    from acme.client import ClientNetwork

    jwk = hsm_jwk(pool, "ec-key")
    account_key = josepy_jwk(jwk)
    net = ClientNetwork(account_key, alg=josepy.ES256, user_agent="hsmkey-test")
    registration = messages.NewRegistration.from_data(email="admin@example.com")
    body = net._wrap_in_jws(registration, nonce=b"nonce", url="https://acme.example/new-acct")
    request = jws.JWS.json_loads(body)
    protected = json.loads(request.signature.protected)
    assert protected["url"] == "https://acme.example/new-acct" and protected["nonce"] == "bm9uY2U"
    assert not PRIVATE_MEMBERS & protected["jwk"].keys()
    assert request.verify(josepy.JWK.from_json(jwk.export_public(as_dict=True)))
    # Challenge responses are derived from the account key's thumbprint.
    token = b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    chall = challenges.HTTP01(token=token)
    assert chall.key_authorization(account_key) == (
        josepy.b64.b64encode(token).decode() + "." + jwk.thumbprint()
    )
    assert challenges.DNS01(token=token).validation(account_key)


# -- input checks and missing libraries --------------------------------------------------------


@pytest.mark.parametrize("function", [joserfc_key, authlib_key, josepy_jwk])
def test_software_keys_and_other_objects_are_refused(function: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    for wrong in (ec.generate_private_key(ec.SECP256R1()), {"kty": "EC"}, None):
        with pytest.raises(TypeError, match="HSMJWK"):
            function(wrong)


@pytest.mark.parametrize(
    ("function", "package"),
    [("joserfc_key", "joserfc"), ("authlib_key", "Authlib"), ("josepy_jwk", "josepy")],
)
def test_missing_library_is_a_clear_import_error(
    softhsm: SoftHSM, function: str, package: str
) -> None:
    module = {"joserfc": "joserfc", "Authlib": "authlib", "josepy": "josepy"}[package]
    code = f"""
import sys
sys.modules[{module!r}] = None  # as if it were not installed
from hsmkey import HSMJWK, SessionPool
from hsmkey.adapters import {function}
pool = SessionPool.from_env()
try:
    {function}(HSMJWK.from_hsm(pool, key_label="ec-key"))
except ImportError as exc:
    print(exc)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"needs the {package} package" in proc.stdout, proc
    assert f"pip install {package}" in proc.stdout, proc


def test_authlib_token_endpoint_issues_an_id_token_signed_in_the_token(
    pool: SessionPool,
) -> None:
    """The whole authorization-code token request through Authlib's own server classes
    (framework-free): client authentication, code lookup, token, ID token signed by joserfc_key."""
    from authlib.oauth2.rfc6749 import (
        AuthorizationCodeMixin,
        AuthorizationServer,
        ClientMixin,
        OAuth2Request,
    )
    from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
    from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload

    jwk = hsm_jwk(pool, "ec-key")
    signing = joserfc_key(jwk, kid="op-2026-12")
    redirect_uri = "https://rp.example/callback"

    class Client(ClientMixin):  # type: ignore[misc]
        id_token_signed_response_alg = "ES256"

        def get_client_id(self) -> str:
            return "client-1"

        def get_default_redirect_uri(self) -> str:
            return redirect_uri

        def check_redirect_uri(self, uri: str) -> bool:
            return uri == redirect_uri

        def check_client_secret(self, secret: str) -> bool:
            return secret == "s3cret"

        def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
            return method == "client_secret_post"

        def check_grant_type(self, grant_type: str) -> bool:
            return grant_type == "authorization_code"

        def get_allowed_scope(self, scope: str) -> str:
            return scope

    class Code(AuthorizationCodeMixin):  # type: ignore[misc]
        def get_redirect_uri(self) -> str:
            return redirect_uri

        def get_scope(self) -> str:
            return "openid profile"

        def get_nonce(self) -> str:
            return "n-0S6_WzA2Mj"

        def get_auth_time(self) -> int:
            return 1_700_000_000

        def get_acr(self) -> None:
            return None

        def get_amr(self) -> None:
            return None

    client, saved = Client(), []

    class Server(AuthorizationServer):  # type: ignore[misc]
        def query_client(self, client_id: str) -> Any:
            return client if client_id == "client-1" else None

        def save_token(self, token: dict[str, Any], request: Any) -> None:
            saved.append(token)

        def create_oauth2_request(self, request: Any) -> Any:
            return request

        def handle_response(self, status: int, body: Any, headers: Any) -> Any:
            return status, body, headers

        def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
            pass

    class Grant(AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_post"]

        def query_authorization_code(self, code: str, client: Any) -> Any:
            return Code() if code == "code-1" else None

        def delete_authorization_code(self, authorization_code: Any) -> None:
            pass

        def authenticate_user(self, authorization_code: Any) -> Any:
            return {"id": "alice"}

    server = Server()
    server.register_token_generator(
        "default",
        lambda **kw: {
            "token_type": "Bearer",
            "access_token": "at-1",
            "expires_in": 3600,
            "scope": kw["scope"],
        },
    )
    server.register_grant(Grant, [_openid_code(KeySet([signing]))])

    class FormRequest(OAuth2Request):  # type: ignore[misc]
        def __init__(self, form: dict[str, str]) -> None:
            super().__init__("POST", "https://op.example/token")
            self.payload = BasicOAuth2Payload(form)
            self._form = form

        @property
        def form(self) -> dict[str, str]:
            return self._form

    form = {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": redirect_uri,
        "client_id": "client-1",
        "client_secret": "s3cret",
    }
    status, body, _ = server.create_token_response(FormRequest(form))
    assert status == 200, body
    assert saved and saved[0]["access_token"] == body["access_token"] == "at-1"
    published = KeySet.import_key_set(KeySet([signing]).as_dict())
    decoded = jose_jwt.decode(body["id_token"], published, algorithms=["ES256"])
    assert decoded.header["kid"] == "op-2026-12"
    assert decoded.claims["nonce"] == "n-0S6_WzA2Mj" and decoded.claims["sub"] == "alice"
    assert decoded.claims["aud"] == ["client-1"] and decoded.claims["auth_time"] == 1_700_000_000
    # A wrong client secret gets no token, and nothing was signed for it.
    status, body, _ = server.create_token_response(FormRequest({**form, "client_secret": "x"}))
    assert status in (400, 401) and body["error"] == "invalid_client", body
