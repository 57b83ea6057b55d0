"""Ending an open stream when its credential stops being valid.

A stream is authorized when it opens; it may then live for hours (a KeepAlive, a Watch,
a Subscribe). While it is open, the replica's copy of the credentials (auth.cache) keeps
a `Revocation` for it: revoking its token, or changing its principal so that the
stream's method is no longer allowed (a role taken back, an agent removed), resolves
`ended` with the error to end it with, on every replica, as soon as the watch reports
the change. `until_ended` also ends it when its token expires.

The stream's own generator runs in one task (a pump) that hands each response over a
one-slot queue, so the generator keeps one task and one context, and a slow reader
still holds the producer back.

Error handling: the stream ends with the Revocation's error (Unauthenticated for a
revoked or expired token, PermissionDenied for a role taken back); an error the stream
raised itself passes through unchanged; the pump is cancelled either way, so the
stream's cleanup runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from accord.coordinator.substrate.errors import AccordError, Unauthenticated
from accord.v1 import records_pb2

Recheck = Callable[[records_pb2.PrincipalRecord], None]


class Revocation:
    """One open stream's credential: its token ("" for a client certificate), its
    principal, and how to re-check the principal."""

    __slots__ = ("ended", "principal", "recheck", "token_id")

    def __init__(self, token_id: str, principal: str, recheck: Recheck) -> None:
        self.token_id = token_id
        self.principal = principal
        self.recheck = recheck  # raises the AccordError to end the stream with
        self.ended: asyncio.Future[AccordError] = asyncio.get_running_loop().create_future()

    def end(self, error: AccordError) -> None:
        if not self.ended.done():
            self.ended.set_result(error)

    def check(self, principal: records_pb2.PrincipalRecord) -> None:
        try:
            self.recheck(principal)
        except AccordError as error:
            self.end(error)


async def until_ended(
    responses: AsyncIterator[Any], ended: asyncio.Future[AccordError], expires_at: float | None
) -> AsyncIterator[Any]:
    """responses, until they end or ended resolves or expires_at (epoch seconds) passes."""
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for response in responses:
                await queue.put((True, response))
        except Exception as exc:  # handed to the reader, which raises it as its own
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    task = asyncio.create_task(pump())
    try:
        while True:
            getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
            left = None if expires_at is None else max(0.0, expires_at - time.time())
            waits: set[asyncio.Future[Any]] = {getter, ended}
            done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if ended.done():
                    raise ended.result()
                raise Unauthenticated("the stream's token expired", metadata={"token": "expired"})
            more, value = getter.result()
            if more:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
