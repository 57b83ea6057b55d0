"""The peer for benchmarks/sessions.py: pycrdt-websocket's WebsocketServer (in-memory
rooms, no store) behind the `websockets` server, in its own process, on the same event
loop the coordinator uses (uvloop when installed).

    python benchmarks/ywebsocket_peer.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from pycrdt.websocket import WebsocketServer
from websockets.asyncio.server import ServerConnection, serve


class Connection:
    """A websockets connection as the pycrdt Channel the room serves."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        self.path = connection.request.path if connection.request else "/"

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except Exception:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._connection.send(message)

    async def recv(self) -> bytes:
        message: Any = await self._connection.recv()
        return bytes(message)


async def main(port: int) -> None:
    async with WebsocketServer(auto_clean_rooms=False) as rooms:

        async def handler(connection: ServerConnection) -> None:
            await rooms.serve(Connection(connection))

        async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
            await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
