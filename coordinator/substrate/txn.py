"""The small vocabulary every etcd transaction of Accord is written in.

A primitive's transaction reads as a sentence, one compare or op per line:

    txn(
        when=[absent(entry), alive(lease)],
        then=[put(entry, record, lease=lease_id)],
        otherwise=[get(entry)],
    )

Compares: absent, exists (alive), mod_is, version_is, created_at, created_after,
lease_is, none_changed_since, prefix_empty.
Ops: put, reattach, delete, get, get_prefix, count, nested. Reads and watches: read, watch. Helpers:
prefix_end, first_kv.

aetcd ships the etcd v3 messages without type stubs, so etcd messages are Any here; the
aliases below say which message a value is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from aetcd.rpc import rpc_pb2 as rpc

Compare: TypeAlias = Any  # etcdserverpb.Compare
Op: TypeAlias = Any  # etcdserverpb.RequestOp
Txn: TypeAlias = Any  # etcdserverpb.TxnRequest
Range: TypeAlias = Any  # etcdserverpb.RangeRequest
WatchCreate: TypeAlias = Any  # etcdserverpb.WatchCreateRequest
Response: TypeAlias = Any  # etcdserverpb.ResponseOp, one op's answer in a TxnResponse
KeyValue: TypeAlias = Any  # mvccpb.KeyValue
Event: TypeAlias = Any  # mvccpb.Event, from a watch


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with prefix (etcd's range_end)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


# --- compares -------------------------------------------------------------------------


def version_is(key: bytes, version: int) -> Compare:
    """key has been written version times since it was created (0: it does not exist)."""
    return rpc.Compare(
        key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=version
    )


def absent(key: bytes) -> Compare:
    return version_is(key, 0)


def exists(key: bytes) -> Compare:
    """key exists; for a record attached to a lease, that the lease is alive."""
    return rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.GREATER, version=0)


alive = exists  # a lease record exists exactly while its lease lives


def mod_is(key: bytes, revision: int) -> Compare:
    """key was last modified at revision (0: it does not exist)."""
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def created_at(key: bytes, revision: int) -> Compare:
    """key is the incarnation created at revision."""
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=revision
    )


def lease_is(key: bytes, lease: int) -> Compare:
    """key is attached to lease (an existing key: etcd compares a missing one as lease 0)."""
    return rpc.Compare(key=key, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL, lease=lease)


def none_changed_since(prefix: bytes, revision: int) -> Compare:
    """No key under prefix was modified after revision."""
    return rpc.Compare(
        key=prefix,
        range_end=prefix_end(prefix),
        target=rpc.Compare.MOD,
        result=rpc.Compare.LESS,
        mod_revision=revision + 1,
    )


def created_after(prefix: bytes, revision: int) -> Compare:
    """Every key under prefix was created after revision."""
    return rpc.Compare(
        key=prefix,
        range_end=prefix_end(prefix),
        target=rpc.Compare.CREATE,
        result=rpc.Compare.GREATER,
        create_revision=revision,
    )


def prefix_empty(prefix: bytes) -> Compare:
    """No key exists under prefix."""
    return rpc.Compare(
        key=prefix,
        range_end=prefix_end(prefix),
        target=rpc.Compare.VERSION,
        result=rpc.Compare.EQUAL,
        version=0,
    )


# --- ops ------------------------------------------------------------------------------


def put(
    key: bytes,
    value: bytes,
    *,
    lease: int = 0,
    prev_kv: bool = False,
    keep_lease: bool = False,
) -> Op:
    """Write value at key, attached to lease (0: none), or to the lease it already has."""
    return rpc.RequestOp(
        request_put=rpc.PutRequest(
            key=key, value=value, lease=lease, prev_kv=prev_kv, ignore_lease=keep_lease
        )
    )


def reattach(key: bytes, lease: int) -> Op:
    """Attach an existing key to lease, keeping its value (etcd refuses the whole
    transaction if key does not exist: compare exists(key) first)."""
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, lease=lease, ignore_value=True))


def delete(key: bytes, *, prefix: bool = False, prev_kv: bool = False) -> Op:
    """Delete key, or every key under it when prefix."""
    return rpc.RequestOp(
        request_delete_range=rpc.DeleteRangeRequest(
            key=key, range_end=prefix_end(key) if prefix else b"", prev_kv=prev_kv
        )
    )


def read(
    key: bytes,
    *,
    prefix: bool = False,
    by_creation: bool = False,
    revision: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
    last_first: int = 0,
    below: bytes = b"",
) -> Range:
    """A read of key (or of every key under it when prefix), for Etcd.range or as an op:
    at revision (0: now), oldest incarnation first when by_creation; with last_first, at
    most that many keys, greatest first (and with below, only keys less than it)."""
    request = rpc.RangeRequest(
        key=key,
        range_end=below or (prefix_end(key) if prefix else b""),
        revision=revision,
        keys_only=keys_only,
        count_only=count_only,
        min_mod_revision=min_mod_revision,
    )
    if by_creation:
        request.sort_order = rpc.RangeRequest.ASCEND
        request.sort_target = rpc.RangeRequest.CREATE
    if last_first:
        request.limit = last_first
        request.sort_order = rpc.RangeRequest.DESCEND
        request.sort_target = rpc.RangeRequest.KEY
    return request


def get(key: bytes, *, keys_only: bool = False) -> Op:
    return rpc.RequestOp(request_range=read(key, keys_only=keys_only))


def get_prefix(prefix: bytes, *, by_creation: bool = False, min_mod_revision: int = 0) -> Op:
    """Every key under prefix, oldest incarnation first when by_creation."""
    return rpc.RequestOp(
        request_range=read(
            prefix, prefix=True, by_creation=by_creation, min_mod_revision=min_mod_revision
        )
    )


def count(key: bytes, *, prefix: bool = False, revision: int = 0) -> Op:
    """How many keys there are (key, or every key under it when prefix) at revision (0:
    now); etcd answers with the number alone."""
    return rpc.RequestOp(request_range=read(key, prefix=prefix, revision=revision, count_only=True))


def nested(inner: Txn) -> Op:
    return rpc.RequestOp(request_txn=inner)


# Building a message and then placing it in another copies it; these helpers for the hot
# write path (every write is wrapped, then batched) copy each transaction once.


def add_put(branch: Any, key: bytes, value: bytes, *, lease: int = 0) -> None:
    """Append put(key, value, lease=lease) to a transaction's success or failure ops, in
    place."""
    op = branch.add().request_put
    op.key, op.value, op.lease = key, value, lease


def around(inner: Txn, *, when: Sequence[Compare], otherwise: Sequence[Op]) -> Txn:
    """txn(when=when, then=[nested(inner)], otherwise=otherwise), inner copied once."""
    outer = rpc.TxnRequest(compare=list(when), failure=list(otherwise))
    outer.success.add().request_txn.CopyFrom(inner)
    return outer


def batch_of(inners: Sequence[Txn]) -> Txn:
    """txn(then=[nested(i) for i in inners]), each copied once."""
    outer = rpc.TxnRequest()
    for inner in inners:
        outer.success.add().request_txn.CopyFrom(inner)
    return outer


def txn(
    *, when: Sequence[Compare] = (), then: Sequence[Op] = (), otherwise: Sequence[Op] = ()
) -> Txn:
    return rpc.TxnRequest(compare=list(when), success=list(then), failure=list(otherwise))


def watch(
    key: bytes,
    *,
    prefix: bool = False,
    start_revision: int = 0,
    prev_kv: bool = False,
    deletions_only: bool = False,
) -> WatchCreate:
    """A watch of key (or every key under it when prefix) from start_revision (0: now)."""
    return rpc.WatchCreateRequest(
        key=key,
        range_end=prefix_end(key) if prefix else b"",
        start_revision=start_revision,
        prev_kv=prev_kv,
        filters=[rpc.WatchCreateRequest.NOPUT] if deletions_only else [],
    )


# --- reading answers --------------------------------------------------------------------


def first_kv(response_op: Any) -> KeyValue | None:
    """The key a get op found (None: it does not exist)."""
    kvs = response_op.response_range.kvs
    return kvs[0] if kvs else None


# --- what group commit needs to know -----------------------------------------------------


def weight(request: Txn) -> int:
    """The operations along the heaviest path of nesting, counted as etcd does: each level
    costs its largest of compares, success and failure; the limit is 128 per path."""
    return shape(request)[1]


def touched(request: Txn) -> set[bytes]:
    """Every key the transaction compares, reads or writes (a range by its first key, so a
    prefix stands for its whole range when every writer names it the same way)."""
    return shape(request)[0]


def shape(request: Txn) -> tuple[set[bytes], int]:
    """touched and weight in one walk (group commit asks both of every write)."""
    keys: set[bytes] = set()
    return keys, _walk(request, keys)


def _walk(request: Txn, keys: set[bytes]) -> int:
    for compare in request.compare:
        keys.add(compare.key)
    inner = 0
    for branch in (request.success, request.failure):
        for op in branch:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                keys.add(op.request_put.key)
            elif kind == "request_range":
                keys.add(op.request_range.key)
            elif kind == "request_delete_range":
                keys.add(op.request_delete_range.key)
            elif kind == "request_txn":
                inner = max(inner, _walk(op.request_txn, keys))
    return max(len(request.compare), len(request.success), len(request.failure)) + inner
