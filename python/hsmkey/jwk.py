"""``HSMJWK``: a jwcrypto JWK whose private key stays in the token.

>>> with pool.session() as session:                                   # doctest: +SKIP
...     key = HSMJWK.from_hsm(session, key_label="my-key")
...     jws = JWS(payload)
...     jws.add_signature(key, alg="ES256", protected={"alg": "ES256", "kid": key["kid"]})

The object is an ordinary :class:`jwcrypto.jwk.JWK` for everything public: its members are
the public parameters (``kty``, ``n``/``e``, ``crv``/``x``/``y``; for ML-DSA keys, RFC 9964's
``kty`` ``"AKP"``, ``alg`` and ``pub``), ``kid`` (the RFC 7638 thumbprint unless given; for
AKP keys over ``alg``, ``kty`` and ``pub`` as RFC 9964 section 6 says), and
``export_public()`` / ``thumbprint()`` / equality work as for any JWK. ``has_private`` is
true and ``get_op_key("sign")`` returns an HSM-backed cryptography private key
(:mod:`hsmkey.keys`), so jwcrypto's JWS, JWT and JWE code signs and unwraps in the token.
Exporting the private key raises :class:`~hsmkey.exceptions.HSMMechanismError`.

Loading a key that was loaded before (in any session or pool) costs microseconds: the
public parameters, the thumbprint and the public key object are cached per key material.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from cryptography.hazmat.primitives import hashes
from jwcrypto.common import base64url_encode  # type: ignore[import-untyped]
from jwcrypto.jwk import JWK, JWKValuesRegistry  # type: ignore[import-untyped]

from .exceptions import HSMKeyNotFoundError, HSMMechanismError
from .keys import (
    NOT_EXTRACTABLE,
    HSMEd448PrivateKey,
    HSMEd25519PrivateKey,
    HSMEllipticCurvePrivateKey,
    HSMMLDSAPrivateKey,
    HSMPrivateKey,
    HSMRSAPrivateKey,
    _describe,
    _key_info,
    _KeyInfo,
)
from .keys.mldsa import _HSMMLDSAMixin

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    from ._hsmkey import Key, Pool, Session
    from .group import GroupKey, PoolGroup

__all__ = ["HSMJWK", "jwks"]

_T = TypeVar("_T", bound="HSMJWK")
_K = TypeVar("_K", bound=HSMPrivateKey)

# Curve names jwcrypto passes to get_op_key() for ES* algorithms, and the algorithm each
# stands for (for error messages).
_CURVE_ALIASES = {"P-256K": "secp256k1"}
_CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}

# The instance attributes JWK.__init__ sets (caches, flags), taken from a real instance so
# that a jwcrypto release that adds one keeps working with the fast constructor below.
_JWK_ATTRS: dict[str, Any] = dict(vars(JWK()))

# Key types with no JOSE representation (SLH-DSA: no JOSE algorithm yet), left out of jwks().
_NO_JWK = frozenset({"SLH_DSA"})

_NO_EXPORT = (
    NOT_EXTRACTABLE + "; use export_public() or export(private_key=False) for the public key"
)


class _JWKInfo:
    """The public JWK of one token key, computed once per key material."""

    __slots__ = ("crv", "frozen", "items", "thumbprint")

    def __init__(self, key: Key, info: _KeyInfo) -> None:
        key_type = key.key_type
        curve = info.curve_name
        items: list[tuple[str, str]]
        if key_type == "RSA":
            n = (key.modulus or b"").lstrip(b"\0")
            e = (key.public_exponent or b"").lstrip(b"\0")
            items = [("kty", "RSA"), ("n", base64url_encode(n)), ("e", base64url_encode(e))]
        elif key_type == "EC":
            point = key.ec_point or b""
            size = (len(point) - 1) // 2
            items = [
                ("kty", "EC"),
                ("crv", str(curve)),
                ("x", base64url_encode(point[1 : 1 + size])),
                ("y", base64url_encode(point[1 + size :])),
            ]
        elif key_type == "ML_DSA":
            # RFC 9964: the algorithm is part of the key (and of its thumbprint).
            items = [
                ("kty", "AKP"),
                ("alg", str(key.parameter_set)),
                ("pub", base64url_encode(key.public_value)),
            ]
            curve = None
        else:
            items = [("kty", "OKP"), ("crv", str(curve)), ("x", base64url_encode(key.ec_point))]
        self.items: tuple[tuple[str, str], ...] = tuple(items)
        self.crv: str | None = curve
        kty = items[0][1]
        # Members that must not change while the object refers to this token key.
        self.frozen: frozenset[str] = frozenset(JWKValuesRegistry[kty]) | {"kty"}
        if kty == "AKP":
            self.frozen |= {"alg"}
        # jwcrypto's own thumbprint (RFC 7638, SHA-256), computed on a plain JWK that also
        # validates the parameters once.
        self.thumbprint: str = JWK(**dict(items)).thumbprint()


def _jwk_info(key: Key, info: _KeyInfo) -> _JWKInfo:
    jinfo = info.jwk
    if jinfo is None:
        jinfo = info.jwk = _JWKInfo(key, info)
    return jinfo  # type: ignore[no-any-return]


# kid -> (label, id) of the key that had that thumbprint: later lookups by kid cost one
# cached find_key() instead of listing the token (checked against the thumbprint each time).
_KID_HINTS: dict[str, tuple[str | None, bytes]] = {}


def _thumbprint(key: Key) -> str:
    info = _key_info(key)
    return (info.jwk or _jwk_info(key, info)).thumbprint


def _find_by_kid(source: Session | Pool | PoolGroup, kid: str) -> Key:
    # A group's keys have the interface of a token key (duck typing): typed as Key here.
    source = cast("Session | Pool", source)
    hint = _KID_HINTS.get(kid)
    if hint is not None:
        try:
            key = source.find_key(key_label=hint[0], key_id=hint[1] or None)
        except HSMKeyNotFoundError:
            pass
        else:
            if _thumbprint(key) == kid:
                return key
    matches = [k for k in source.list_keys() if _thumbprint(k) == kid]
    if not matches:
        raise HSMKeyNotFoundError(f"no private key in the token has the thumbprint kid {kid!r}")
    if len({(k.label, k.id) for k in matches}) > 1:
        raise HSMKeyNotFoundError(
            f"{len(matches)} keys have the thumbprint {kid!r}; pass key_label= or key_id="
        )
    _KID_HINTS[kid] = (matches[0].label, matches[0].id)
    return matches[0]


def _find_key(
    source: Session | Pool | PoolGroup,
    key_label: str | None,
    key_id: bytes | str | None,
    kid: str | None,
) -> Key:
    if key_label is None and key_id is None:
        if kid is None:
            raise TypeError("from_hsm() needs key_label=, key_id= or kid=")
        return _find_by_kid(source, kid)
    return cast("Session | Pool", source).find_key(key_label=key_label, key_id=key_id)


def jwks(source: Session | Pool | PoolGroup) -> dict[str, list[dict[str, Any]]]:
    """The public JWK Set (RFC 7517) of every key in the token that hsmkey can use, each
    with its RFC 7638 thumbprint as ``kid``: what a service publishes at its JWKS URL.

    A public key held by several key objects (the same key imported under two labels) is
    published once."""
    keys = []
    seen: set[str] = set()
    for key in cast("Session | Pool", source).list_keys():
        if key.key_type in _NO_JWK:
            continue
        info = _key_info(key)
        jinfo = info.jwk or _jwk_info(key, info)
        if jinfo.thumbprint in seen:
            continue
        seen.add(jinfo.thumbprint)
        member = dict(jinfo.items)
        member["kid"] = jinfo.thumbprint
        keys.append(member)
    return {"keys": keys}


class HSMJWK(JWK):  # type: ignore[misc]
    """A jwcrypto JWK backed by a private key in a PKCS#11 token.

    Make one with :meth:`from_hsm`; the constructor and jwcrypto's ``import_*`` /
    ``generate`` / ``from_*`` class methods do not apply to HSM keys.
    """

    # Set by _from_key (not by __init__); declared for type checkers.
    _hsm_jwk: _JWKInfo
    _hsm_private: HSMPrivateKey
    _hsm_public: PublicKeyTypes

    def __init__(self, **kwargs: Any) -> None:
        raise TypeError(
            "HSMJWK objects refer to a key in a token: make one with "
            "HSMJWK.from_hsm(session_or_pool, key_label=...); use jwcrypto.jwk.JWK for "
            "software keys"
        )

    @classmethod
    def from_hsm(
        cls: type[_T],
        source: Session | Pool | PoolGroup | Key | GroupKey,
        *,
        key_label: str | None = None,
        key_id: bytes | str | None = None,
        kid: str | None = None,
    ) -> _T:
        """The JWK of the private key labelled ``key_label`` (and/or with CKA_ID ``key_id``).

        :param source: a session (the key is valid while the session is open), a pool
            (each operation borrows a session from it: usable from any thread, any time),
            a :class:`~hsmkey.PoolGroup` (each operation runs on one of its members, with
            failover), or a key found before.
        :param kid: the JWK's ``kid``; the RFC 7638 SHA-256 thumbprint by default.
        :raises HSMKeyNotFoundError: no private key (or more than one) matches.
        """
        if kid is not None and not isinstance(kid, str):
            raise TypeError(f"kid must be a str, not {type(kid).__name__}")
        if hasattr(source, "find_key"):
            key = _find_key(cast("Session | Pool | PoolGroup", source), key_label, key_id, kid)
        elif hasattr(source, "sign_raw"):
            if key_label is not None or key_id is not None:
                raise TypeError("key_label= and key_id= do not apply when source is a Key")
            key = cast("Key", cast(object, source))  # a Key, or a GroupKey (the same interface)
        else:
            raise TypeError(
                "source must be an hsmkey Session, SessionPool, PoolGroup or Key, not "
                f"{type(source).__name__}"
            )
        return cls._from_key(key, kid)

    @classmethod
    def _from_key(cls: type[_T], key: Key, kid: str | None) -> _T:
        # The hot path of `with pool.session() as s: HSMJWK.from_hsm(s, ...)`: no jwcrypto
        # parsing, no validation (the cached parameters were validated when first built).
        info = _key_info(key)
        jinfo = info.jwk
        if jinfo is None:
            jinfo = _jwk_info(key, info)
        obj = dict.__new__(cls)
        dict.update(obj, jinfo.items)
        dict.__setitem__(obj, "kid", jinfo.thumbprint if kid is None else kid)
        private = info.cls._new(key, info)
        attrs = obj.__dict__
        attrs.update(_JWK_ATTRS)
        # jwcrypto's own caches, for its internal paths that bypass get_op_key().
        attrs["_cache_pub_k"] = info.public_key
        attrs["_cache_pri_k"] = private
        attrs["_hsm_jwk"] = jinfo
        attrs["_hsm_private"] = private
        attrs["_hsm_public"] = info.public_key
        return obj

    # -- what jwcrypto calls ------------------------------------------------------------

    def get_op_key(self, operation: str | None = None, arg: str | None = None) -> Any:
        """The key object for a jwcrypto operation: the HSM private key for ``sign``,
        ``decrypt`` and ``unwrapKey``, the software public key for ``verify``, ``encrypt``
        and ``wrapKey``. ``arg`` is the curve an ES* algorithm needs (jwcrypto passes it):
        a key on another curve raises :class:`~hsmkey.exceptions.HSMMechanismError`."""
        if operation == "sign":
            if arg is not None and arg != self._hsm_jwk.crv:
                self._wrong_curve(arg)
            self._check_constraints("sig", operation)
            return self._hsm_private
        if operation == "verify":
            if arg is not None and arg != self._hsm_jwk.crv:
                self._wrong_curve(arg)
            self._check_constraints("sig", operation)
            return self._hsm_public
        if operation == "encrypt" or operation == "wrapKey":
            self._check_constraints("enc", operation)
            return self._hsm_public
        if operation == "decrypt" or operation == "unwrapKey":
            self._check_constraints("enc", operation)
            return self._hsm_private
        return super().get_op_key(operation, arg)

    def _wrong_curve(self, arg: str) -> None:
        crv = _CURVE_ALIASES.get(arg, arg)
        if crv == self._hsm_jwk.crv:
            return
        alg = _CURVE_ALGS.get(crv, f"an algorithm on curve {crv}")
        info = self._hsm_private._info
        have = f"EC {info.curve_name}" if self.get("kty") == "EC" else self._kind()
        raise HSMMechanismError(
            f"{alg} needs an EC key on {crv}, but HSM key "
            f"{_describe(self._hsm_private.hsm_key)} is {have}"
        )

    def _kind(self) -> str:
        info = self._hsm_private._info
        if self.get("kty") == "AKP":
            return str(self.get("alg"))
        if info.curve_name is None:
            return f"RSA {info.key_size}"
        return info.curve_name

    @property
    def has_private(self) -> bool:
        """Always true: the private key is in the token (and cannot be exported)."""
        return True

    def thumbprint(self, hashalg: hashes.HashAlgorithm = hashes.SHA256()) -> str:  # noqa: B008
        """The RFC 7638 thumbprint (cached for SHA-256)."""
        if type(hashalg) is hashes.SHA256:
            return self._hsm_jwk.thumbprint
        return str(super().thumbprint(hashalg))

    # -- the token key --------------------------------------------------------------------

    @property
    def hsm_key(self) -> Key:
        """The token key (``hsmkey._hsmkey.Key``)."""
        return self._hsm_private.hsm_key

    @property
    def hsm_private_key(self) -> HSMPrivateKey:
        """The HSM-backed cryptography private key (for PyJWT, joserfc, cryptography).

        Its static type is the union of the four key classes; typed code that calls
        type-specific methods uses :attr:`rsa_private_key`, :attr:`ec_private_key`,
        :attr:`ed25519_private_key` or :attr:`ed448_private_key` instead."""
        return self._hsm_private

    @property
    def rsa_private_key(self) -> HSMRSAPrivateKey:
        """:attr:`hsm_private_key` typed as an RSA key; ``HSMMechanismError`` for others."""
        return self._typed(HSMRSAPrivateKey, "an RSA")

    @property
    def ec_private_key(self) -> HSMEllipticCurvePrivateKey:
        """:attr:`hsm_private_key` typed as an EC key; ``HSMMechanismError`` for others."""
        return self._typed(HSMEllipticCurvePrivateKey, "an EC")

    @property
    def ed25519_private_key(self) -> HSMEd25519PrivateKey:
        """:attr:`hsm_private_key` typed as an Ed25519 key; ``HSMMechanismError`` for others."""
        return self._typed(HSMEd25519PrivateKey, "an Ed25519")

    @property
    def ed448_private_key(self) -> HSMEd448PrivateKey:
        """:attr:`hsm_private_key` typed as an Ed448 key; ``HSMMechanismError`` for others."""
        return self._typed(HSMEd448PrivateKey, "an Ed448")

    @property
    def mldsa_private_key(self) -> HSMMLDSAPrivateKey:
        """:attr:`hsm_private_key` typed as an ML-DSA key (``sign(data, context)``,
        ``deterministic``); ``HSMMechanismError`` for others."""
        private: Any = self._hsm_private
        if not isinstance(private, _HSMMLDSAMixin):
            raise HSMMechanismError(f"{_describe(private.hsm_key)} is not an ML-DSA key")
        return cast("HSMMLDSAPrivateKey", private)

    def _typed(self, cls: type[_K], what: str) -> _K:
        private = self._hsm_private
        if not isinstance(private, cls):
            raise HSMMechanismError(f"{_describe(private.hsm_key)} is not {what} key")
        return private

    # -- compact JWS without jwcrypto's JWS object -----------------------------------------

    @property
    def default_alg(self) -> str:
        """The JOSE algorithm this key signs with by default: RS256 for RSA, ES256/384/512
        or ES256K by curve, EdDSA for Edwards keys, the parameter set (ML-DSA-44/65/87) for
        ML-DSA keys."""
        key = self._hsm_private.hsm_key
        if key.key_type == "RSA":
            return "RS256"
        if key.key_type == "ML_DSA":
            return str(key.parameter_set)
        return _CURVE_ALGS.get(key.curve or "", "EdDSA")

    def sign_compact(
        self,
        payload: bytes,
        alg: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A compact JWS (``header.payload.signature``) of ``payload``, signed in the token.

        The protected header is ``{"alg": alg, "kid": <this key's kid>}`` plus ``headers``.
        The result is an ordinary JWS (verify it with jwcrypto, PyJWT or any library); making
        it skips jwcrypto's ``JWS`` object, whose own work costs more per token than an ES256
        signature does in SoftHSM2.
        """
        return self.sign_compact_many([payload], alg, headers=headers)[0]

    def sign_compact_many(
        self,
        payloads: list[bytes],
        alg: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        """:meth:`sign_compact` for many payloads, signed in one call to the token
        (``Key.sign_many``: one session, one GIL release)."""
        prefix = self._jws_prefix(alg, headers)
        inputs = [(prefix + base64url_encode(p)).encode("ascii") for p in payloads]
        signatures = self._hsm_private.hsm_key.sign_many(self._jws_alg(alg), inputs)
        return [
            i.decode("ascii") + "." + base64url_encode(sig) for i, sig in zip(inputs, signatures)
        ]

    def make_jwt(
        self,
        claims: dict[str, Any],
        alg: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A signed JWT of ``claims`` (compact JWS with ``"typ": "JWT"``), signed in the
        token; see :meth:`sign_compact`."""
        body = json.dumps(claims, separators=(",", ":")).encode()
        return self.sign_compact(body, alg, headers={"typ": "JWT", **(headers or {})})

    async def sign_compact_async(
        self,
        payload: bytes,
        alg: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """:meth:`sign_compact` for asyncio: the token signs on a worker thread
        (``Key.sign_async``) while the event loop runs other tasks. Call it from a coroutine
        (``await key.sign_compact_async(payload)``)."""
        prefix = self._jws_prefix(alg, headers)
        signing_input = (prefix + str(base64url_encode(payload))).encode("ascii")
        signature = await self._hsm_private.hsm_key.sign_async(self._jws_alg(alg), signing_input)
        return signing_input.decode("ascii") + "." + str(base64url_encode(signature))

    async def make_jwt_async(
        self,
        claims: dict[str, Any],
        alg: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """:meth:`make_jwt` for asyncio (see :meth:`sign_compact_async`)."""
        body = json.dumps(claims, separators=(",", ":")).encode()
        return await self.sign_compact_async(body, alg, headers={"typ": "JWT", **(headers or {})})

    def _jws_alg(self, alg: str | None) -> str:
        return alg or self.default_alg

    def _jws_prefix(self, alg: str | None, headers: dict[str, Any] | None) -> str:
        """The base64url protected header and its dot."""
        header = {
            "alg": self._jws_alg(alg),
            "kid": dict.__getitem__(self, "kid"),
            **(headers or {}),
        }
        return str(base64url_encode(json.dumps(header, separators=(",", ":")))) + "."

    # -- no export of the private key -----------------------------------------------------

    def export(self, private_key: bool = True, as_dict: bool = False) -> Any:
        """The public JWK (``private_key=False``); the private key cannot be exported."""
        if private_key is True:
            raise HSMMechanismError(_NO_EXPORT)
        return self.export_public(as_dict)

    def export_private(self, as_dict: bool = False) -> NoReturn:
        """Always raises: the private key cannot leave the token."""
        raise HSMMechanismError(_NO_EXPORT)

    def export_to_pem(self, private_key: bool = False, password: Any = False) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo); the private key cannot be exported."""
        if private_key:
            raise HSMMechanismError(_NO_EXPORT)
        return bytes(super().export_to_pem(private_key=False, password=password))

    # -- the members that identify the token key cannot change ----------------------------

    def import_key(self, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "an HSMJWK always refers to its token key: import keys into a jwcrypto.jwk.JWK"
        )

    def __setitem__(self, item: str, value: Any) -> None:
        if item in self._hsm_jwk.frozen:
            if dict.get(self, item) == value:
                return
            raise ValueError(f"cannot change {item!r} of a key held in an HSM")
        super().__setitem__(item, value)

    def __delitem__(self, item: str) -> None:
        if item in self._hsm_jwk.frozen:
            raise ValueError(f"cannot remove {item!r} from a key held in an HSM")
        super().__delitem__(item)

    # -- copies, pickling, repr -----------------------------------------------------------

    def __copy__(self: _T) -> _T:
        obj = dict.__new__(type(self))
        dict.update(obj, self)
        obj.__dict__.update(self.__dict__)
        return obj

    def __deepcopy__(self: _T, memo: dict[int, Any]) -> _T:
        obj = dict.__new__(type(self))
        memo[id(self)] = obj
        items: list[tuple[str, Any]] = list(dict.items(self))
        for name, value in items:
            dict.__setitem__(obj, name, copy.deepcopy(value, memo))
        obj.__dict__.update(self.__dict__)  # the token key and caches are shared
        return obj

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(
            "an HSMJWK cannot be pickled: it refers to a key inside a token; pickle "
            "export_public() and call HSMJWK.from_hsm() in the other process"
        )

    def __repr__(self) -> str:
        key = self._hsm_private.hsm_key
        return json.dumps(
            {
                "kid": self.get("kid", "Missing Key ID"),
                "thumbprint": self._hsm_jwk.thumbprint,
                "hsm_label": key.label,
                "hsm_id": key.id.hex(),
            }
        )
