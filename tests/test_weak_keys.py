"""Weak RSA keys are not imported silently: below 2048 bits or with a public exponent below
65537, ``import_private_key`` raises ``ValueError`` and ``hsmkey import`` fails, unless the
caller opts in (``allow_weak=True`` / ``--allow-weak``) for a legacy key. Generation refuses
them with no opt-in."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from helpers import SoftHSM
from hsmkey import SessionPool


@pytest.fixture
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def label() -> str:
    return f"weak-{uuid.uuid4().hex[:8]}"


@cache
def small_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@cache
def exponent_3_key() -> rsa.RSAPrivateKey:
    try:
        return rsa.generate_private_key(3, 2048)
    except ValueError:
        pass
    # A cryptography that no longer makes e=3 keys: build one from primes p, q = 2 mod 3.
    from cryptography.hazmat.primitives.asymmetric.rsa import (
        RSAPrivateNumbers,
        RSAPublicNumbers,
        rsa_crt_dmp1,
        rsa_crt_dmq1,
        rsa_crt_iqmp,
    )

    def prime() -> int:
        while True:
            q = rsa.generate_private_key(65537, 1024).private_numbers().p
            if q % 3 == 2:
                return q

    p, q = prime(), prime()
    d = pow(3, -1, (p - 1) * (q - 1))
    numbers = RSAPrivateNumbers(
        p,
        q,
        d,
        rsa_crt_dmp1(d, p),
        rsa_crt_dmq1(d, q),
        rsa_crt_iqmp(p, q),
        RSAPublicNumbers(3, p * q),
    )
    return numbers.private_key()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [(small_key, "1024-bit modulus"), (exponent_3_key, "public exponent 3")],
)
def test_weak_rsa_keys_are_refused_unless_allowed(
    pool: SessionPool, make: object, fragment: str
) -> None:
    key = make()  # type: ignore[operator]
    name = label()
    with pool.session(rw=True) as s:
        with pytest.raises(ValueError, match="weak RSA key") as info:
            s.import_private_key(key, label=name)
        assert fragment in str(info.value) and "allow_weak=True" in str(info.value)
        assert [k for k in s.list_keys() if k.label == name] == []  # nothing reached the token
        try:
            hk = s.import_private_key(key, label=name, allow_weak=True)
            ct = key.public_key().encrypt(b"legacy", padding.PKCS1v15())
            assert hk.decrypt("RSA_PKCS", ct) == b"legacy"
        finally:
            s.delete_key(key_label=name)


def test_strong_keys_need_no_opt_in(pool: SessionPool) -> None:
    name = label()
    with pool.session(rw=True) as s:
        try:
            s.import_private_key(rsa.generate_private_key(65537, 2048), label=name)
        finally:
            s.delete_key(key_label=name)


def test_generation_refuses_small_rsa(pool: SessionPool) -> None:
    with pool.session(rw=True) as s, pytest.raises(ValueError, match="2048"):
        s.generate_key_pair("RSA", label=label(), bits=1024)


def test_the_cli_refuses_weak_keys_before_asking_for_the_pin(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    path = tmp_path / "weak.pem"
    path.write_bytes(
        small_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    name = label()
    env = {**os.environ, **softhsm.env}
    argv = [sys.executable, "-m", "hsmkey", "import", str(path), "--label", name]
    # No HSM_PIN: the refusal comes before the PIN is needed.
    no_pin = {k: v for k, v in env.items() if k != "HSM_PIN"}
    proc = subprocess.run(argv, env=no_pin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert "weak RSA key" in proc.stderr and "--allow-weak" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [*argv, "--allow-weak"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc
    with (
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as p,
        p.session(rw=True) as s,
    ):
        assert s.delete_key(key_label=name) >= 1
