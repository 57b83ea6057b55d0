"""The gRPC connections open to this process's servers, as gRPC's channelz counts them.

gRPC's core keeps channelz data for every server by default (`grpc.enable_channelz`,
which the replica leaves on); it is read here only when asked, so counting costs calls
nothing. grpcio exposes channelz through its Cython layer, as JSON (the
grpcio-channelz package serves the same functions over gRPC); this module is the one
place that reads it. A connection is an HTTP/2 connection: every channel of one client
process to one address usually shares one.

Error handling: if channelz is unavailable (a grpcio without it, or switched off), no
connections are reported rather than an error.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

_PAGE = 1_000
_PREFIX = "chttp2 "


def _channelz() -> Any:
    try:
        return importlib.import_module("grpc._cython.cygrpc")
    except ImportError:
        return None


def grpc_peers() -> list[tuple[str, str]]:
    """(host, port) of the remote end of every open connection to a gRPC server of this
    process (the address as gRPC names it: `ipv4:127.0.0.1:43210`)."""
    cygrpc = _channelz()
    if cygrpc is None or not hasattr(cygrpc, "channelz_get_servers"):
        return []
    found: list[tuple[str, str]] = []
    try:
        for server_id in _paged_ids(
            lambda start: json.loads(cygrpc.channelz_get_servers(start)), "server"
        ):
            for name in _socket_names(cygrpc, server_id):
                address = name.removeprefix(_PREFIX)
                host, _, port = address.rpartition(":")
                found.append((host, port))
    except (ValueError, KeyError, TypeError):
        return []
    return found


def _paged_ids(page: Any, field: str) -> list[int]:
    ids: list[int] = []
    start = 0
    while True:
        answer = page(start)
        items = answer.get(field, [])
        ids += [int(item["ref"]["serverId"]) for item in items]
        if answer.get("end", True) or not items:
            return ids
        start = ids[-1] + 1


def _socket_names(cygrpc: Any, server_id: int) -> list[str]:
    names: list[str] = []
    start = 0
    while True:
        answer = json.loads(cygrpc.channelz_get_server_sockets(server_id, start, _PAGE))
        refs = answer.get("socketRef", [])
        names += [str(ref.get("name", "")) for ref in refs]
        if answer.get("end", True) or not refs:
            return names
        start = int(refs[-1]["socketId"]) + 1
