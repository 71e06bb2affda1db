"""Bad input over the public API (hypothesis): every case raises a documented exception
(HSMError subclasses, TypeError, ValueError), never a panic, a crash, a hang or a bare
RuntimeError, and the pool and token stay usable afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import SoftHSM
from hsmkey import HSMJWK, SessionPool
from hsmkey.exceptions import HSMError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DOCUMENTED = (HSMError, TypeError, ValueError)
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
labels = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40),
    st.just("a" * 100_000),
    st.just("ec\0key"),
    st.just("\udcff"),  # a lone surrogate: not encodable as UTF-8
)


@pytest.fixture(scope="module")
def pool(softhsm: SoftHSM) -> Iterator[SessionPool]:
    p = SessionPool(softhsm.module, softhsm.token_label, softhsm.pin)
    yield p
    p.close()


def still_usable(pool: SessionPool) -> None:
    assert pool.stats()["in_use"] == 0
    with pool.session() as s:
        assert len(s.find_key(key_label="ec-key").sign("ES256", b"ok")) == 64


def call(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Runs fn; anything but success or a documented exception fails the test."""
    try:
        fn(*args, **kwargs)
    except DOCUMENTED as e:
        assert type(e) is not RuntimeError
        assert "panicked" not in str(e).lower()


@SETTINGS
@given(
    module=st.one_of(anything, st.just(""), st.just("/nonexistent/lib.so"), st.just("/tmp")),
    label=st.one_of(anything, labels),
    pin=anything,
    kwargs=st.fixed_dictionaries(
        {},
        optional={
            "token_serial": st.one_of(anything, labels),
            "slot_id": anything,
            "max_sessions": anything,
            "acquire_timeout": anything,
            "max_idle": anything,
            "allow_final_pin_try": anything,
        },
    ),
)
def test_constructor(module: Any, label: Any, pin: Any, kwargs: dict[str, Any]) -> None:
    call(lambda: SessionPool(module, label, pin, **kwargs).close())


@SETTINGS
@given(label=st.one_of(anything, labels), key_id=st.one_of(anything, st.binary(max_size=2000)))
def test_find_key(pool: SessionPool, label: Any, key_id: Any) -> None:
    with pool.session() as s:
        call(s.find_key, key_label=label, key_id=key_id)
    call(pool.find_key, key_label=label, key_id=key_id)
    call(HSMJWK.from_hsm, pool, key_label=label, key_id=key_id)
    assert pool.stats()["in_use"] == 0


@SETTINGS
@given(
    alg=st.one_of(anything, st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", ""])),
    data=st.one_of(anything, st.binary(max_size=5000)),
)
def test_sign(pool: SessionPool, alg: Any, data: Any) -> None:
    key = pool.find_key(key_label="ec-key")
    call(key.sign, alg, data)
    call(key.sign_many, alg, [data, data])
    call(key.sign_raw, alg, data, hash=alg)
    call(key.decrypt, alg, data)
    call(key.ecdh, data)


@settings(max_examples=8, deadline=None)
@given(size=st.sampled_from([0, 1, 1 << 16, 1 << 20, (1 << 20) + 7]))
def test_huge_payloads_sign_everywhere(softhsm: SoftHSM, size: int) -> None:
    data = bytes(size)
    with SessionPool(softhsm.module, softhsm.token_label, softhsm.pin) as p:
        for label, alg in (("rsa-key", "PS256"), ("ec-key", "ES256"), ("ed-key", "EdDSA")):
            assert p.find_key(key_label=label).sign(alg, data)


@SETTINGS
@given(
    key_type=st.one_of(anything, st.sampled_from(["RSA", "EC", "Ed25519", "DSA"])),
    label=st.one_of(anything, labels),
    bits=anything,
    curve=anything,
)
def test_generate_rejects_bad_arguments(
    pool: SessionPool, key_type: Any, label: Any, bits: Any, curve: Any
) -> None:
    # Only invalid combinations: a valid one would make a key (deleted right after).
    with pool.session(rw=True) as s:
        try:
            key = s.generate_key_pair(key_type, label=label, bits=bits, curve=curve)
        except DOCUMENTED:
            return
        s.delete_key(key_label=key.label, key_id=key.id)


@pytest.mark.parametrize(
    "timeout", [0.0, -1.0, math.nan, math.inf, -math.inf, 1e300, 5e-324, "1", None]
)
def test_timeouts_and_sizes(softhsm: SoftHSM, timeout: Any) -> None:
    call(
        lambda: SessionPool(
            softhsm.module, softhsm.token_label, softhsm.pin, acquire_timeout=timeout
        ).close()
    )
    call(
        lambda: SessionPool(
            softhsm.module, softhsm.token_label, softhsm.pin, max_idle=timeout
        ).close()
    )


def test_zero_timeout_fails_at_once_when_busy(softhsm: SoftHSM) -> None:
    from hsmkey.exceptions import HSMPoolExhaustedError

    with (
        SessionPool(
            softhsm.module, softhsm.token_label, softhsm.pin, max_sessions=1, acquire_timeout=0
        ) as p,
        p.session(),
        pytest.raises(HSMPoolExhaustedError),
        p.session(),
    ):
        pass


def test_pool_still_usable_after_everything(pool: SessionPool) -> None:
    still_usable(pool)


def test_misspelled_keyword_names_the_class_and_the_close_match(softhsm: SoftHSM) -> None:
    with pytest.raises(TypeError) as raised:
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, max_session=4)  # type: ignore[call-arg]
    message = str(raised.value)
    assert message.startswith("SessionPool() got an unexpected keyword argument 'max_session'")
    assert message.endswith("did you mean 'max_sessions'?")
    assert "__new__" not in message
    with pytest.raises(TypeError, match=r"did you mean 'acquire_timeout'\?"):
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, aquire_timeout=1)  # type: ignore[call-arg]
    # No suggestion when nothing is close; the other TypeErrors name SessionPool too.
    with pytest.raises(TypeError) as raised:
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, colour="red")  # type: ignore[call-arg]
    assert "did you mean" not in str(raised.value) and "SessionPool()" in str(raised.value)
    with pytest.raises(TypeError, match=r"^SessionPool\(\)"):
        SessionPool(softhsm.module, softhsm.token_label, softhsm.pin, 4, 5, 6)  # type: ignore[call-arg]
    # from_env goes through the same check.
    with pytest.raises(TypeError, match=r"did you mean 'max_sessions'\?"):
        SessionPool.from_env(max_session=4)


def test_the_constructor_signature_is_shown() -> None:
    """help(SessionPool) and Sphinx show the real arguments, not (*args, **kwargs)."""
    import inspect

    parameters = inspect.signature(SessionPool).parameters
    assert list(parameters)[:3] == ["module_path", "token_label", "user_pin"]
    assert "max_sessions" in parameters
