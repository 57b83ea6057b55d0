"""Memory tools: Accord's versioned key-value store (accord.client.kv) for an agent.

accord_memory_get / _list / _history read; _put writes (optionally only at an expected
revision, idempotently under a request_id, fenced by a lock the session holds, or tied to
the session lease); _update writes only if the current value is the one the agent names
(compare by value, for agents that keep the text, not the revision); _delete removes.
Values are UTF-8 text; bytes that are not UTF-8 come back base64 with encoding "base64",
and a write may send base64 the same way.

Error handling: every refusal is a tool result (refusals.py): a failed compare returns
the key as it is now (value, revision, writer), a lost lock returns who holds it now. A
value that is not valid base64 when encoding is "base64" is refused (INVALID_ARGUMENT)
before anything is sent.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from accord.client import Expect
from accord.mcpserver import hints
from accord.mcpserver.context import AgentSession, Facade
from accord.mcpserver.refusals import (
    Conflict,
    FacadeRefusal,
    Value,
    Writer,
    value_of,
    writer_of,
)

Key = Annotated[str, Field(description="the key (a path-like name, e.g. 'plan/step-3')")]
Encoding = Annotated[
    Literal["utf-8", "base64"],
    Field(description="how `value` is written: UTF-8 text (default) or base64 bytes"),
]
LockName = Annotated[
    str | None,
    Field(
        description="fence the write with this lock, which this session must hold "
        "(accord_locks_acquire): if the lock was lost meanwhile, the write is refused "
        "(FENCED) instead of overwriting the new holder's work"
    ),
]
RequestId = Annotated[
    str | None,
    Field(
        description="any unique string you choose (e.g. a UUID) to make a retry safe: the "
        "same request_id is applied at most once, and a retry returns the first outcome"
    ),
]


class Read(BaseModel):
    key: str
    found: bool
    value: Value | None = Field(description="absent when the key does not exist")


class Listing(BaseModel):
    revision: int = Field(description="the store revision the listing was read at")
    values: list[Value]
    next_page_token: str = Field(description="pass back to read the next page ('' : done)")
    total: int = Field(description="keys under the prefix in all")


class Written(BaseModel):
    key: str
    revision: int = Field(description="the new revision: pass as expected_revision next time")
    replayed: bool = Field(description="true: this request_id was applied before; not redone")
    value: Value | None


class Deleted(BaseModel):
    key: str
    deleted: bool = Field(description="false: there was nothing to delete")
    revision: int
    previous: Value | None
    replayed: bool


class Change(BaseModel):
    kind: Literal["put", "delete"]
    revision: int
    value: Value | None = Field(description="the value written (absent for a delete)")
    changed_by: Writer


class History(BaseModel):
    key: str
    changes: list[Change] = Field(description="newest first")
    next_before_revision: int = Field(description="pass as before_revision for older ones")
    truncated_by_compaction: bool = Field(description="older changes were compacted away")


def _bytes(value: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FacadeRefusal(
            "INVALID_ARGUMENT",
            "value is not valid base64 (encoding is 'base64'); nothing was written",
            "Send the value base64-encoded, or as plain text with encoding 'utf-8'.",
        ) from None


def _expect(expected_revision: int | None, must_not_exist: bool) -> Expect | None:
    if must_not_exist and expected_revision is not None:
        raise FacadeRefusal(
            "INVALID_ARGUMENT",
            "expected_revision and must_not_exist exclude each other; nothing was written",
            "Pass expected_revision to overwrite a version you read, or must_not_exist to "
            "create a key, not both.",
        )
    if must_not_exist:
        return Expect(absent=True)
    return Expect(mod_revision=expected_revision) if expected_revision is not None else None


def _lease_of(session: AgentSession, ephemeral: bool) -> int | None:
    if not ephemeral:
        return None
    if session.lease is None:
        raise FacadeRefusal(
            "NO_SESSION_LEASE",
            "ephemeral writes hang on the session lease, and this session has none",
            "Start one with accord_leases_start, then write again.",
        )
    return session.lease.id


async def get(session: AgentSession, key: str, revision: int) -> Read:
    kv = await session.client.kv.get(key, revision=revision)
    return Read(key=key, found=kv is not None, value=value_of(kv) if kv else None)


async def listing(
    session: AgentSession, prefix: str, limit: int, page_token: str, keys_only: bool
) -> Listing:
    page = await session.client.kv.list(
        prefix, limit=limit, page_token=page_token, keys_only=keys_only
    )
    return Listing(
        revision=page.revision,
        values=[value_of(kv) for kv in page.kvs],
        next_page_token=page.next_page_token,
        total=page.total,
    )


async def put(
    session: AgentSession,
    key: str,
    value: bytes,
    *,
    expect: Expect | None,
    request_id: str | None,
    lock: str | None,
    lease: int | None,
) -> Written:
    written = await session.client.kv.put(
        key,
        value,
        expect=expect,
        request_id=request_id,
        return_current_on_failure=True,
        fence=session.fence(lock) if lock else None,
        lease=lease,
    )
    return Written(
        key=key,
        revision=written.kv.mod_revision if written.kv else written.revision,
        replayed=written.replayed,
        value=value_of(written.kv) if written.kv else None,
    )


async def update(
    session: AgentSession,
    key: str,
    expected: bytes | None,
    value: bytes,
    *,
    request_id: str | None,
    lock: str | None,
) -> Written:
    current = await session.client.kv.get(key)
    if (current.value if current else None) != expected:
        raise FacadeRefusal(
            "CONDITION_FAILED",
            f"{key!r} does not hold the value you expected; nothing was written",
            "Read `conflict.current` (the value now, its revision and writer), decide "
            "whether your change still applies, and update again with that value as "
            "expected_value.",
            conflict=Conflict(
                key=key,
                exists=current is not None,
                current=value_of(current) if current else None,
                current_revision=current.mod_revision if current else 0,
                checked_at_revision=current.mod_revision if current else 0,
            ),
        )
    expect = Expect(mod_revision=current.mod_revision) if current else Expect(absent=True)
    return await put(
        session, key, value, expect=expect, request_id=request_id, lock=lock, lease=None
    )


async def delete(
    session: AgentSession,
    key: str,
    *,
    expected_revision: int | None,
    request_id: str | None,
    lock: str | None,
) -> Deleted:
    done = await session.client.kv.delete(
        key,
        expect=_expect(expected_revision, False),
        request_id=request_id,
        return_current_on_failure=True,
        fence=session.fence(lock) if lock else None,
    )
    return Deleted(
        key=key,
        deleted=done.deleted,
        revision=done.revision,
        previous=value_of(done.prev) if done.prev else None,
        replayed=done.replayed,
    )


async def history(session: AgentSession, key: str, limit: int, before_revision: int) -> History:
    page = await session.client.kv.history(key, limit=limit, before_revision=before_revision)
    return History(
        key=key,
        changes=[
            Change(
                kind="delete" if e.type.value == "delete" else "put",
                revision=e.revision,
                value=value_of(e.kv) if e.type.value == "put" else None,
                changed_by=writer_of(e.changed_by),
            )
            for e in page.entries
        ],
        next_before_revision=page.next_before_revision,
        truncated_by_compaction=page.truncated_by_compaction,
    )


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.tool(
        name="accord_memory_get",
        description=(
            "Read one key of the shared memory. Returns found, and the value with its "
            "revision and who wrote it. Keep the revision: pass it as expected_revision to "
            "accord_memory_put so your write cannot overwrite a change you have not seen. "
            "revision > 0 reads the key as of that older store revision."
        ),
        annotations=hints.read_only("Read a memory key"),
    )
    async def accord_memory_get(
        key: Key,
        ctx: Context[Any, Any],
        revision: Annotated[int, Field(ge=0, description="0: now")] = 0,
    ) -> Annotated[CallToolResult, Read]:
        return await facade.run(ctx, lambda s: get(s, key, revision))

    @server.tool(
        name="accord_memory_list",
        description=(
            "List the keys under a prefix, in key order, with their values (with keys_only, "
            "names and revisions only: every value is ''), one page at a time, all pages "
            "from one snapshot. Returns values, next_page_token ('' when done) and total."
        ),
        annotations=hints.read_only("List memory keys"),
    )
    async def accord_memory_list(
        ctx: Context[Any, Any],
        prefix: Annotated[str, Field(description="'' lists every key")] = "",
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        page_token: Annotated[str, Field(description="from the previous page")] = "",
        keys_only: bool = False,
    ) -> Annotated[CallToolResult, Listing]:
        return await facade.run(ctx, lambda s: listing(s, prefix, limit, page_token, keys_only))

    @server.tool(
        name="accord_memory_put",
        description=(
            "Write a key. To avoid lost updates pass expected_revision (the revision you "
            "read): if someone wrote the key since, nothing is written and the result is a "
            "CONDITION_FAILED refusal carrying the current value, revision and writer, to "
            "merge and retry. must_not_exist creates the key only if it is absent. With "
            "lock, the write is fenced by that lock's grant: if you lost the lock, it is "
            "refused (FENCED) and says who holds it now. With request_id a retry is "
            "applied once. ephemeral ties the key to this session's lease (deleted when "
            "the session ends)."
        ),
        annotations=hints.writes("Write a memory key", destructive=True, idempotent=False),
    )
    async def accord_memory_put(
        key: Key,
        value: Annotated[str, Field(description="the new value")],
        ctx: Context[Any, Any],
        encoding: Encoding = "utf-8",
        expected_revision: Annotated[
            int | None, Field(ge=0, description="write only if the key is at this revision")
        ] = None,
        must_not_exist: bool = False,
        lock: LockName = None,
        request_id: RequestId = None,
        ephemeral: Annotated[bool, Field(description="delete with the session lease")] = False,
    ) -> Annotated[CallToolResult, Written]:
        async def work(s: AgentSession) -> Written:
            return await put(
                s,
                key,
                _bytes(value, encoding),
                expect=_expect(expected_revision, must_not_exist),
                request_id=request_id,
                lock=lock,
                lease=_lease_of(s, ephemeral),
            )

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_memory_update",
        description=(
            "Compare and set by value: write `value` only if the key currently holds "
            "exactly `expected_value` (null: only if the key does not exist). Use it when "
            "you kept the text you read rather than its revision. If the value differs, "
            "nothing is written and the CONDITION_FAILED refusal carries the current "
            "value, revision and writer. lock and request_id work as in accord_memory_put."
        ),
        annotations=hints.writes("Compare and set a key", destructive=True, idempotent=False),
    )
    async def accord_memory_update(
        key: Key,
        expected_value: Annotated[
            str | None, Field(description="the value you expect now; null: key absent")
        ],
        value: Annotated[str, Field(description="the new value")],
        ctx: Context[Any, Any],
        encoding: Encoding = "utf-8",
        lock: LockName = None,
        request_id: RequestId = None,
    ) -> Annotated[CallToolResult, Written]:
        async def work(s: AgentSession) -> Written:
            expected = _bytes(expected_value, encoding) if expected_value is not None else None
            return await update(
                s, key, expected, _bytes(value, encoding), request_id=request_id, lock=lock
            )

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_memory_delete",
        description=(
            "Delete a key (deleted is false if it did not exist). expected_revision, lock "
            "and request_id work as in accord_memory_put. Returns the value it had. The "
            "key's history keeps the deletion and what came before it."
        ),
        annotations=hints.writes("Delete a memory key", destructive=True, idempotent=True),
    )
    async def accord_memory_delete(
        key: Key,
        ctx: Context[Any, Any],
        expected_revision: Annotated[
            int | None, Field(ge=0, description="delete only if the key is at this revision")
        ] = None,
        lock: LockName = None,
        request_id: RequestId = None,
    ) -> Annotated[CallToolResult, Deleted]:
        return await facade.run(
            ctx,
            lambda s: delete(
                s, key, expected_revision=expected_revision, request_id=request_id, lock=lock
            ),
        )

    @server.tool(
        name="accord_memory_history",
        description=(
            "The changes of one key, newest first: each put's value and each delete, with "
            "its revision and who made it. Use it to see who changed something and when, "
            "or to recover an earlier value. Page with next_before_revision."
        ),
        annotations=hints.read_only("History of a memory key"),
    )
    async def accord_memory_history(
        key: Key,
        ctx: Context[Any, Any],
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
        before_revision: Annotated[int, Field(ge=0, description="0: from the newest")] = 0,
    ) -> Annotated[CallToolResult, History]:
        return await facade.run(ctx, lambda s: history(s, key, limit, before_revision))
