"""Read-only views as MCP resources (JSON, application/json), read with the calling
session's own token like any tool call:

- `accord://locks{?prefix}`: the namespace's locks and semaphores (holders, waiters in
  queue order), optionally only names starting with prefix;
- `accord://locks/{+name}`: one lock;
- `accord://votes/{vote_id}`: a vote with its ballots, tally and decision (as
  accord_votes_get returns it);
- `accord://sessions/{+name}`: a session's document as JSON, with presence (as
  accord_sessions_read returns it);
- `accord://leases/{lease_id}`: a lease (its id in hexadecimal, as accord_leases_start
  gives it): its TTL left, labels, and the locks it waits on or holds.

Lease and lock URIs are the ones notifications.py names in `notifications/resources/
updated` when a lease (and the locks under it) is lost. Names go to Accord as they are
(it validates them): lock and session names may contain "/" and are not file paths, so the
SDK's path checks are off for them (NUL bytes are still refused).

Error handling: a refusal is a resource error whose message is the Accord reason and
message (NOT_FOUND as the SDK's not-found, INVALID_PARAMS; others INTERNAL_ERROR with the
reason), never a traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.mcpserver.resources import ResourceSecurity
from pydantic import BaseModel

from accord.client import AccordError, NotFoundError
from accord.mcpserver import views
from accord.mcpserver.context import Facade

JSON = "application/json"
# Lock and session names are Accord names, not paths: keep only the NUL check.
NAMES = ResourceSecurity(reject_path_traversal=False, reject_absolute_paths=False)

P = ParamSpec("P")


def _refused(read: Callable[P, Awaitable[str]]) -> Callable[P, Awaitable[str]]:
    """An Accord refusal as a resource error carrying its reason and message."""

    @functools.wraps(read)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> str:
        try:
            return await read(*args, **kwargs)
        except NotFoundError as exc:
            raise ResourceNotFoundError(f"NOT_FOUND: {exc.message}") from exc
        except AccordError as exc:
            raise ResourceError(f"{exc.reason or 'UNAVAILABLE'}: {exc.message}") from exc

    return wrapper


def _json(model: BaseModel | list[Any] | dict[str, Any]) -> str:
    if isinstance(model, BaseModel):
        return model.model_dump_json(indent=1)
    return json.dumps(model, indent=1, ensure_ascii=False)


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.resource(
        "accord://locks{?prefix}",
        name="locks",
        title="Locks of the namespace",
        description="Every lock and semaphore: holders, waiters in queue order (?prefix= narrows)",
        mime_type=JSON,
    )
    @_refused
    async def locks(ctx: Context[Any, Any], prefix: str = "") -> str:
        session = await facade.session(ctx)
        states = await session.client.locks.list(prefix)
        return _json({"locks": [views.lock(s).model_dump() for s in states]})

    @server.resource(
        "accord://locks/{+name}",
        name="lock",
        title="A lock",
        description="One lock: who holds it, who waits, in queue order",
        mime_type=JSON,
        security=NAMES,
    )
    @_refused
    async def lock(name: str, ctx: Context[Any, Any]) -> str:
        session = await facade.session(ctx)
        state, _ = await session.client.locks.describe(name)
        return _json(views.lock(state))

    @server.resource(
        "accord://votes/{vote_id}",
        name="vote",
        title="A vote",
        description="A vote: ballots, tally, and the decision with its explanation",
        mime_type=JSON,
    )
    @_refused
    async def vote(vote_id: str, ctx: Context[Any, Any]) -> str:
        session = await facade.session(ctx)
        return _json(views.vote(await session.client.votes.get(vote_id)))

    @server.resource(
        "accord://sessions/{+name}",
        name="session",
        title="A shared document",
        description="A session's document as JSON, with who is present",
        mime_type=JSON,
        security=NAMES,
    )
    @_refused
    async def session_doc(name: str, ctx: Context[Any, Any]) -> str:
        session = await facade.session(ctx)
        return _json(views.session(await session.client.sessions.read(name)))

    @server.resource(
        "accord://leases/{lease_id}",
        name="lease",
        title="A lease",
        description="A lease: seconds left, labels, and the locks it waits on or holds",
        mime_type=JSON,
    )
    @_refused
    async def lease(lease_id: str, ctx: Context[Any, Any]) -> str:
        session = await facade.session(ctx)
        try:
            number = int(lease_id, 16)
        except ValueError:
            raise ResourceNotFoundError(
                f"INVALID_ARGUMENT: lease id {lease_id!r} is not hexadecimal"
            ) from None
        info = await session.client.leases.time_to_live(number)
        return _json(
            {
                "lease_id": f"{info.id:x}",
                "agent_id": info.agent_id,
                "granted_ttl_seconds": info.granted_ttl,
                "ttl_seconds": info.ttl,
                "labels": info.labels,
                "locks": info.locks,
            }
        )
