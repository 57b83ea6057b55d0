"""Request decoding that cannot fail inside gRPC: undecodable bytes become a marker that
the method's wrapper turns into InvalidArgument, with ErrorInfo like every refusal.

gRPC's own handling of a deserializer that raises is a bare UNKNOWN ("Unexpected
DecodeError") for a unary call, and on a client stream the error lands in whichever task
reads the requests, where it may never reach the caller. Here the deserializer never
raises: it returns an Undecodable, and
- a unary or server-streaming method is refused before it runs;
- a client stream's requests are read through checked_requests, which refuses a garbage
  first message before the method runs, and on a later one raises InvalidArgument to the
  reader and ends the method (cancelled wherever it waits) with the same error.

Error handling: every decode failure (DecodeError, or anything else the generated
parser raises) is INVALID_ARGUMENT on the field "request", naming the expected message
type and the byte count. No exception object is kept between decode and refusal, so no
traceback (and no request) outlives the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from accord.coordinator.substrate.errors import InvalidArgument, invalid

Deserializer = Callable[[bytes], Any]


class Undecodable:
    """What arrived instead of a request message: enough to say why it was refused."""

    __slots__ = ("problem", "size", "type_name")

    def __init__(self, type_name: str, size: int, problem: str) -> None:
        self.type_name = type_name
        self.size = size
        self.problem = problem

    def error(self) -> InvalidArgument:
        return invalid(
            "request",
            f"{self.size} bytes are not a valid {self.type_name} message ({self.problem})",
        )


def tolerant(method: str, deserialize: Deserializer | None) -> Deserializer | None:
    """deserialize, answering an Undecodable instead of raising."""
    if deserialize is None:
        return None
    type_name = _type_name(deserialize, method)

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # the generated parser's errors, whatever their class
            return Undecodable(type_name, len(raw), type(exc).__name__)

    return decode


def checked(behavior: Any) -> Any:
    """A unary method that refuses an undecodable request before running."""

    async def run(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            raise request.error()
        return await behavior(request, context)

    return run


def checked_stream(behavior: Any) -> Any:
    """A server-streaming method that refuses an undecodable request before running."""

    async def run(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            raise request.error()
        async for response in behavior(request, context):
            yield response

    return run


def checked_requests(behavior: Any) -> Any:
    """A client-streaming method whose requests are checked as they are read."""

    async def run(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        first = await anext(aiter(requests), None)
        if isinstance(first, Undecodable):
            raise first.error()
        refused: asyncio.Future[InvalidArgument] = asyncio.get_running_loop().create_future()

        async def reading() -> AsyncIterator[Any]:
            if first is None:
                return
            yield first
            async for request in requests:
                if isinstance(request, Undecodable):
                    error = request.error()
                    if not refused.done():
                        refused.set_result(error)
                    raise error
                yield request

        # The method may read its requests in a task of its own, where an error would
        # never reach the caller: each response is awaited alongside the refusal.
        responses = aiter(behavior(reading(), context))
        while True:
            step = asyncio.ensure_future(anext(responses))
            try:
                await asyncio.wait((step, refused), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
            if refused.done():
                raise refused.result()
            try:
                response = step.result()
            except StopAsyncIteration:
                return
            yield response

    return run


def _type_name(deserialize: Deserializer, method: str) -> str:
    """The request message's full name (deserializers are Message.FromString)."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else f"request of {method}"
