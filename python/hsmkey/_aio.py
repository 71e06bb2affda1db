"""Event-loop side of hsmkey's asyncio bridge (called by the Rust core, on the loop thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Future(asyncio.Future):  # type: ignore[type-arg]
    """The future of an asynchronous hsmkey call: cancelling it also tells the worker side
    (a call still waiting for its turn is dropped, a wait for a session stops)."""

    __slots__ = ("_hsmkey_cancel",)

    _hsmkey_cancel: Callable[[], None]

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        self._hsmkey_cancel()
        return super().cancel(msg)


def new_future(loop: asyncio.AbstractEventLoop, on_cancel: Callable[[], None]) -> Future:
    """A :class:`Future` of ``loop`` whose ``cancel()`` calls ``on_cancel`` first."""
    fut = Future(loop=loop)
    fut._hsmkey_cancel = on_cancel
    return fut


def resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Completes ``fut`` unless it was cancelled meanwhile."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def close_if_cancelled(session: Any, fut: asyncio.Future[Any]) -> None:
    """Done-callback of ``Session.__aenter__``: a cancelled wait returns the session."""
    if fut.cancelled():
        session.close()
