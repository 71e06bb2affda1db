"""HSM-backed private keys with pyca/cryptography's interfaces.

The classes here subclass cryptography's abstract private-key classes, so that any library
that accepts a cryptography private key (jwcrypto through :class:`hsmkey.HSMJWK`, PyJWT,
joserfc, your own code) signs with a key that never leaves the token:

>>> key = private_key_for(session.find_key(key_label="ec-key"))   # doctest: +SKIP
>>> der = key.sign(b"data", ec.ECDSA(hashes.SHA256()))              # doctest: +SKIP
>>> key.public_key().verify(der, b"data", ec.ECDSA(hashes.SHA256()))  # doctest: +SKIP

``public_key()`` is an ordinary software public key (verification and encryption never need
the token). ``sign()``, RSA ``decrypt()`` and EC ``exchange()`` (ECDH) run in the token. The
private key cannot be exported: ``private_bytes()``,
``private_bytes_raw()`` and ``private_numbers()`` raise
:class:`~hsmkey.exceptions.HSMMechanismError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union, cast

# One module per key family (as src/core/mechanism/ is on the Rust side); importing them
# registers each family with _base. hsmkey.jwk and hsmkey.adapters import the private
# names below from here.
from ._base import NOT_EXTRACTABLE as NOT_EXTRACTABLE
from ._base import _describe as _describe
from ._base import _describe as _describe_key
from ._base import _key_info as _key_info
from ._base import _KeyInfo as _KeyInfo
from .ec import HSMEllipticCurvePrivateKey
from .edwards import HSMEd448PrivateKey, HSMEd25519PrivateKey
from .mldsa import HSMMLDSA44PrivateKey, HSMMLDSA65PrivateKey, HSMMLDSA87PrivateKey
from .rsa import HSMRSAPrivateKey

if TYPE_CHECKING:
    from .._hsmkey import Key

__all__ = [
    "HSMEd448PrivateKey",
    "HSMEd25519PrivateKey",
    "HSMEllipticCurvePrivateKey",
    "HSMMLDSA44PrivateKey",
    "HSMMLDSA65PrivateKey",
    "HSMMLDSA87PrivateKey",
    "HSMMLDSAPrivateKey",
    "HSMPrivateKey",
    "HSMRSAPrivateKey",
    "mldsa_private_key_for",
    "private_key_for",
]

HSMPrivateKey = Union[
    HSMRSAPrivateKey, HSMEllipticCurvePrivateKey, HSMEd25519PrivateKey, HSMEd448PrivateKey
]
"""Any of the HSM-backed classical private-key classes (what PyJWT, joserfc and the other
JOSE libraries take). ML-DSA keys are :data:`HSMMLDSAPrivateKey`."""

HSMMLDSAPrivateKey = Union[HSMMLDSA44PrivateKey, HSMMLDSA65PrivateKey, HSMMLDSA87PrivateKey]
"""Any of the HSM-backed ML-DSA private-key classes."""


def private_key_for(key: Key) -> HSMPrivateKey:
    """The cryptography private-key object for a token key: RSA, EC, Ed25519 or Ed448; for
    an ML-DSA key its :data:`HSMMLDSAPrivateKey` object (typed code uses
    :func:`mldsa_private_key_for` for those: the static type stays the classical union,
    which the JOSE libraries' signatures accept)."""
    info = _key_info(key)
    obj: HSMPrivateKey = info.cls._new(key, info)
    return obj


def mldsa_private_key_for(key: Key) -> HSMMLDSAPrivateKey:
    """:func:`private_key_for` for an ML-DSA key, typed as one (``sign(data, context)``);
    :class:`~hsmkey.exceptions.HSMMechanismError` for other keys."""
    from ..exceptions import HSMMechanismError

    if key.key_type != "ML_DSA":
        raise HSMMechanismError(f"HSM key {_describe_key(key)} is not an ML-DSA key")
    info = _key_info(key)
    return cast("HSMMLDSAPrivateKey", info.cls._new(key, info))
