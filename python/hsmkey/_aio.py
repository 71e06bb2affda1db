"""Event-loop side of hsmkey's asyncio bridge (called by the Rust core, on the loop thread)."""

from __future__ import annotations

import asyncio
from typing import Any


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
