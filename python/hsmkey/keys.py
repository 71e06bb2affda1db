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

from typing import TYPE_CHECKING, Any, Literal, NoReturn, Union

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.padding import (
    MGF1,
    OAEP,
    PSS,
    AsymmetricPadding,
    PKCS1v15,
)
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .exceptions import HSMKeyNotFoundError, HSMMechanismError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
    from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

    from ._hsmkey import Key

    Buffer = Union[bytes, bytearray, memoryview]
    _HashArg = Union[Prehashed, hashes.HashAlgorithm, NoDigestInfo]

__all__ = [
    "HSMEd448PrivateKey",
    "HSMEd25519PrivateKey",
    "HSMEllipticCurvePrivateKey",
    "HSMPrivateKey",
    "HSMRSAPrivateKey",
    "private_key_for",
]

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
_CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_RSA_ALGS = {
    ("RSA_PKCS", "sha256"): "RS256",
    ("RSA_PKCS", "sha384"): "RS384",
    ("RSA_PKCS", "sha512"): "RS512",
    ("RSA_PSS", "sha256"): "PS256",
    ("RSA_PSS", "sha384"): "PS384",
    ("RSA_PSS", "sha512"): "PS512",
}

_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "secp256k1": ec.SECP256K1,
}

_PSS_MAX = PSS.MAX_LENGTH
_PSS_DIGEST = PSS.DIGEST_LENGTH
_PSS_AUTO = PSS.AUTO
_ECDSA = ec.ECDSA
# cryptography >= 44 has ECDSA(deterministic_signing=...): RFC 6979 nonces, which a token
# cannot promise.
_HAS_DETERMINISTIC = hasattr(ec.ECDSA, "deterministic_signing")


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
        cls: type[HSMPrivateKey],
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


_INFO_CACHE: dict[tuple[str, str | None, bytes, bytes], _KeyInfo] = {}
_INFO_CACHE_MAX = 1024


def _describe(key: Key) -> str:
    label = key.label
    ident = key.id.hex()
    if label is not None:
        return f"{label!r} (id {ident})" if ident else repr(label)
    return f"with id {ident}"


def _key_info(key: Key) -> _KeyInfo:
    """The cached public-key information of ``key`` (built on first sight)."""
    key_type = key.key_type
    if key_type == "RSA":
        n = key.modulus
        e = key.public_exponent
        if not n or not e:
            raise HSMKeyNotFoundError(
                f"HSM key {_describe(key)} has no readable modulus/public exponent"
            )
        cache_key: tuple[str, str | None, bytes, bytes] = (key_type, None, n, e)
    else:
        curve_name = key.curve
        point = key.ec_point
        if not point:
            raise HSMKeyNotFoundError(
                f"HSM key {_describe(key)} has no readable public point (CKA_EC_POINT): "
                "store its public-key object in the token beside it"
            )
        cache_key = (key_type, curve_name, point, b"")
    info = _INFO_CACHE.get(cache_key)
    if info is not None:
        return info
    if key_type == "RSA":
        pub = rsa.RSAPublicNumbers(
            int.from_bytes(cache_key[3], "big"), int.from_bytes(cache_key[2], "big")
        ).public_key()
        info = _KeyInfo(HSMRSAPrivateKey, pub, pub.key_size)
    else:
        info = _new_ec_info(key, key_type, cache_key[1], cache_key[2])
    if len(_INFO_CACHE) >= _INFO_CACHE_MAX:
        _INFO_CACHE.clear()
    _INFO_CACHE[cache_key] = info
    return info


def _new_ec_info(key: Key, key_type: str, curve_name: str | None, point: bytes) -> _KeyInfo:
    if key_type == "EC_EDWARDS" or curve_name in ("Ed25519", "Ed448"):
        if curve_name == "Ed25519":
            return _KeyInfo(
                HSMEd25519PrivateKey,
                ed25519.Ed25519PublicKey.from_public_bytes(point),
                256,
                curve_name,
            )
        if curve_name == "Ed448":
            return _KeyInfo(
                HSMEd448PrivateKey,
                ed448.Ed448PublicKey.from_public_bytes(point),
                456,
                curve_name,
            )
    elif curve_name is not None:
        curve_cls = _EC_CURVES.get(curve_name)
        if curve_cls is not None:
            curve = curve_cls()
            pub = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            return _KeyInfo(HSMEllipticCurvePrivateKey, pub, curve.key_size, curve_name, curve)
    raise HSMMechanismError(
        f"HSM key {_describe(key)}: key type {key_type} on curve {curve_name} is not supported"
    )


def private_key_for(key: Key) -> HSMPrivateKey:
    """The cryptography private-key object for a token key: RSA, EC, Ed25519 or Ed448."""
    info = _key_info(key)
    obj: HSMPrivateKey = info.cls._new(key, info)
    return obj


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

    def _init(self, key: Key, kind: type[HSMPrivateKey]) -> None:
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


