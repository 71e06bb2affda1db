"""Generating and deleting keys on read-write sessions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import SoftHSM
from hsmkey import SessionPool
from hsmkey.exceptions import HSMKeyNotFoundError, HSMSessionError

CASES = [
    ("RSA", {"bits": 2048}, "PS256", "RSA", None, 2048),
    ("EC", {"curve": "P-256"}, "ES256", "EC", "P-256", 256),
    ("EC", {"curve": "P-384"}, "ES384", "EC", "P-384", 384),
    ("EC", {"curve": "P-521"}, "ES512", "EC", "P-521", 521),
    ("EC", {"curve": "secp256k1"}, "ES256K", "EC", "secp256k1", 256),
    ("Ed25519", {}, "EdDSA", "EC_EDWARDS", "Ed25519", 255),
    ("Ed448", {}, "EdDSA", "EC_EDWARDS", "Ed448", 448),
]


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


@pytest.mark.parametrize(("key_type", "kwargs", "alg", "kind", "curve", "size"), CASES)
def test_generate_sign_find_delete(
    pool: SessionPool,
    key_type: str,
    kwargs: dict[str, object],
    alg: str,
    kind: str,
    curve: str | None,
    size: int,
) -> None:
    label = f"gen-{key_type}-{curve}"
    with pool.session(rw=True) as s:
        key = s.generate_key_pair(key_type, label=label, key_id=b"\xee\x01", **kwargs)  # type: ignore[arg-type]
        assert (key.key_type, key.curve, key.key_size) == (kind, curve, size)
        assert key.label == label and key.id == b"\xee\x01"
        assert key.sign(alg, b"data")
    try:
        with pool.session() as s:
            again = s.find_key(key_label=label)
            assert again.ec_point == key.ec_point and again.modulus == key.modulus
    finally:
        with pool.session(rw=True) as s:
            assert s.delete_key(key_label=label) == 2
    with pool.session() as s, pytest.raises(HSMKeyNotFoundError):
        s.find_key(key_label=label)


def test_generated_private_key_is_sensitive_and_not_extractable(
    pool: SessionPool, softhsm: SoftHSM
) -> None:
    with pool.session(rw=True) as s:
        s.generate_key_pair("EC", label="gen-attrs", key_id=b"\xee\x02")
    try:
        listing = softhsm.pkcs11_tool("--list-objects", "--type", "privkey", "--label", "gen-attrs")
        block = listing.split("Private Key Object")[1]
        assert "sensitive" in block
        assert "never extractable" in block or "extractable" not in block.replace("never", "")
    finally:
        with pool.session(rw=True) as s:
            s.delete_key(key_label="gen-attrs")


def test_generation_needs_a_read_write_session(pool: SessionPool) -> None:
    with pool.session() as s, pytest.raises(HSMSessionError, match="read-write"):
        s.generate_key_pair("EC", label="nope")
    with pool.session() as s, pytest.raises(HSMSessionError, match="read-write"):
        s.delete_key(key_label="ec-key")


@pytest.mark.parametrize(
    ("key_type", "kwargs", "match"),
    [
        ("DSA", {}, "key type"),
        ("RSA", {"bits": 1024}, "2048"),
        ("RSA", {"bits": 2049}, "multiple of 8"),
        ("EC", {"curve": "P-192"}, "curve"),
        ("EC", {"bits": 256}, "bits="),
    ],
)
def test_bad_generation_arguments(
    pool: SessionPool, key_type: str, kwargs: dict[str, object], match: str
) -> None:
    with pool.session(rw=True) as s, pytest.raises(ValueError, match=match):
        s.generate_key_pair(key_type, label="bad", **kwargs)  # type: ignore[arg-type]


def test_fully_specified_eddsa_names_check_the_curve(pool: SessionPool) -> None:
    from hsmkey.exceptions import HSMMechanismError

    with pool.session(rw=True) as s:
        key = s.generate_key_pair("Ed448", label="gen-ed448-names")
        try:
            assert len(key.sign("Ed448", b"x")) == 114
            assert len(key.sign("EdDSA", b"x")) == 114
            with pytest.raises(HSMMechanismError, match="Ed25519"):
                key.sign("Ed25519", b"x")
        finally:
            s.delete_key(key_label="gen-ed448-names")
