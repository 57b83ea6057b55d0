"""The audit log: every administrative act, in the same etcd transaction as the act
where etcd allows it.

An entry (accord.v1.AuditEntry) says who (the authenticated principal and agent), what
(the act and its target), when, and from where (the caller's address), taken from the
call being served. It is written under {root}/audit/ (keyspace.audit, in the order of
the writing replicas' clocks) on the retention lease, by the very transaction that
makes the act, so an act is logged exactly when it happens, and etcd deletes old
entries on schedule. Two acts are not transactions of Accord's (revoking a lease, a
vote's decision): record() logs them right after.

Refusals on authorization grounds are logged here too, but not by the refused call:
auth.refusals writes them later, in batches, rate-limited per replica and outside every
namespace's keys, so a refused call changes nothing of what it asked to change and an
attacker cannot fill etcd by being refused.

Error handling: listing checks its bounds (InvalidArgument); writing adds one put to a
transaction and fails with it.
"""

from __future__ import annotations

import secrets
import time

from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import invalid
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.txn import Op, put, read, txn
from accord.v1 import auth_pb2

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def entry(
    action: str, target: str, detail: str = "", *, principal: str = ""
) -> auth_pb2.AuditEntry:
    """An entry for an act of the call being served (principal: who, when no call names
    one, as for `accord auth bootstrap`)."""
    call = calls.current.get()
    made = auth_pb2.AuditEntry(
        principal=call.principal or principal,
        agent_id=call.agent_id,
        namespace=call.namespace,
        peer=call.peer,
        action=action,
        target=target,
        detail=detail,
        trace_id=call.trace_id,
    )
    made.at.FromNanoseconds(time.time_ns())
    return made


def write(keys: Keyspace, logged: auth_pb2.AuditEntry, lease: int) -> Op:
    """The op that logs an entry, for the act's own transaction (lease: retention)."""
    key = keys.audit(logged.at.ToNanoseconds(), secrets.token_hex(4))
    return put(key, logged.SerializeToString(), lease=lease)


def on_behalf(owner: str) -> bool:
    """Whether the call being served acts, as an ADMIN, on what principal owner owns (an
    act the audit log records); False with auth off."""
    call = calls.current.get()
    return bool(call.principal) and owner != call.principal


async def record(writes: Writes, keys: Keyspace, logged: auth_pb2.AuditEntry) -> None:
    """Log an act that etcd cannot make in a transaction with its entry (revoking a lease,
    a decision written by the votes' own transaction): written right after the act, so a
    replica dying between the two loses the entry, never the act."""
    await writes.commit(lambda lease: txn(then=[write(keys, logged, lease)]), retained=True)


async def page(
    etcd: Etcd, keys: Keyspace, limit: int, page_token: str
) -> tuple[list[auth_pb2.AuditEntry], str, int]:
    """Entries newest first, older than page_token; (entries, next page token, revision)."""
    if not 0 <= limit <= MAX_PAGE:
        raise invalid("limit", f"must be between 0 and {MAX_PAGE} (0: {DEFAULT_PAGE})")
    try:
        below = bytes.fromhex(page_token) if page_token else b""
    except ValueError:
        raise invalid("page_token", "is not a token from a previous answer") from None
    if below and not below.startswith(keys.audit_prefix):
        raise invalid("page_token", "is not a token from a previous answer")
    want = limit or DEFAULT_PAGE
    found = await etcd.range(read(keys.audit_prefix, prefix=True, last_first=want + 1, below=below))
    kvs = list(found.kvs)
    more = len(kvs) > want
    kvs = kvs[:want]
    entries = [auth_pb2.AuditEntry.FromString(kv.value) for kv in kvs]
    next_token = kvs[-1].key.hex() if more and kvs else ""
    return entries, next_token, found.header.revision
