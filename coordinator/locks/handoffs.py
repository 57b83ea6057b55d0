"""What set a lock grant off: the trace context of the release that handed the lock on.

A release whose call sent a W3C trace context also writes it to keyspace.lock_handoff
(one key per lock, on the retention lease), in the release's own transaction; a release
without one writes nothing more than before. A waiter that comes to hold reads that key
in the transaction that finds (or marks) it holding, at no extra round trip, and its
grant carries the context as handed_off_by when the release came after the waiter joined
the queue (the key's mod_revision is past the entry's token). So a grant names the latest
traced release of the lock made while it waited: usually the holder it waited behind;
when that holder left untraced or by its lease's end, an earlier traced release (or a
waiter's leaving, which is a release too) is named instead.

Error handling: a record that does not parse is ignored (the grant carries no context).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from accord.coordinator.locks.queue import Entry, grant_of
from accord.coordinator.observability.trace_context import TraceContext
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.txn import Op, Response, first_kv, get, put
from accord.v1 import common_pb2, locks_pb2


def record(keys: Keyspace, ns: str, lock: str, trace: TraceContext, lease: int) -> Op:
    """The put a traced release adds to its transaction."""
    return put(keys.lock_handoff(ns, lock), trace.record().SerializeToString(), lease=lease)


def read(keys: Keyspace, ns: str, lock: str) -> Op:
    """The read a grant adds to the transaction that finds it holding."""
    return get(keys.lock_handoff(ns, lock))


def grant(entry: Entry, answer: Response) -> locks_pb2.Grant:
    """entry's grant, with the release that handed it over if answer (read()'s) shows one
    made since the entry joined the queue."""
    granted = grant_of(entry)
    found = first_kv(answer)
    if found is None or found.mod_revision <= entry.token:
        return granted
    try:
        context = common_pb2.TraceContext.FromString(found.value)
    except DecodeError:
        return granted
    granted.handed_off_by.CopyFrom(context)
    return granted
