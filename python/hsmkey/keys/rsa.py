"""RSA private keys in the token, as cryptography ``RSAPrivateKey`` objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import (
    MGF1,
    OAEP,
    PSS,
    AsymmetricPadding,
    PKCS1v15,
)

from ..exceptions import HSMKeyNotFoundError, HSMMechanismError
from ._base import (
    _PSS_AUTO,
    _PSS_DIGEST,
    _PSS_MAX,
    NOT_EXTRACTABLE,
    _bytes,
    _CacheKey,
    _describe,
    _hash_of,
    _HashName,
    _HSMKeyMixin,
    _KeyInfo,
    _prehashed_length_error,
    _register_family,
)

if TYPE_CHECKING:
    from .._hsmkey import Key
    from ._base import Buffer, _HashArg

__all__ = ["HSMRSAPrivateKey"]


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


def _read_rsa(key: Key, key_type: str) -> _CacheKey:
    n = key.modulus
    e = key.public_exponent
    if not n or not e:
        raise HSMKeyNotFoundError(
            f"HSM key {_describe(key)} has no readable modulus/public exponent"
        )
    return (key_type, None, n, e)


def _build_rsa(key: Key, cache_key: _CacheKey) -> _KeyInfo:
    pub = rsa.RSAPublicNumbers(
        int.from_bytes(cache_key[3], "big"), int.from_bytes(cache_key[2], "big")
    ).public_key()
    return _KeyInfo(HSMRSAPrivateKey, pub, pub.key_size)


_register_family("RSA", _read_rsa, _build_rsa)
