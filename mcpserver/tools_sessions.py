"""Collaborative sessions as MCP tools, for agents without a Yjs library:
accord_sessions_read (the document as JSON), _apply (edit it with operations), _list,
_set_presence and _presence.

A session is a shared document (CRDT, Yjs format) that other agents, browsers and editors
change concurrently; edits merge instead of overwriting each other. accord_sessions_apply
runs its operations on the coordinator, in order, all or none, as one update; with
`create` (the default) a missing session is created first. Presence (what this agent is
doing, where its cursor is) hangs on the MCP session's lease: it vanishes when the lease
ends, so accord_sessions_set_presence needs a lease started with accord_leases_start.

Error handling: Accord refusals (NOT_FOUND, INVALID_ARGUMENT naming the bad operation,
FENCED, quotas) become tool results through refusals.py; setting presence without a lease
is refused by the façade (NO_SESSION_LEASE) before anything is sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from accord.client import NotFoundError, ops
from accord.mcpserver import hints, views
from accord.mcpserver.context import AgentSession, Facade
from accord.mcpserver.refusals import FacadeRefusal
from accord.v1 import sessions_pb2

SessionName = Annotated[
    str, Field(description='The session\'s name, e.g. "plan" or "repo/design-doc"')
]
Path = Annotated[
    list[str | int],
    Field(
        description="Map keys and array indexes from the root down to a nested type ([]: the root)"
    ),
]


class _Op(BaseModel):
    root: Annotated[str, Field(description="The root type's name (created on first use)")]
    path: Path = []


class MapSet(_Op):
    op: Literal["map_set"]
    key: str
    value: Annotated[
        Any, Field(description="Any JSON value; objects and arrays become nested maps and arrays")
    ]


class MapDelete(_Op):
    op: Literal["map_delete"]
    key: str


class TextInsert(_Op):
    op: Literal["text_insert"]
    index: Annotated[int, Field(ge=0, description="In Unicode code points")]
    text: str


class TextDelete(_Op):
    op: Literal["text_delete"]
    index: Annotated[int, Field(ge=0)]
    length: Annotated[int, Field(ge=1)]


class ArrayInsert(_Op):
    op: Literal["array_insert"]
    index: Annotated[int | None, Field(ge=0, description="null appends")] = None
    values: list[Any]


class ArrayDelete(_Op):
    op: Literal["array_delete"]
    index: Annotated[int, Field(ge=0)]
    length: Annotated[int, Field(ge=1)] = 1


Operation = Annotated[
    MapSet | MapDelete | TextInsert | TextDelete | ArrayInsert | ArrayDelete,
    Field(discriminator="op"),
]


def to_proto(
    op: MapSet | MapDelete | TextInsert | TextDelete | ArrayInsert | ArrayDelete,
) -> sessions_pb2.Operation:
    path = tuple(op.path)
    if isinstance(op, MapSet):
        return ops.map_set(op.root, op.key, op.value, path=path)
    if isinstance(op, MapDelete):
        return ops.map_delete(op.root, op.key, path=path)
    if isinstance(op, TextInsert):
        return ops.text_insert(op.root, op.index, op.text, path=path)
    if isinstance(op, TextDelete):
        return ops.text_delete(op.root, op.index, op.length, path=path)
    if isinstance(op, ArrayInsert):
        if op.index is None:
            return ops.array_append(op.root, *op.values, path=path)
        return ops.array_insert(op.root, op.index, *op.values, path=path)
    return ops.array_delete(op.root, op.index, op.length, path=path)


class ApplyView(BaseModel):
    revision: int = Field(description="The etcd revision the update was stored at")
    changed: bool = Field(description="False when the operations changed nothing")
    created: bool = Field(description="True when this call created the session")


class SessionSummary(BaseModel):
    name: str
    created_revision: int
    created_by: str


class SessionList(BaseModel):
    sessions: list[SessionSummary]


class PresenceList(BaseModel):
    name: str
    presence: list[views.PresenceView]


OperationList = Annotated[
    list[Operation], Field(min_length=1, description="Applied in order, all or none, as one update")
]


async def apply(
    s: AgentSession,
    name: str,
    operations: list[MapSet | MapDelete | TextInsert | TextDelete | ArrayInsert | ArrayDelete],
    *,
    create: bool,
    request_id: str | None,
    lock: str | None,
) -> ApplyView:
    protos = [to_proto(op) for op in operations]
    fence = s.fence(lock) if lock else None
    sessions = s.client.sessions
    try:
        result = await sessions.apply(name, *protos, request_id=request_id, fence=fence)
        return ApplyView(revision=result.revision, changed=bool(result.update), created=False)
    except NotFoundError:
        if not create:
            raise
    info = await sessions.open(name)
    result = await sessions.apply(name, *protos, request_id=request_id, fence=fence)
    return ApplyView(revision=result.revision, changed=bool(result.update), created=info.created)


async def set_presence(
    s: AgentSession, name: str, state: dict[str, Any] | None
) -> views.PresenceView:
    if s.lease is None:
        raise FacadeRefusal(
            "NO_SESSION_LEASE",
            "presence hangs on the session lease, and this session has none",
            "Start one with accord_leases_start, then set presence again.",
        )
    return views.presence(await s.client.sessions.set_presence(name, s.lease, state))


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.tool(
        name="accord_sessions_read",
        description=(
            "A shared document (session) as JSON: one member per root (maps as objects, text "
            "as strings, arrays as lists), the revision it was read at, and who is present. "
            "Read it before editing with accord_sessions_apply. Refusals: NOT_FOUND (no such "
            "session; accord_sessions_apply creates one)."
        ),
        annotations=hints.read_only("Read a shared document"),
    )
    async def accord_sessions_read(
        ctx: Context[Any, Any], name: SessionName
    ) -> Annotated[CallToolResult, views.SessionView]:
        async def work(s: AgentSession) -> views.SessionView:
            return views.session(await s.client.sessions.read(name))

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_sessions_apply",
        description=(
            "Edit a shared document with operations: map_set / map_delete (objects), "
            "text_insert / text_delete (text; indexes in code points), array_insert (index "
            "null appends) / array_delete. They run in order, all or none; concurrent edits "
            "by other agents merge with them instead of being overwritten. create (default) "
            "makes a missing session. Pass request_id to make a retry safe (without one a "
            "retried text_insert inserts twice). Refusals: INVALID_ARGUMENT names the "
            "operation at fault (operations[i]) and nothing was applied; FENCED (with lock): "
            "the lock was lost, so do not edit on its behalf."
        ),
        annotations=hints.writes("Edit a shared document", destructive=True, idempotent=False),
    )
    async def accord_sessions_apply(
        ctx: Context[Any, Any],
        name: SessionName,
        operations: OperationList,
        create: Annotated[bool, Field(description="Create the session if it is missing")] = True,
        request_id: Annotated[
            str | None,
            Field(
                description="Idempotency key: a retry with this request_id applies nothing twice"
            ),
        ] = None,
        lock: Annotated[
            str | None,
            Field(description="Apply only while this session holds this lock (else: FENCED)"),
        ] = None,
    ) -> Annotated[CallToolResult, ApplyView]:
        return await facade.run(
            ctx,
            lambda s: apply(s, name, operations, create=create, request_id=request_id, lock=lock),
        )

    @server.tool(
        name="accord_sessions_list",
        description=(
            "The shared documents (sessions) of the namespace whose names start with prefix, "
            "in name order, at most limit of them."
        ),
        annotations=hints.read_only("List shared documents"),
    )
    async def accord_sessions_list(
        ctx: Context[Any, Any],
        prefix: Annotated[str, Field(description="Only names starting with this")] = "",
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> Annotated[CallToolResult, SessionList]:
        async def work(s: AgentSession) -> SessionList:
            infos = await s.client.sessions.list(prefix, limit=limit)
            return SessionList(
                sessions=[
                    SessionSummary(
                        name=i.name,
                        created_revision=i.created_revision,
                        created_by=i.created_by.agent_id,
                    )
                    for i in infos
                ]
            )

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_sessions_set_presence",
        description=(
            "Tell the others in a shared document what this agent is doing (e.g. "
            '{"status": "editing", "section": "intro"}; null clears it). It lasts as long as '
            "this MCP session's lease and vanishes with it, so start one first with "
            "accord_leases_start (refusal NO_SESSION_LEASE otherwise)."
        ),
        annotations=hints.writes("Set presence", destructive=False, idempotent=True),
    )
    async def accord_sessions_set_presence(
        ctx: Context[Any, Any],
        name: SessionName,
        state: Annotated[
            dict[str, Any] | None,
            Field(description="A JSON object (status, current task, cursor...); null clears it"),
        ],
    ) -> Annotated[CallToolResult, views.PresenceView]:
        return await facade.run(ctx, lambda s: set_presence(s, name, state))

    @server.tool(
        name="accord_sessions_presence",
        description=(
            "Who is in a shared document: each participant's agent, lease, and the state it "
            "set (what it is doing). Refusals: NOT_FOUND (no such session)."
        ),
        annotations=hints.read_only("Who is in a shared document"),
    )
    async def accord_sessions_presence(
        ctx: Context[Any, Any], name: SessionName
    ) -> Annotated[CallToolResult, PresenceList]:
        async def work(s: AgentSession) -> PresenceList:
            state = await s.client.sessions.read(name)
            return PresenceList(name=name, presence=[views.presence(p) for p in state.presence])

        return await facade.run(ctx, work)
