"""No frame of hsmkey's Python code holds a PIN when an exception leaves it.

Error reporters (Sentry), ``pytest --showlocals`` and ``traceback.TracebackException(
capture_locals=True)`` record the locals of every frame of a traceback: a PIN in one of them
ends up in a log or a bug tracker. Each test makes hsmkey fail with a PIN that nothing else
uses, then looks for that PIN in the formatted traceback with its locals and in every value
(one level into containers and objects) of every frame the traceback went through, except
the test's own frame, which holds the PIN by construction.
"""

from __future__ import annotations

import argparse
import os
import secrets
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Callable

import pytest
from helpers import SoftHSM
from hsmkey import SessionPool, hsm_session
from hsmkey.exceptions import HSMError

HERE = os.path.abspath(__file__)


def fresh_pin() -> str:
    return "pin-" + secrets.token_hex(8)


def tracebacks(exc: BaseException) -> Iterator[TracebackType]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            yield tb
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]


def holds(value: Any, secret: str, depth: int = 3) -> bool:
    """True if ``value`` is, contains or (one attribute deep) refers to ``secret``."""
    if isinstance(value, str):
        return secret in value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return secret.encode() in bytes(value)
    if depth == 0:
        return False
    if isinstance(value, dict):
        return any(
            holds(k, secret, depth - 1) or holds(v, secret, depth - 1) for k, v in value.items()
        )
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds(v, secret, depth - 1) for v in value)
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, type):
        return any(holds(v, secret, depth - 1) for k, v in attrs.items() if k != "__builtins__")
    return False


def assert_no_secret(exc: BaseException, secret: str) -> None:
    # What Sentry and ``--showlocals`` record: the repr of every local of every frame.
    te: traceback.TracebackException | None = traceback.TracebackException.from_exception(
        exc, capture_locals=True
    )
    summaries = 0
    while te is not None:
        for summary in te.stack:
            if os.path.abspath(summary.filename) == HERE:
                continue
            summaries += 1
            assert secret not in repr(summary.locals), (summary.filename, summary.name)
        assert secret not in "".join(te.format_exception_only())
        te = te.__cause__ or te.__context__
    # The frames themselves, one level into containers and objects.
    frames = 0
    for tb in tracebacks(exc):
        frame = tb.tb_frame
        if os.path.abspath(frame.f_code.co_filename) == HERE:
            continue
        frames += 1
        for name, value in frame.f_locals.items():
            assert not holds(value, secret), (frame.f_code.co_filename, frame.f_code.co_name, name)
    assert frames == summaries
    assert secret not in repr(exc) and secret not in str(exc)


def raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:  # every kind is checked
        return exc
    raise AssertionError("expected an exception")


def test_hsm_session_wrong_pin(softhsm: SoftHSM) -> None:
    pin = fresh_pin()

    def use() -> None:
        with hsm_session(softhsm.module, softhsm.token_label, pin) as session:
            session.list_keys()

    exc = raised(use)
    assert isinstance(exc, HSMError), exc
    assert_no_secret(exc, pin)


def test_hsm_session_token_not_found(softhsm: SoftHSM) -> None:
    pin = fresh_pin()

    def use() -> None:
        with hsm_session(softhsm.module, "no-such-token-" + pin[-4:], pin):
            pass

    exc = raised(use)
    assert isinstance(exc, HSMError), exc
    assert_no_secret(exc, pin)


def test_hsm_session_missing_module(tmp_path: Any) -> None:
    pin = fresh_pin()
    exc = raised(lambda: hsm_session(str(tmp_path / "missing.so"), "t", pin))
    assert isinstance(exc, (HSMError, ValueError)), exc
    assert_no_secret(exc, pin)


def test_an_error_inside_the_hsm_session_block(softhsm: SoftHSM) -> None:
    """The user's own exception leaves through hsm_session's exit: no frame there holds the
    PIN either (a generator-based context manager's frame would)."""
    pin = softhsm.pin

    class Boom(Exception):
        pass

    def use() -> None:
        with hsm_session(softhsm.module, softhsm.token_label, pin):
            raise Boom

    exc = raised(use)
    assert isinstance(exc, Boom)
    assert_no_secret(exc, pin)


def test_session_pool_construction_and_first_use(softhsm: SoftHSM, tmp_path: Any) -> None:
    pin = fresh_pin()
    exc = raised(lambda: SessionPool(str(tmp_path / "missing.so"), "t", pin))
    assert_no_secret(exc, pin)
    pool = SessionPool(softhsm.module, softhsm.token_label, pin)
    try:
        for use in (
            pool.check,
            lambda: pool.session().__enter__(),
            lambda: pool.find_key(key_label="x"),
        ):
            exc = raised(use)
            assert isinstance(exc, HSMError), exc
            assert_no_secret(exc, pin)
    finally:
        pool.close()


def test_session_pool_from_env(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    pin = fresh_pin()
    monkeypatch.setenv("HSM_PIN", pin)
    monkeypatch.setenv("HSM_MODULE", softhsm.module)
    monkeypatch.setenv("HSM_TOKEN", "no-such-token")
    pool = SessionPool.from_env()
    try:
        exc = raised(pool.check)
        assert isinstance(exc, HSMError)
        assert_no_secret(exc, pin)
    finally:
        pool.close()
    monkeypatch.setenv("HSM_MODULE", "/nonexistent/module.so")
    exc = raised(SessionPool.from_env)
    assert_no_secret(exc, pin)


def test_the_cli_pool(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    from hsmkey.cli._common import open_pool

    pin = fresh_pin()
    monkeypatch.setenv("HSM_PIN", pin)
    args = argparse.Namespace(
        module=softhsm.module, token=softhsm.token_label, serial=None, slot=None
    )
    exc = raised(lambda: open_pool(args).close())
    assert isinstance(exc, HSMError), exc
    assert_no_secret(exc, pin)


def test_the_checker_finds_a_pin_in_a_frame() -> None:
    """The check itself works: a frame that holds the PIN is found."""
    pin = fresh_pin()

    def leaky(secret: str) -> None:
        raise ValueError("no")

    exc = raised(lambda: leaky(pin))
    with pytest.raises(AssertionError):
        # The lambda above is in this file, but `leaky` is too: look at every frame.
        for tb in tracebacks(exc):
            for value in tb.tb_frame.f_locals.values():
                assert not holds(value, pin)
