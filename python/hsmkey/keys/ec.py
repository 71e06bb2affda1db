"""EC (P-256, P-384, P-521, secp256k1) private keys in the token, as cryptography
``EllipticCurvePrivateKey`` objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
    _prehashed_length_error,
    _read_point,
    _register_family,
    _rsa_alg_name,
)

if TYPE_CHECKING:
    from .._hsmkey import Key
    from ._base import Buffer

__all__ = ["HSMEllipticCurvePrivateKey"]

# JOSE names, for error messages that say which algorithm a caller asked for.
_CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}

_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "secp256k1": ec.SECP256K1,
}

# cryptography >= 44 has ECDSA(deterministic_signing=...): RFC 6979 nonces, which a token
# cannot promise.
_HAS_DETERMINISTIC = hasattr(ec.ECDSA, "deterministic_signing")


class HSMEllipticCurvePrivateKey(_HSMKeyMixin, ec.EllipticCurvePrivateKey):
    """An EC (P-256, P-384, P-521, secp256k1) private key in the token, as a cryptography
    ``EllipticCurvePrivateKey``.

    ``sign(data, ECDSA(hash))`` returns a DER signature, like cryptography's own keys
    (the token gives r||s; JOSE libraries convert back). ``ECDSA(Prehashed(hash))`` signs
    a digest you computed. ``exchange(ECDH(), peer)`` agrees a secret in the token (JWE
    ECDH-ES).
    """

    def __init__(self, key: Key) -> None:
        self._init(key, HSMEllipticCurvePrivateKey)

    def sign(
        self,
        data: Buffer,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
        *args: object,
    ) -> bytes:
        if (
            type(signature_algorithm) is not _ECDSA
            or args
            or (_HAS_DETERMINISTIC and signature_algorithm.deterministic_signing)
        ):
            self._check_signature_algorithm(signature_algorithm, args)
        name, size, prehashed = _hash_of(signature_algorithm.algorithm)
        if type(data) is not bytes:
            data = _bytes(data)
        if prehashed and len(data) != size:
            raise _prehashed_length_error()
        # DER, as cryptography's own keys return it (encoded in the core).
        return self._key.sign_raw("ECDSA", data, hash=name, prehashed=prehashed, der=True)

    def _check_signature_algorithm(self, sa: object, args: tuple[object, ...]) -> None:
        if isinstance(sa, AsymmetricPadding):
            # An RSA call (padding, hash) made on this EC key: jwcrypto does this for RS*/PS*.
            self._wrong_algorithm(_rsa_alg_name(sa, args))
        if not isinstance(sa, _ECDSA):
            raise HSMMechanismError(
                f"{type(sa).__name__} is not supported by the HSM {self._what()}: use ECDSA(hash)"
            )
        if args:
            raise TypeError("sign() takes data and signature_algorithm")
        if getattr(sa, "deterministic_signing", False):
            raise HSMMechanismError(
                "deterministic ECDSA (RFC 6979) is not available for HSM keys: "
                "the token picks the nonce"
            )

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH in the token: the shared secret with ``peer_public_key`` (same curve).

        The token derives it into a session object that is read once and destroyed at once
        (if destroying fails, the session is closed, which destroys it); the secret must
        reach Python for JWE's Concat KDF, so that object cannot be CKA_SENSITIVE."""
        if not isinstance(algorithm, ec.ECDH):
            raise HSMMechanismError(
                f"{type(algorithm).__name__} is not supported by the HSM {self._what()}: use ECDH()"
            )
        if not isinstance(peer_public_key, ec.EllipticCurvePublicKey):
            raise TypeError("peer_public_key must be an EllipticCurvePublicKey")
        if peer_public_key.curve.name != self.curve.name:
            raise ValueError("peer_public_key and self are not on the same curve")
        point = peer_public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return self._key.ecdh(point)

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._info.curve  # type: ignore[return-value]

    @property
    def key_size(self) -> int:
        return self._info.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._info.public_key  # type: ignore[return-value]

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        """Always raises: the private key cannot leave the token."""
        raise HSMMechanismError(NOT_EXTRACTABLE)

    def __copy__(self) -> HSMEllipticCurvePrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMEllipticCurvePrivateKey:
        return self


def _ec_builder(curve_cls: type[ec.EllipticCurve]) -> Callable[[bytes, str], _KeyInfo]:
    def build(point: bytes, curve_name: str) -> _KeyInfo:
        curve = curve_cls()
        pub = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        return _KeyInfo(HSMEllipticCurvePrivateKey, pub, curve.key_size, curve_name, curve)

    return build


for _name, _cls in _EC_CURVES.items():
    _CURVES[_name] = (False, _ec_builder(_cls))
_register_family("EC", _read_point, _build_curve_info)
