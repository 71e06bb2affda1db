"""What every HSM-backed key family shares: the cached public-key information of a token
key, the mixin of the key classes, hash and bytes helpers, and the registry through which
each family module (``rsa``, ``ec``, ``edwards``, ...) says which token keys it handles.

A new key family is one new module beside this one: it defines its key class and registers
a reader (the public material of a token key, as a cache key) and a builder (the
:class:`_KeyInfo` of that material) with :func:`_register_family`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal, NoReturn, Union

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.padding import PSS, PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ..exceptions import HSMKeyNotFoundError, HSMMechanismError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
    from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

    from .._hsmkey import Key

    Buffer = Union[bytes, bytearray, memoryview]
    _HashArg = Union[Prehashed, hashes.HashAlgorithm, NoDigestInfo]

NOT_EXTRACTABLE = "the private key stays in the HSM: it cannot be exported"

# (hash class, name for the Rust core, digest size), most used first: sign() scans this
# with `is`, which is cheaper than hashing the class for a dict lookup.
_HashName = Literal["sha1", "sha224", "sha256", "sha384", "sha512"]
_HASHES: tuple[tuple[type[hashes.HashAlgorithm], _HashName, int], ...] = (
    (hashes.SHA256, "sha256", 32),
    (hashes.SHA384, "sha384", 48),
    (hashes.SHA512, "sha512", 64),
    (hashes.SHA1, "sha1", 20),
    (hashes.SHA224, "sha224", 28),
)

# JOSE names, for error messages that say which algorithm a caller asked for.
_RSA_ALGS = {
    ("RSA_PKCS", "sha256"): "RS256",
    ("RSA_PKCS", "sha384"): "RS384",
    ("RSA_PKCS", "sha512"): "RS512",
    ("RSA_PSS", "sha256"): "PS256",
    ("RSA_PSS", "sha384"): "PS384",
    ("RSA_PSS", "sha512"): "PS512",
}

_PSS_MAX = PSS.MAX_LENGTH
_PSS_DIGEST = PSS.DIGEST_LENGTH
_PSS_AUTO = PSS.AUTO
_ECDSA = ec.ECDSA


def _hash_of(algorithm: object) -> tuple[_HashName, int, bool]:
    """``(name, digest size, prehashed)`` for a hash algorithm or a ``Prehashed``."""
    cls = type(algorithm)
    for hcls, name, size in _HASHES:
        if hcls is cls:
            return name, size, False
    if cls is Prehashed or isinstance(algorithm, Prehashed):
        name, size, _ = _hash_of(algorithm._algorithm)  # type: ignore[attr-defined]
        return name, size, True
    for hcls, name, size in _HASHES:  # subclasses of the hash classes
        if isinstance(algorithm, hcls):
            return name, size, False
    if type(algorithm).__name__ == "NoDigestInfo":
        raise HSMMechanismError(
            "PKCS#1 v1.5 signatures without a DigestInfo (NoDigestInfo) are not supported "
            "for HSM keys"
        )
    if isinstance(algorithm, hashes.HashAlgorithm):
        raise HSMMechanismError(
            f"hash {algorithm.name} is not supported for HSM signatures; "
            "use SHA-1, SHA-224, SHA-256, SHA-384 or SHA-512"
        )
    raise TypeError(f"expected a cryptography HashAlgorithm or Prehashed, got {algorithm!r}")


def _bytes(data: Buffer) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, bytes):
        return bytes(data)
    raise TypeError(f"data must be bytes-like, not {type(data).__name__}")


def _prehashed_length_error() -> ValueError:
    return ValueError(
        "The provided data must be the same length as the hash algorithm's digest size."
    )


class _KeyInfo:
    """What the public half of one token key gives, computed once per key material.

    Shared by every key object (and every :class:`hsmkey.HSMJWK`) over the same key, so
    that finding a key again costs a dictionary lookup instead of parsing its public key.
    ``jwk`` belongs to :mod:`hsmkey.jwk` (its cached public JWK parameters).
    """

    __slots__ = ("cls", "curve", "curve_name", "emlen", "jwk", "key_size", "public_key")

    def __init__(
        self,
        cls: type[_HSMKeyMixin],
        public_key: PublicKeyTypes,
        key_size: int,
        curve_name: str | None = None,
        curve: ec.EllipticCurve | None = None,
    ) -> None:
        self.cls = cls
        self.public_key = public_key
        self.key_size = key_size
        self.curve_name = curve_name
        self.curve = curve
        # RSA: emLen of RFC 8017 9.1.1 (octets of modBits - 1), for the PSS salt bound.
        self.emlen = (key_size + 6) // 8
        self.jwk: Any = None


_CacheKey = tuple[str, Union[str, None], bytes, bytes]
# A family's reader: the public material of a token key, as the cache key of its _KeyInfo
# (key type, curve or parameter set, two byte strings); raises HSMKeyNotFoundError when the
# token does not give it. Its builder: the _KeyInfo of that material.
_Reader = Callable[["Key", str], _CacheKey]
_Builder = Callable[["Key", _CacheKey], _KeyInfo]
_FAMILIES: dict[str, tuple[_Reader, _Builder]] = {}
# Curve name -> (Edwards?, builder of the _KeyInfo from the point): filled by the EC and
# Edwards modules.
_CURVES: dict[str, tuple[bool, Callable[[bytes, str], _KeyInfo]]] = {}

_INFO_CACHE: dict[_CacheKey, _KeyInfo] = {}
_INFO_CACHE_MAX = 1024


def _register_family(key_type: str, reader: _Reader, builder: _Builder) -> None:
    """Make ``reader``/``builder`` handle the token keys whose ``key_type`` is ``key_type``."""
    _FAMILIES[key_type] = (reader, builder)


def _describe(key: Key) -> str:
    label = key.label
    ident = key.id.hex()
    if label is not None:
        return f"{label!r} (id {ident})" if ident else repr(label)
    return f"with id {ident}"


def _key_info(key: Key) -> _KeyInfo:
    """The cached public-key information of ``key`` (built on first sight)."""
    key_type = key.key_type
    # Key types no module registered take the curve-and-point path, which says why not.
    reader, builder = _FAMILIES.get(key_type, _CURVE_FAMILY)
    cache_key = reader(key, key_type)
    info = _INFO_CACHE.get(cache_key)
    if info is not None:
        return info
    info = builder(key, cache_key)
    if len(_INFO_CACHE) >= _INFO_CACHE_MAX:
        _INFO_CACHE.clear()
    _INFO_CACHE[cache_key] = info
    return info


def _read_point(key: Key, key_type: str) -> _CacheKey:
    """The reader of the curve families (EC, Edwards): curve name and public point."""
    point = key.ec_point
    if not point:
        raise HSMKeyNotFoundError(
            f"HSM key {_describe(key)} has no readable public point (CKA_EC_POINT): "
            "store its public-key object in the token beside it"
        )
    return (key_type, key.curve, point, b"")


def _build_curve_info(key: Key, cache_key: _CacheKey) -> _KeyInfo:
    """The builder of the curve families: by curve name (an Edwards curve under any key
    type; a Weierstrass curve unless the key type is EC_EDWARDS)."""
    key_type, curve_name, point, _ = cache_key
    entry = _CURVES.get(curve_name) if curve_name is not None else None
    if entry is not None and (entry[0] or key_type != "EC_EDWARDS"):
        return entry[1](point, curve_name)  # type: ignore[arg-type]
    raise HSMMechanismError(
        f"HSM key {_describe(key)}: key type {key_type} on curve {curve_name} is not supported"
    )


_CURVE_FAMILY: tuple[_Reader, _Builder] = (_read_point, _build_curve_info)


class _HSMKeyMixin:
    """What every HSM-backed key class shares."""

    _key: Key
    _info: _KeyInfo

    @classmethod
    def _new(cls, key: Key, info: _KeyInfo) -> Any:
        obj = cls.__new__(cls)
        obj._key = key
        obj._info = info
        return obj

    def _init(self, key: Key, kind: type[_HSMKeyMixin]) -> None:
        info = _key_info(key)
        if info.cls is not kind:
            raise HSMMechanismError(
                f"HSM key {_describe(key)} is {key.key_type} {key.curve or ''}".rstrip()
                + f", not a key for {kind.__name__}"
            )
        self._key = key
        self._info = info

    @property
    def hsm_key(self) -> Key:
        """The token key (``hsmkey._hsmkey.Key``) this object signs with."""
        return self._key

    def _what(self) -> str:
        info = self._info
        if info.curve_name is not None:
            return f"{info.curve_name} key {_describe(self._key)}"
        return f"RSA {info.key_size} key {_describe(self._key)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._what()}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} cannot be pickled: it refers to a key inside a token; "
            "pickle the public key, and find the key again in the other process"
        )

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        """Always raises: the private key cannot leave the token."""
        raise HSMMechanismError(NOT_EXTRACTABLE)

    def _wrong_algorithm(self, alg: str) -> NoReturn:
        raise HSMMechanismError(f"{alg} cannot be used with the HSM {self._what()}")


def _rsa_alg_name(pad: object, args: tuple[object, ...]) -> str:
    """The JOSE name (or a description) of what an RSA-style ``sign`` call asked for."""
    mech = "RSA_PKCS" if isinstance(pad, PKCS1v15) else "RSA_PSS"
    try:
        name = _hash_of(args[0])[0] if args else ""
    except (HSMMechanismError, TypeError):
        name = ""
    alg = _RSA_ALGS.get((mech, name))
    if alg is not None:
        return alg
    return f"RSA padding {getattr(pad, 'name', type(pad).__name__)}"