class HSMRSAPrivateKey(_HSMKeyMixin, rsa.RSAPrivateKey):
    """An RSA private key in the token, as a cryptography ``RSAPrivateKey``.

    ``sign()`` supports PKCS#1 v1.5 and PSS (MGF1 with the signature's hash; salt
    ``PSS.DIGEST_LENGTH``, ``PSS.MAX_LENGTH`` or a number of bytes) over SHA-1, SHA-224,
    SHA-256, SHA-384 and SHA-512, or over a digest you computed (``Prehashed``).
    ``decrypt()`` supports PKCS#1 v1.5 and OAEP (JWE RSA1_5, RSA-OAEP, RSA-OAEP-256).
    """

    def __init__(self, key: Key) -> None:
        self._init(key, HSMRSAPrivateKey)

    def sign(
        self,
        data: Buffer,
        padding: AsymmetricPadding,
        algorithm: _HashArg,
    ) -> bytes:
        name, size, prehashed = _hash_of(algorithm)
        if type(data) is not bytes:
            data = _bytes(data)
        if prehashed and len(data) != size:
            raise _prehashed_length_error()
        pcls = type(padding)
        if pcls is PKCS1v15 or isinstance(padding, PKCS1v15):
            return self._key.sign_raw("RSA_PKCS", data, hash=name, prehashed=prehashed)
        if pcls is PSS or isinstance(padding, PSS):
            return self._key.sign_raw(
                "RSA_PSS",
                data,
                hash=name,
                prehashed=prehashed,
                salt_length=self._pss_salt(padding, name, size),  # type: ignore[arg-type]
            )
        raise HSMMechanismError(
            f"{getattr(padding, 'name', type(padding).__name__)} is not a signature padding: "
            "use PKCS1v15() or PSS(...)"
        )

    def _pss_salt(self, pss: PSS, name: _HashName, size: int) -> int:
        mgf = pss.mgf
        if not isinstance(mgf, MGF1):
            raise HSMMechanismError(f"PSS mask generation {type(mgf).__name__} is not supported")
        if _hash_of(mgf._algorithm)[0] != name:
            raise HSMMechanismError(
                f"PSS with MGF1({mgf._algorithm.name}) and hash {name} is not supported: "
                "the HSM key signs PSS with MGF1 over the signature's own hash"
            )
        salt = pss._salt_length
        max_salt = self._info.emlen - size - 2
        if salt is _PSS_DIGEST or type(salt) is type(_PSS_DIGEST):
            salt = size
        elif salt is _PSS_MAX or type(salt) is type(_PSS_MAX):
            salt = max_salt
        elif salt is _PSS_AUTO or type(salt) is type(_PSS_AUTO):
            raise ValueError("PSS salt length can only be set to Auto when verifying")
        if not isinstance(salt, int) or salt < 0:
            raise TypeError(f"invalid PSS salt length {salt!r}")
        if salt > max_salt:
            raise ValueError(
                "Digest or salt length too long for key size. Use a larger key or shorter "
                "salt length if you are specifying a PSS salt"
            )
        return salt

    def decrypt(
        self, ciphertext: bytes, padding: AsymmetricPadding, *, allow_process_secret: bool = False
    ) -> bytes:
        """Decrypt in the token: ``PKCS1v15()`` or ``OAEP(MGF1(hash), hash, label)`` with
        SHA-1, SHA-224, SHA-256, SHA-384 or SHA-512.

        ``PKCS1v15()`` does implicit rejection, as cryptography's own keys do (OpenSSL >=
        3.2): a ciphertext with bad padding returns a synthetic message, the same bytes for
        the same ciphertext and key in every process, and never raises; good and bad
        ciphertexts make the same PKCS#11 calls. ``OAEP`` raises one ``HSMError`` for every
        failure (where the token's OAEP lacks the hash, or a label is given, the token
        decrypts raw and hsmkey removes the padding in constant time; on a key that refuses raw
        RSA, a label is used only where the token is known to honour it). A ciphertext that is
        not below the modulus raises ``ValueError`` before the token is asked.

        A key that allows neither raw RSA nor signing gives ``PKCS1v15()`` no secret that is
        the same in every process: decryption raises ``HSMMechanismError`` unless
        ``allow_process_secret=True`` (see the security page)."""
        if type(ciphertext) is not bytes:
            ciphertext = _bytes(ciphertext)
        if isinstance(padding, PKCS1v15):
            return self._key.decrypt(
                "RSA_PKCS", ciphertext, allow_process_secret=allow_process_secret
            )
        if isinstance(padding, OAEP):
            name, _, prehashed = _hash_of(padding.algorithm)
            mgf = padding.mgf
            if prehashed or not isinstance(mgf, MGF1):
                raise HSMMechanismError("OAEP needs MGF1(hash) and a hash algorithm")
            return self._key.decrypt(
                "RSA_OAEP",
                ciphertext,
                hash=name,
                mgf_hash=_hash_of(mgf._algorithm)[0],
                label=padding._label or None,
            )
        raise HSMMechanismError(
            f"{getattr(padding, 'name', type(padding).__name__)} is not an encryption padding "
            f"for the HSM {self._what()}: use PKCS1v15() or OAEP(...)"
        )

    @property
    def key_size(self) -> int:
        return self._info.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._info.public_key  # type: ignore[return-value]

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        """Always raises: the private key cannot leave the token."""
        raise HSMMechanismError(NOT_EXTRACTABLE)

    def __copy__(self) -> HSMRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMRSAPrivateKey:
        return self


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


HSMPrivateKey = Union[
    HSMRSAPrivateKey, HSMEllipticCurvePrivateKey, HSMEd25519PrivateKey, HSMEd448PrivateKey
]
"""Any of the HSM-backed private-key classes."""
