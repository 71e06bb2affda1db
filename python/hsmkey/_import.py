"""Turns a pyca/cryptography private key into the PKCS#11 attributes of a key-object import
(called by ``Session.import_private_key`` in the Rust core)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

_CURVES = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
    "secp256k1": "secp256k1",
}


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")


# The weakest RSA key imported without ``allow_weak=True``: NIST SP 800-131A disallows
# smaller moduli, and a public exponent below 65537 (3, 17) is what the broadcast and
# low-exponent attacks on badly padded RSA need.
MIN_RSA_BITS = 2048
MIN_RSA_EXPONENT = 65537


def check_rsa_strength(bits: int, e: int, opt_in: str = "allow_weak=True") -> None:
    """Raise ``ValueError`` for an RSA key hsmkey does not import without ``allow_weak``
    (``opt_in`` names the way to ask for it in the message)."""
    problems = []
    if bits < MIN_RSA_BITS:
        problems.append(f"a {bits}-bit modulus (at least {MIN_RSA_BITS} bits are required)")
    if e % 2 == 0:
        problems.append(f"an even public exponent ({e}): not an RSA key")
    elif e < MIN_RSA_EXPONENT:
        problems.append(f"public exponent {e} (at least {MIN_RSA_EXPONENT} is required)")
    if problems:
        raise ValueError(
            "refusing to import a weak RSA key: it has "
            + " and ".join(problems)
            + f". Pass {opt_in} to import a legacy key anyway"
        )


def key_components(key: Any, allow_weak: bool = False) -> tuple[str, str | None, dict[str, bytes]]:
    """``(key_type, curve, components)`` for a private key: RSA numbers, or the EC private
    value and public point, or the raw Edwards keys. Weak RSA keys raise ``ValueError``
    unless ``allow_weak``."""
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        pub = n.public_numbers
        if not allow_weak:
            check_rsa_strength(key.key_size, pub.e)
        return (
            "RSA",
            None,
            {
                "modulus": _int_bytes(pub.n),
                "public_exponent": _int_bytes(pub.e),
                "private_exponent": _int_bytes(n.d),
                "prime1": _int_bytes(n.p),
                "prime2": _int_bytes(n.q),
                "exponent1": _int_bytes(n.dmp1),
                "exponent2": _int_bytes(n.dmq1),
                "coefficient": _int_bytes(n.iqmp),
            },
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = _CURVES.get(key.curve.name)
        if curve is None:
            raise ValueError(f"hsmkey does not import keys on curve {key.curve.name}")
        size = (key.curve.key_size + 7) // 8
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return (
            "EC",
            curve,
            {"value": _int_bytes(key.private_numbers().private_value, size), "ec_point": point},
        )
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raw = serialization.Encoding.Raw
        return (
            "EC_EDWARDS",
            "Ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "Ed448",
            {
                "value": key.private_bytes(
                    raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                ),
                "ec_point": key.public_key().public_bytes(raw, serialization.PublicFormat.Raw),
            },
        )
    mldsa = _mldsa_components(key)
    if mldsa is not None:
        return mldsa
    raise TypeError(
        "import_private_key takes a cryptography RSA, EC, Ed25519, Ed448 or ML-DSA private key, "
        f"not {type(key).__name__}"
    )


def _mldsa_components(key: Any) -> tuple[str, str | None, dict[str, bytes]] | None:
    """ML-DSA (cryptography >= 50.0.2): the 32-byte seed (CKA_SEED) and the raw public key."""
    try:
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError:  # cryptography < 50.0.2
        return None
    for name, cls in (
        ("ML-DSA-44", mldsa.MLDSA44PrivateKey),
        ("ML-DSA-65", mldsa.MLDSA65PrivateKey),
        ("ML-DSA-87", mldsa.MLDSA87PrivateKey),
    ):
        if isinstance(key, cls):
            raw = serialization.Encoding.Raw
            return (
                name,
                None,
                {
                    "seed": key.private_bytes_raw(),
                    "public": key.public_key().public_bytes(raw, serialization.PublicFormat.Raw),
                },
            )
    return None
