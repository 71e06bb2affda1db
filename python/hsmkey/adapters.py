"""Token keys as the key objects of joserfc, Authlib and josepy.

Those libraries keep a key's JWK members beside the cryptography key object, and build the
members of a private key by exporting its private numbers, which a token key refuses. The
functions here build the library's own key class from the public members instead, with the
HSM-backed cryptography key (:mod:`hsmkey.keys`) as the private half:

>>> signing = joserfc_key(HSMJWK.from_hsm(pool, key_label="signer"))   # doctest: +SKIP
>>> joserfc.jwt.encode({"alg": "ES256", "kid": signing.kid}, claims, signing)   # doctest: +SKIP

- :func:`joserfc_key`: a joserfc ``ECKey``, ``RSAKey`` or ``OKPKey``;
- :func:`authlib_key`: an Authlib ``authlib.jose`` ``ECKey``, ``RSAKey`` or ``OKPKey``;
- :func:`josepy_jwk`: a josepy ``JWKRSA`` or ``JWKEC`` (ACME account keys, certbot).

Each takes an :class:`~hsmkey.HSMJWK`, an HSM private-key object (``HSMJWK.hsm_private_key``,
:func:`hsmkey.keys.private_key_for`) or a token key (``pool.find_key(...)``). Signatures and
decryptions run in the token; everything the objects serialize (``as_dict()``, ``as_json()``,
``thumbprint()``, key sets, ``to_json()``) holds the public members only, and asking for the
private members raises :class:`~hsmkey.exceptions.HSMMechanismError`. The ``kid`` is the
HSMJWK's (the RFC 7638 thumbprint unless you chose another). Each library is imported when
its function is first called; a missing one raises ``ImportError`` naming the package.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, NoReturn, Union, overload

from .exceptions import HSMMechanismError
from .jwk import HSMJWK
from .keys import (
    NOT_EXTRACTABLE,
    HSMEd448PrivateKey,
    HSMEd25519PrivateKey,
    HSMEllipticCurvePrivateKey,
    HSMPrivateKey,
    HSMRSAPrivateKey,
)

if TYPE_CHECKING:
    import joserfc.jwk
    from josepy.jwk import JWKEC, JWKRSA

    from ._hsmkey import Key

    AnyHSMKey = Union[HSMJWK, HSMPrivateKey, Key]

__all__ = ["authlib_key", "josepy_jwk", "joserfc_key"]

_PRIVATE_KEY_CLASSES = (
    HSMRSAPrivateKey,
    HSMEllipticCurvePrivateKey,
    HSMEd25519PrivateKey,
    HSMEd448PrivateKey,
)
# JWK members that hold private (or symmetric) key material: never in what the adapters make.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _missing(package: str, function: str, exc: ImportError) -> ImportError:
    return ImportError(
        f"hsmkey.adapters.{function}() needs the {package} package, which is not installed: "
        f"pip install {package} ({exc})"
    )


def _resolve(key: object, function: str) -> tuple[dict[str, Any], HSMPrivateKey]:
    """The public JWK members (with ``kid``) and the HSM private key of ``key``."""
    if isinstance(key, HSMJWK):
        jwk = key
        private = key.hsm_private_key
    elif isinstance(key, _PRIVATE_KEY_CLASSES):
        private = key
        jwk = HSMJWK.from_hsm(key.hsm_key)
    elif hasattr(key, "sign_raw") and hasattr(key, "key_type"):  # a token key (hsmkey.Key)
        jwk = HSMJWK.from_hsm(key)  # type: ignore[arg-type]
        private = jwk.hsm_private_key
    else:
        raise TypeError(
            f"{function}() takes an hsmkey HSMJWK, an HSM private key (HSMJWK.hsm_private_key) "
            f"or a token key (pool.find_key(...)), not {type(key).__name__}; "
            "software keys go to the library's own import functions"
        )
    members: dict[str, Any] = json.loads(jwk.export_public())
    leaked = PRIVATE_MEMBERS & members.keys()
    if leaked:  # export_public() of an HSMJWK never has them: a guard, not a path
        raise HSMMechanismError(f"private members {sorted(leaked)} in a public JWK")
    return members, private


def _merge(
    members: dict[str, Any], kid: str | None, parameters: dict[str, Any] | None, function: str
) -> dict[str, Any]:
    if kid is not None:
        if not isinstance(kid, str):
            raise TypeError(f"kid must be a str, not {type(kid).__name__}")
        members["kid"] = kid
    if parameters:
        if not isinstance(parameters, dict):
            raise TypeError(f"parameters must be a dict, not {type(parameters).__name__}")
        fixed = {"kty", "n", "e", "crv", "x", "y"} | PRIVATE_MEMBERS
        bad = sorted(fixed & parameters.keys())
        if bad:
            raise ValueError(
                f"{function}(): parameters cannot set {bad}: the key members come from the "
                "token key"
            )
        members.update(parameters)
    return members


def _what(private: HSMPrivateKey) -> str:
    return private._what()


def _no_private(library: str, hint: str = "") -> NoReturn:
    raise HSMMechanismError(
        f"{NOT_EXTRACTABLE}: this {library} key holds the public members only" + hint
    )


# -- joserfc ---------------------------------------------------------------------------------


@functools.cache
def _joserfc_classes() -> dict[str, type[Any]]:
    try:
        from joserfc.jwk import ECKey, OKPKey, RSAKey
    except ImportError as exc:
        raise _missing("joserfc", "joserfc_key", exc) from None

    class _Mixin:
        _hsm_private: HSMPrivateKey

        def as_dict(self, private: bool = False, **params: Any) -> Any:
            """The public JWK; ``private=True`` raises ``HSMMechanismError``."""
            if private:
                _no_private("joserfc")
            return super().as_dict(False, **params)  # type: ignore[misc]

        def as_bytes(
            self,
            encoding: Any = None,
            private: bool = False,
            password: Any = None,
        ) -> bytes:
            """The public key as PEM or DER; ``private=True`` raises ``HSMMechanismError``."""
            if private:
                _no_private("joserfc")
            return super().as_bytes(encoding, False, password)  # type: ignore[misc,no-any-return]

        def __repr__(self) -> str:
            return f"<{type(self).__name__} kid={self.kid!r} {_what(self._hsm_private)}>"  # type: ignore[attr-defined]

        def __reduce__(self) -> NoReturn:
            raise TypeError(f"{type(self).__name__} refers to a key inside a token: not picklable")

    class HSMRSAKey(_Mixin, RSAKey):
        """A joserfc ``RSAKey`` whose private half is in the token."""

    class HSMECKey(_Mixin, ECKey):
        """A joserfc ``ECKey`` whose private half is in the token."""

    class HSMOKPKey(_Mixin, OKPKey):
        """A joserfc ``OKPKey`` whose private half is in the token."""

    return {"RSA": HSMRSAKey, "EC": HSMECKey, "OKP": HSMOKPKey}


@overload
def joserfc_key(
    key: HSMRSAPrivateKey, *, kid: str | None = ..., parameters: dict[str, Any] | None = ...
) -> joserfc.jwk.RSAKey: ...
@overload
def joserfc_key(
    key: HSMEllipticCurvePrivateKey,
    *,
    kid: str | None = ...,
    parameters: dict[str, Any] | None = ...,
) -> joserfc.jwk.ECKey: ...
@overload
def joserfc_key(
    key: HSMEd25519PrivateKey | HSMEd448PrivateKey,
    *,
    kid: str | None = ...,
    parameters: dict[str, Any] | None = ...,
) -> joserfc.jwk.OKPKey: ...
@overload
def joserfc_key(
    key: HSMJWK | Key, *, kid: str | None = ..., parameters: dict[str, Any] | None = ...
) -> joserfc.jwk.RSAKey | joserfc.jwk.ECKey | joserfc.jwk.OKPKey: ...
def joserfc_key(
    key: AnyHSMKey, *, kid: str | None = None, parameters: dict[str, Any] | None = None
) -> joserfc.jwk.RSAKey | joserfc.jwk.ECKey | joserfc.jwk.OKPKey:
    """A joserfc key (``RSAKey``, ``ECKey`` or ``OKPKey``) that signs and decrypts in the token.

    Use it wherever joserfc takes a key: ``joserfc.jwt.encode``, ``jws.serialize_compact``,
    ``jwe.decrypt_compact``, a ``KeySet``. ``as_dict()``, ``as_pem()``, ``thumbprint()`` and
    ``KeySet([...]).as_dict()`` give the public key; ``as_dict(private=True)`` raises
    :class:`~hsmkey.exceptions.HSMMechanismError`.

    :param key: an :class:`~hsmkey.HSMJWK`, an HSM private key or a token key.
    :param kid: the key's ``kid`` (default: the HSMJWK's, the RFC 7638 thumbprint unless set).
    :param parameters: more JWK members, such as ``{"use": "sig", "alg": "ES256"}``.
    """
    members, private = _resolve(key, "joserfc_key")
    members = _merge(members, kid, parameters, "joserfc_key")
    cls = _joserfc_classes()[members["kty"]]
    obj = cls(private, members)
    obj._hsm_private = private
    return obj  # type: ignore[no-any-return]


# -- Authlib ---------------------------------------------------------------------------------

_AUTHLIB_OIDC_HINT = (
    ". Authlib 1.7 and later sign OpenID Connect ID tokens with joserfc and re-import "
    "authlib.jose keys from their private members: return hsmkey.adapters.joserfc_key(...) "
    "from resolve_client_private_key() (or pass it as the key) instead"
)


@functools.cache
def _authlib_classes() -> dict[str, type[Any]]:
    try:
        from authlib.jose import ECKey, OKPKey, RSAKey  # type: ignore[import-untyped]
    except ImportError as exc:
        raise _missing("Authlib", "authlib_key", exc) from None

    class _Mixin:
        _hsm_private: HSMPrivateKey

        def as_dict(self, is_private: bool = False, **params: Any) -> Any:
            """The public JWK; ``is_private=True`` raises ``HSMMechanismError``."""
            if is_private:
                _no_private("Authlib", _AUTHLIB_OIDC_HINT)
            return super().as_dict(False, **params)  # type: ignore[misc]

        def as_bytes(
            self, encoding: Any = None, is_private: bool = False, password: Any = None
        ) -> bytes:
            """The public key as PEM or DER; ``is_private=True`` raises ``HSMMechanismError``."""
            if is_private:
                _no_private("Authlib")
            return super().as_bytes(encoding, False, password)  # type: ignore[misc,no-any-return]

        def __repr__(self) -> str:
            return f"<{type(self).__name__} kid={self.kid!r} {_what(self._hsm_private)}>"  # type: ignore[attr-defined]

        def __reduce__(self) -> NoReturn:
            raise TypeError(f"{type(self).__name__} refers to a key inside a token: not picklable")

    class HSMRSAKey(_Mixin, RSAKey):  # type: ignore[misc]
        """An Authlib ``RSAKey`` whose private half is in the token."""

    class HSMECKey(_Mixin, ECKey):  # type: ignore[misc]
        """An Authlib ``ECKey`` whose private half is in the token."""

    class HSMOKPKey(_Mixin, OKPKey):  # type: ignore[misc]
        """An Authlib ``OKPKey`` whose private half is in the token."""

    return {"RSA": HSMRSAKey, "EC": HSMECKey, "OKP": HSMOKPKey}


def authlib_key(
    key: AnyHSMKey, *, kid: str | None = None, parameters: dict[str, Any] | None = None
) -> Any:
    """An Authlib ``authlib.jose`` key (``RSAKey``, ``ECKey`` or ``OKPKey``) that signs and
    decrypts in the token: for ``authlib.jose.jwt.encode``, ``JsonWebSignature``,
    ``JsonWebEncryption`` and ``KeySet``.

    ``as_dict()``, ``as_json()``, ``thumbprint()`` and ``KeySet([...]).as_dict()`` give the
    public key; ``as_dict(is_private=True)`` raises :class:`~hsmkey.exceptions.HSMMechanismError`.
    Authlib 1.7 and later sign OpenID Connect ID tokens with joserfc: give its server code
    :func:`joserfc_key` (see the recipes); Authlib 1.6 and earlier take this key.

    :param key: an :class:`~hsmkey.HSMJWK`, an HSM private key or a token key.
    :param kid: the key's ``kid`` (default: the HSMJWK's, the RFC 7638 thumbprint unless set).
    :param parameters: more JWK members, such as ``{"use": "sig", "alg": "ES256"}``.
    """
    members, private = _resolve(key, "authlib_key")
    members = _merge(members, kid, parameters, "authlib_key")
    cls = _authlib_classes()[members["kty"]]
    obj = cls(private_key=private, public_key=private.public_key())
    obj._dict_data = members
    obj._hsm_private = private
    return obj


# -- josepy ----------------------------------------------------------------------------------


@functools.cache
def _josepy_classes() -> dict[str, type[Any]]:
    try:
        from josepy import util as josepy_util
        from josepy.jwk import JWKEC, JWKRSA
    except ImportError as exc:
        raise _missing("josepy", "josepy_jwk", exc) from None

    def _wrapped(jwk: Any) -> Any:
        """The HSM private key inside a josepy JWK (behind its comparable wrapper)."""
        return jwk.key._wrapped

    def _public_numbers(wrapped: Any) -> Any:
        public = wrapped.public_key() if hasattr(wrapped, "private_numbers") else wrapped
        return public.public_numbers()

    class _Comparable:
        """josepy's comparable wrapper, comparing and hashing token keys by their public key
        (josepy's own compares private numbers, which a token key refuses)."""

        _wrapped: Any

        def __eq__(self, other: object) -> bool:
            if not isinstance(other, type(self)):
                return NotImplemented
            return bool(
                type(self._wrapped) is type(other._wrapped)
                and _public_numbers(self._wrapped) == _public_numbers(other._wrapped)
            )

        def __hash__(self) -> int:
            return hash((type(self), type(self._wrapped), _public_numbers(self._wrapped)))

    class _HSMComparableRSAKey(_Comparable, josepy_util.ComparableRSAKey):
        pass

    class _HSMComparableECKey(_Comparable, josepy_util.ComparableECKey):
        pass

    class HSMJWKRSA(JWKRSA):
        """A josepy ``JWKRSA`` whose private key is in the token: it signs (``JWS.sign``) and
        serializes (``to_json``, ``json_dumps``, ``thumbprint``) as its public key."""

        __slots__ = ("key",)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["key"] = _HSMComparableRSAKey(kwargs["key"])
            super().__init__(*args, **kwargs)

        def fields_to_partial_json(self) -> dict[str, Any]:
            return JWKRSA(key=_wrapped(self).public_key()).fields_to_partial_json()

        def public_key(self) -> JWKRSA:
            return JWKRSA(key=_wrapped(self).public_key())

        def __repr__(self) -> str:
            return f"<{type(self).__name__} {_what(_wrapped(self))}>"

        def __reduce__(self) -> NoReturn:
            raise TypeError(f"{type(self).__name__} refers to a key inside a token: not picklable")

    class HSMJWKEC(JWKEC):
        """A josepy ``JWKEC`` whose private key is in the token: it signs (``JWS.sign``) and
        serializes (``to_json``, ``json_dumps``, ``thumbprint``) as its public key."""

        __slots__ = ("key",)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["key"] = _HSMComparableECKey(kwargs["key"])
            super().__init__(*args, **kwargs)

        def fields_to_partial_json(self) -> dict[str, Any]:
            return JWKEC(key=_wrapped(self).public_key()).fields_to_partial_json()

        def public_key(self) -> JWKEC:
            return JWKEC(key=_wrapped(self).public_key())

        def __repr__(self) -> str:
            return f"<{type(self).__name__} {_what(_wrapped(self))}>"

        def __reduce__(self) -> NoReturn:
            raise TypeError(f"{type(self).__name__} refers to a key inside a token: not picklable")

    return {"RSA": HSMJWKRSA, "EC": HSMJWKEC}


# Curves josepy's JWKEC knows.
_JOSEPY_CURVES = ("P-256", "P-384", "P-521")


@overload
def josepy_jwk(key: HSMRSAPrivateKey) -> JWKRSA: ...
@overload
def josepy_jwk(key: HSMEllipticCurvePrivateKey) -> JWKEC: ...
@overload
def josepy_jwk(key: HSMJWK | Key) -> JWKRSA | JWKEC: ...
def josepy_jwk(key: AnyHSMKey) -> JWKRSA | JWKEC:
    """A josepy JWK (``JWKRSA`` or ``JWKEC``) whose ``JWS.sign`` runs in the token: an ACME
    account key (certbot's ``acme`` package) that stays in the HSM.

    ``to_json()``, ``to_partial_json()``, ``json_dumps()`` and ``thumbprint()`` give the
    public key (an ACME key authorization uses the thumbprint). josepy signs RS256-512,
    PS256-512 and ES256-512 (P-256, P-384, P-521); it has no EdDSA or secp256k1 keys, so
    those raise :class:`~hsmkey.exceptions.HSMMechanismError`. (josepy's PS* use the longest
    PSS salt, not the hash-long salt of RFC 7518, with any key: other libraries reject them.)
    """
    members, private = _resolve(key, "josepy_jwk")
    kty = members["kty"]
    if kty == "OKP" or (kty == "EC" and members.get("crv") not in _JOSEPY_CURVES):
        raise HSMMechanismError(
            f"josepy has no JWK class for the HSM {_what(private)}: it signs with RSA keys "
            "and EC keys on P-256, P-384 and P-521"
        )
    return _josepy_classes()[kty](key=private)  # type: ignore[no-any-return]
