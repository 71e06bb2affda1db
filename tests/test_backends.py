"""The pool, keys, JOSE, decryption and recovery on the other PKCS#11 implementations:
``HSMKEY_TEST_TOKEN=kryoptic|nss|opencryptoki`` (``nox -s backends`` runs the three,
``nox -s kryoptic``, ``nss``, ``opencryptoki`` one; tokens made by
tests/helpers/backends.py). SoftHSM2 runs the whole suite in ``nox -s tests``; without
``HSMKEY_TEST_TOKEN`` this file is skipped.

Each implementation's real gaps are explicit skips with the reason (``Backend.gaps``): a key
family the token cannot generate or sign with. Everything else must work the same way on all
of them: that is the point of running it four times.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from helpers.backends import Backend, BackendUnavailable, make
from hsmkey import HSMJWK, SessionPool, _hsmkey
from hsmkey.exceptions import HSMMechanismError, HSMModuleError

NAME = os.environ.get("HSMKEY_TEST_TOKEN", "")
pytestmark = pytest.mark.skipif(
    not NAME, reason="runs with HSMKEY_TEST_TOKEN=kryoptic|nss|opencryptoki (nox sessions)"
)

# label -> (key type, generation arguments, family for Backend.gaps)
KEYS: dict[str, tuple[str, dict[str, Any], str]] = {
    "rsa": ("RSA", {"bits": 2048}, "RSA"),
    "ec256": ("EC", {"curve": "P-256"}, "EC"),
    "ec384": ("EC", {"curve": "P-384"}, "EC"),
    "ec521": ("EC", {"curve": "P-521"}, "EC"),
    "ed25519": ("EC_EDWARDS", {"curve": "Ed25519"}, "Ed25519"),
}
# JOSE algorithm -> key label
ALGS = {
    "RS256": "rsa",
    "RS384": "rsa",
    "RS512": "rsa",
    "PS256": "rsa",
    "PS384": "rsa",
    "PS512": "rsa",
    "ES256": "ec256",
    "ES384": "ec384",
    "ES512": "ec521",
    "EdDSA": "ed25519",
}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    try:
        made = make(NAME, tmp_path_factory.mktemp(f"token-{NAME}"))
    except BackendUnavailable as exc:
        pytest.skip(f"{NAME}: {exc}")
    old = {k: os.environ.get(k) for k in made.env}
    os.environ.update(made.env)
    try:
        yield made
    finally:
        made.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def pool(backend: Backend) -> Iterator[SessionPool]:
    with SessionPool(
        backend.module, backend.label, backend.pin, init_args=backend.init_args
    ) as made:
        made.check()
        yield made


@pytest.fixture(scope="module")
def made_keys(backend: Backend, pool: SessionPool) -> dict[str, str | None]:
    """Generates every key of KEYS once: label -> None, or why the token cannot."""
    result: dict[str, str | None] = {}
    with pool.session(rw=True) as session:
        for label, (key_type, kwargs, family) in KEYS.items():
            if family in backend.gaps:
                result[label] = backend.gaps[family]
                continue
            session.generate_key_pair(key_type, label=label, **kwargs)
            result[label] = None
    return result


def key_or_skip(made_keys: dict[str, str | None], pool: SessionPool, label: str) -> Any:
    reason = made_keys[label]
    if reason is not None:
        pytest.skip(f"{NAME}: {reason}")
    return HSMJWK.from_hsm(pool, key_label=label)


def sign_verify(jwk: Any, alg: str, data: bytes) -> None:
    key = jwk.get_op_key("sign")
    public = key.public_key()
    if alg.startswith("RS") or alg.startswith("PS"):
        h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        pad: Any = (
            padding.PKCS1v15()
            if alg.startswith("RS")
            else padding.PSS(padding.MGF1(h), h.digest_size)
        )
        public.verify(key.sign(data, pad, h), data, pad, h)
    elif alg.startswith("ES"):
        h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        public.verify(key.sign(data, ec.ECDSA(h)), data, ec.ECDSA(h))
    else:
        public.verify(key.sign(data), data)


# ---- the token ------------------------------------------------------------------------------


def test_token_is_listed_and_found_by_label_and_serial(backend: Backend) -> None:
    tokens = [
        t
        for t in _hsmkey.list_tokens(backend.module, mechanisms=True, init_args=backend.init_args)
        if t["token_present"]
    ]
    mine = [t for t in tokens if t["label"] == backend.label]
    assert len(mine) == 1, tokens
    assert mine[0]["mechanisms"]
    serial = mine[0]["serial"]
    # NSS gives both its slots the serial 0000000000000000: then the label chooses.
    shared = sum(t["serial"] == serial for t in tokens) > 1
    with SessionPool(
        backend.module,
        backend.label if shared else None,
        backend.pin,
        token_serial=serial,
        init_args=backend.init_args,
    ) as by_serial:
        by_serial.check()


def test_init_args_are_one_per_process(backend: Backend, pool: SessionPool) -> None:
    other = "configdir='sql:/elsewhere'" if backend.init_args is None else None
    with pytest.raises(HSMModuleError, match="already initialized in this process"):
        SessionPool(backend.module, backend.label, backend.pin, init_args=other).check()


# ---- pool -----------------------------------------------------------------------------------


def test_pool_threads_and_nested_sessions(
    pool: SessionPool, made_keys: dict[str, str | None]
) -> None:
    label = "ec256" if made_keys["ec256"] is None else "rsa"
    alg = "ES256" if label == "ec256" else "RS256"
    jwk = key_or_skip(made_keys, pool, label)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                sign_verify(jwk, alg, b"threads")
                with pool.session() as outer, pool.session() as inner:
                    assert outer.find_key(key_label=label) is not None
                    assert inner.find_key(key_label=label) is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = pool.stats()
    assert stats["timeouts"] == 0 and stats["in_use"] == 0


# ---- keys and JOSE --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", list(ALGS))
def test_sign_and_verify(
    alg: str, pool: SessionPool, made_keys: dict[str, str | None], backend: Backend
) -> None:
    if alg in backend.gaps:
        pytest.skip(f"{NAME}: {backend.gaps[alg]}")
    sign_verify(key_or_skip(made_keys, pool, ALGS[alg]), alg, b"payload")


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
def test_jws_with_jwcrypto_and_pyjwt(
    alg: str, pool: SessionPool, made_keys: dict[str, str | None]
) -> None:
    import jwt
    from jwcrypto import jws

    key = key_or_skip(made_keys, pool, ALGS[alg])
    token = jws.JWS(b'{"sub":"alice"}')
    token.add_signature(key, alg=alg, protected={"alg": alg, "kid": key["kid"]})
    check = jws.JWS()
    check.deserialize(token.serialize(compact=True))
    check.verify(key)
    encoded = jwt.encode({"sub": "bob"}, key.get_op_key("sign"), algorithm=alg)
    public = key.get_op_key("sign").public_key()
    assert jwt.decode(encoded, public, algorithms=[alg])["sub"] == "bob"


def test_a_missing_family_is_a_mechanism_error_naming_the_token(
    backend: Backend, pool: SessionPool
) -> None:
    if "EC" not in backend.gaps:
        pytest.skip(f"{NAME} has EC")
    with pool.session(rw=True) as session, pytest.raises(HSMMechanismError):
        session.generate_key_pair("EC", label="never", curve="P-256")


# ---- decryption -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RSA1_5", "RSA-OAEP", "RSA-OAEP-256"])
def test_jwe_key_unwrapping(alg: str, pool: SessionPool, made_keys: dict[str, str | None]) -> None:
    from jwcrypto import jwe
    from jwcrypto.common import json_encode

    key = key_or_skip(made_keys, pool, "rsa")
    public = key.export_public(as_dict=True)
    from jwcrypto.jwk import JWK

    encrypted = jwe.JWE(
        b"secret", json_encode({"alg": alg, "enc": "A256GCM"}), algs=[alg, "A256GCM"]
    )
    encrypted.add_recipient(JWK(**public))
    received = jwe.JWE()
    received.allowed_algs = [alg, "A256GCM"]  # jwcrypto refuses RSA1_5 unless asked
    received.deserialize(encrypted.serialize(compact=True), key=key)
    assert received.payload == b"secret"


def test_pkcs1v15_bad_ciphertext_gives_a_stable_synthetic_message(
    pool: SessionPool, made_keys: dict[str, str | None]
) -> None:
    key = key_or_skip(made_keys, pool, "rsa").get_op_key("unwrapKey")
    good = key.public_key().encrypt(b"k" * 16, padding.PKCS1v15())
    assert key.decrypt(good, padding.PKCS1v15()) == b"k" * 16
    bad = bytes(255) + b"\x05"
    assert key.decrypt(bad, padding.PKCS1v15()) == key.decrypt(bad, padding.PKCS1v15())


# ---- recovery -------------------------------------------------------------------------------


class _Functions(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(f"f{i}", ctypes.c_void_p) for i in range(68)]


def close_all_sessions_behind_the_back(backend: Backend, slot: int) -> None:
    """C_CloseAllSessions on the slot through the module's own function list (the same
    instance hsmkey initialized): every session, and the login, are gone."""
    lib = ctypes.CDLL(backend.module)
    functions = ctypes.POINTER(_Functions)()
    assert lib.C_GetFunctionList(ctypes.byref(functions)) == 0
    # C_CloseAllSessions is the 15th function of the 2.40 list (after C_CloseSession).
    close_all = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)(functions.contents.f14)
    assert close_all(slot) == 0


def test_recovers_after_sessions_and_login_are_lost(
    backend: Backend, pool: SessionPool, made_keys: dict[str, str | None]
) -> None:
    label = "ec256" if made_keys["ec256"] is None else "rsa"
    alg = "ES256" if label == "ec256" else "RS256"
    jwk = key_or_skip(made_keys, pool, label)
    sign_verify(jwk, alg, b"before")
    slot = next(
        t["slot_id"]
        for t in _hsmkey.list_tokens(backend.module, mechanisms=False, init_args=backend.init_args)
        if t.get("label") == backend.label
    )
    before = pool.stats()
    close_all_sessions_behind_the_back(backend, slot)
    sign_verify(jwk, alg, b"after")
    after = pool.stats()
    assert after["recoveries"] > before["recoveries"] or after["relogins"] > before["relogins"]
    with pool.session() as session:
        assert session.find_key(key_label=label) is not None


def test_module_path_is_kept(backend: Backend) -> None:
    assert Path(backend.module).is_file()
