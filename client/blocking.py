"""What the blocking client stands on: a private event loop thread that runs the async
client, and the twins of async iterators and async context managers.

The blocking classes themselves are generated from the async ones (`accord.client.sync`,
written by `accord.client.codegen`). Each wraps one async object and runs every call to
completion on the loop thread, which also keeps leases alive and sessions in sync while
the caller's thread does other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")


class LoopThread:
    """An event loop on its own daemon thread; callers block until their call is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="accord-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run coro on the loop thread and wait for its result."""
        self._check_caller()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: stop the call too
            raise

    def step(self, awaitable: Awaitable[T]) -> T:
        """One item of an async iterator (`__anext__()`), as `__next__` wants it."""

        async def one() -> T:
            return await awaitable

        try:
            return self.run(one())
        except StopAsyncIteration:
            raise StopIteration from None

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (state the loop owns is touched only
        there)."""

        async def on_loop() -> T:
            return fn()

        return self.run(on_loop())

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def _check_caller(self) -> None:
        if self.loop.is_closed():
            raise RuntimeError("this blocking Accord client is closed")
        if threading.current_thread() is self.thread:
            raise RuntimeError(
                "a blocking Accord call from the client's own loop thread (e.g. in an "
                "update function or an on_lost callback) would wait for itself forever"
            )


class Blocking(Generic[A]):
    """The blocking twin of one async object."""

    def __init__(self, loop: LoopThread, wrapped: A) -> None:
        self._loop = loop
        self._async = wrapped


class BlockingIterator(Generic[T]):
    """An async iterator, read from the calling thread. `close()` (or leaving a ``with``
    block) ends the stream behind it."""

    def __init__(self, loop: LoopThread, source: AsyncIterator[T]) -> None:
        self._loop = loop
        self._source = source

    def __iter__(self) -> BlockingIterator[T]:
        return self

    def __next__(self) -> T:
        return self._loop.step(anext(self._source))

    def close(self) -> None:
        if isinstance(self._source, AsyncGenerator) and not self._loop.loop.is_closed():
            self._loop.run(self._source.aclose())

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BlockingContext(Generic[T]):
    """An async context manager, entered and left from the calling thread."""

    def __init__(self, loop: LoopThread, manager: contextlib.AbstractAsyncContextManager[T]):
        self._loop = loop
        self._manager = manager

    def __enter__(self) -> T:
        return self._loop.run(_enter(self._manager))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._loop.run(_exit(self._manager, exc_type, exc, tb))


async def _enter(manager: contextlib.AbstractAsyncContextManager[T]) -> T:
    return await manager.__aenter__()


async def _exit(
    manager: contextlib.AbstractAsyncContextManager[object],
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    return await manager.__aexit__(exc_type, exc, tb)
