"""Ed25519 and Ed448 private keys in the token, as cryptography ``Ed25519PrivateKey`` and
``Ed448PrivateKey`` objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding

from ..exceptions import HSMMechanismError
from ._base import (
    _CURVES,
    _ECDSA,
    NOT_EXTRACTABLE,
    _build_curve_info,
    _bytes,
    _hash_of,
    _HSMKeyMixin,
    _KeyInfo,
    _read_point,
    _register_family,
    _rsa_alg_name,
)

if TYPE_CHECKING:
    from .._hsmkey import Key
    from ._base import Buffer

__all__ = ["HSMEd448PrivateKey", "HSMEd25519PrivateKey"]


class _HSMEdwardsMixin(_HSMKeyMixin):
    def sign(self, data: Buffer, *args: object) -> bytes:
        if args:
            self._edwards_misuse(args)
        if type(data) is not bytes:
            data = _bytes(data)
        return self._key.sign_raw("EDDSA", data)

    def _edwards_misuse(self, args: tuple[object, ...]) -> NoReturn:
        first = args[0]
        if isinstance(first, AsymmetricPadding):
            self._wrong_algorithm(_rsa_alg_name(first, args[1:]))
        if isinstance(first, _ECDSA):
            try:
                hname: str = _hash_of(first.algorithm)[0]
            except (HSMMechanismError, TypeError):
                hname = "?"
            self._wrong_algorithm(f"ECDSA with {hname}")
        raise TypeError("sign() of an Edwards key takes only the data")

    def private_bytes_raw(self) -> bytes:
        """Always raises: the private key cannot leave the token."""
        raise HSMMechanismError(NOT_EXTRACTABLE)


class HSMEd25519PrivateKey(_HSMEdwardsMixin, ed25519.Ed25519PrivateKey):
    """An Ed25519 private key in the token, as a cryptography ``Ed25519PrivateKey``."""

    def __init__(self, key: Key) -> None:
        self._init(key, HSMEd25519PrivateKey)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._info.public_key  # type: ignore[return-value]

    def __copy__(self) -> HSMEd25519PrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMEd25519PrivateKey:
        return self


class HSMEd448PrivateKey(_HSMEdwardsMixin, ed448.Ed448PrivateKey):
    """An Ed448 private key in the token, as a cryptography ``Ed448PrivateKey``."""

    def __init__(self, key: Key) -> None:
        self._init(key, HSMEd448PrivateKey)

    def public_key(self) -> ed448.Ed448PublicKey:
        return self._info.public_key  # type: ignore[return-value]

    def __copy__(self) -> HSMEd448PrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMEd448PrivateKey:
        return self


def _ed25519_info(point: bytes, curve_name: str) -> _KeyInfo:
    pub = ed25519.Ed25519PublicKey.from_public_bytes(point)
    return _KeyInfo(HSMEd25519PrivateKey, pub, 256, curve_name)


def _ed448_info(point: bytes, curve_name: str) -> _KeyInfo:
    pub = ed448.Ed448PublicKey.from_public_bytes(point)
    return _KeyInfo(HSMEd448PrivateKey, pub, 456, curve_name)


_CURVES["Ed25519"] = (True, _ed25519_info)
_CURVES["Ed448"] = (True, _ed448_info)
_register_family("EC_EDWARDS", _read_point, _build_curve_info)
