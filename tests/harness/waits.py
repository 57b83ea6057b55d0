"""Waiting on a real condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """probe() until done(value), for at most timeout seconds; the last value otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
