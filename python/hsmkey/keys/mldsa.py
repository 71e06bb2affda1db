"""ML-DSA (FIPS 204) private keys in the token, as cryptography ``MLDSA44PrivateKey``,
``MLDSA65PrivateKey`` and ``MLDSA87PrivateKey`` objects (cryptography >= 50.0.2).

``sign(data, context=None)`` makes a pure ML-DSA signature in the token (``CKM_ML_DSA``),
hedged by default, with the context string given (at most 255 bytes). Set
``deterministic = True`` on an object for the deterministic variant of FIPS 204 (the token
must support ``CKH_DETERMINISTIC_REQUIRED``). ``public_key()`` is cryptography's own public
key, read only from sources proven to belong to the private key (the private object's own
CKA_PUBLIC_KEY_INFO, or a public-key object whose key verifies a probe signature made in the
token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from ..exceptions import HSMKeyNotFoundError, HSMMechanismError
from ._base import (
    NOT_EXTRACTABLE,
    _bytes,
    _CacheKey,
    _describe,
    _HSMKeyMixin,
    _KeyInfo,
    _register_family,
)

if TYPE_CHECKING:
    from .._hsmkey import Key
    from ._base import Buffer

try:  # cryptography >= 50.0.2
    from cryptography.hazmat.primitives.asymmetric import mldsa as _mldsa
except ImportError:  # pragma: no cover - older cryptography: ML-DSA keys cannot be used
    _mldsa = None  # type: ignore[assignment]

HAS_MLDSA = _mldsa is not None
"""Whether the installed cryptography has ML-DSA (its ``mldsa`` module; 50.0.2 has it)."""

__all__ = [
    "HAS_MLDSA",
    "HSMMLDSA44PrivateKey",
    "HSMMLDSA65PrivateKey",
    "HSMMLDSA87PrivateKey",
]


class _HSMMLDSAMixin(_HSMKeyMixin):
    """What the three ML-DSA classes share."""

    deterministic: bool = False
    """Sign with the deterministic variant of FIPS 204 (``CKH_DETERMINISTIC_REQUIRED``)
    instead of the hedged one. Set it on an object: ``key.deterministic = True``."""

    def _what(self) -> str:
        return f"{self._key.parameter_set} key {_describe(self._key)}"

    def sign(self, data: Buffer, context: Buffer | None = None) -> bytes:
        """A pure ML-DSA signature of ``data`` made in the token, with ``context`` (bytes,
        at most 255; None or empty: no context, as JOSE and X.509 use)."""
        if type(data) is not bytes:
            data = _bytes(data)
        if context is None or context == b"":
            if not self.deterministic:
                return self._key.sign_raw("ML_DSA", data)
            return self._key.sign_raw("ML_DSA", data, deterministic=True)
        ctx = _bytes(context)
        if len(ctx) > 255:
            raise ValueError("ML-DSA context must be at most 255 bytes")
        return self._key.sign_raw("ML_DSA", data, context=ctx, deterministic=self.deterministic)

    def sign_mu(self, mu: Buffer) -> NoReturn:
        """Raises :class:`~hsmkey.exceptions.HSMMechanismError`: signing an external mu
        (FIPS 204's ExternalMu) needs a mechanism PKCS#11 3.2 does not define; sign the
        message with :meth:`sign`."""
        raise HSMMechanismError(
            f"sign_mu() is not available for the HSM {self._what()}: PKCS#11 3.2 has no "
            "external-mu ML-DSA mechanism; sign the message with sign(data, context)"
        )

    def private_bytes_raw(self) -> bytes:
        """Always raises: the private key (and its seed) cannot leave the token."""
        raise HSMMechanismError(NOT_EXTRACTABLE)

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Any:
        return self


if _mldsa is not None:

    class HSMMLDSA44PrivateKey(_HSMMLDSAMixin, _mldsa.MLDSA44PrivateKey):
        """An ML-DSA-44 private key in the token, as a cryptography ``MLDSA44PrivateKey``."""

        def __init__(self, key: Key) -> None:
            self._init(key, HSMMLDSA44PrivateKey)

        def public_key(self) -> _mldsa.MLDSA44PublicKey:
            return self._info.public_key  # type: ignore[return-value]

    class HSMMLDSA65PrivateKey(_HSMMLDSAMixin, _mldsa.MLDSA65PrivateKey):
        """An ML-DSA-65 private key in the token, as a cryptography ``MLDSA65PrivateKey``."""

        def __init__(self, key: Key) -> None:
            self._init(key, HSMMLDSA65PrivateKey)

        def public_key(self) -> _mldsa.MLDSA65PublicKey:
            return self._info.public_key  # type: ignore[return-value]

    class HSMMLDSA87PrivateKey(_HSMMLDSAMixin, _mldsa.MLDSA87PrivateKey):
        """An ML-DSA-87 private key in the token, as a cryptography ``MLDSA87PrivateKey``."""

        def __init__(self, key: Key) -> None:
            self._init(key, HSMMLDSA87PrivateKey)

        def public_key(self) -> _mldsa.MLDSA87PublicKey:
            return self._info.public_key  # type: ignore[return-value]

    _CLASSES: dict[str, tuple[type[_HSMMLDSAMixin], Any]] = {
        "ML-DSA-44": (HSMMLDSA44PrivateKey, _mldsa.MLDSA44PublicKey),
        "ML-DSA-65": (HSMMLDSA65PrivateKey, _mldsa.MLDSA65PublicKey),
        "ML-DSA-87": (HSMMLDSA87PrivateKey, _mldsa.MLDSA87PublicKey),
    }
else:  # pragma: no cover - older cryptography: the names exist, no token key maps to them

    class HSMMLDSA44PrivateKey(_HSMMLDSAMixin):  # type: ignore[no-redef]
        pass

    class HSMMLDSA65PrivateKey(_HSMMLDSAMixin):  # type: ignore[no-redef]
        pass

    class HSMMLDSA87PrivateKey(_HSMMLDSAMixin):  # type: ignore[no-redef]
        pass

    _CLASSES = {}


def _read_mldsa(key: Key, key_type: str) -> _CacheKey:
    """The parameter set and raw public key of an ML-DSA token key (proven to belong to it
    by the core: the private object's own CKA_PUBLIC_KEY_INFO, or a public-key object whose
    key verifies a probe signature made in the token)."""
    value = key.public_value
    if not value:
        raise HSMKeyNotFoundError(
            f"HSM key {_describe(key)} has no readable ML-DSA public key: store its "
            "public-key object (CKA_VALUE) in the token beside it"
        )
    return (key_type, key.parameter_set, value, b"")


def _public_class(key: Key, set_name: str | None) -> Any:
    entry = _CLASSES.get(set_name or "")
    if entry is None:
        if _mldsa is None:
            raise HSMMechanismError(
                f"HSM key {_describe(key)} is {set_name}: ML-DSA keys need cryptography >= 50.0.2 "
                "(pip install 'hsmkey[pqc]')"
            )
        raise HSMMechanismError(f"HSM key {_describe(key)}: {set_name} is not supported")
    return entry


def _build_mldsa(key: Key, cache_key: _CacheKey) -> _KeyInfo:
    _, set_name, value, _ = cache_key
    cls, pub_cls = _public_class(key, set_name)
    public = pub_cls.from_public_bytes(value)
    return _KeyInfo(cls, public, 0, set_name)


_register_family("ML_DSA", _read_mldsa, _build_mldsa)


def _read_slhdsa(key: Key, key_type: str) -> _CacheKey:
    raise HSMMechanismError(
        f"HSM key {_describe(key)} is {key.parameter_set}: SLH-DSA keys sign through "
        "Key.sign_raw('SLH_DSA', data, context=...) only; neither JOSE nor pyca/cryptography "
        "has SLH-DSA keys yet"
    )


def _no_slhdsa_info(key: Key, cache_key: _CacheKey) -> _KeyInfo:  # pragma: no cover
    raise AssertionError("unreachable: _read_slhdsa raises")


# SLH-DSA (FIPS 205): the low-level signer only (see docs/pqc.rst).
_register_family("SLH_DSA", _read_slhdsa, _no_slhdsa_info)
