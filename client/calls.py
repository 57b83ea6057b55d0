"""Every RPC the client makes, declared once as a typed call object.

A call object names the generated stub method it sends through and, for unary calls,
whether it is safe to send again after a replica failed to answer: reads, and writes
that carry a request_id (the server answers a repeat with the first answer). Its
request and response types come from the generated stubs, so `Transport.unary(KV_GET,
request)` only accepts a `GetRequest` and returns a `GetResponse`. Retries, deadlines
and identity metadata are applied in one place, `Transport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from accord.v1 import (
    auth_pb2_grpc,
    effects_pb2_grpc,
    kv_pb2_grpc,
    leases_pb2_grpc,
    locks_pb2_grpc,
    quotas_pb2_grpc,
    replicas_pb2_grpc,
    sessions_pb2_grpc,
    votes_pb2_grpc,
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Stubs:
    """The typed async stubs of every service, on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.kv = kv_pb2_grpc.KVStub(channel)
        self.leases = leases_pb2_grpc.LeasesStub(channel)
        self.locks = locks_pb2_grpc.LocksStub(channel)
        self.sessions = sessions_pb2_grpc.SessionsStub(channel)
        self.votes = votes_pb2_grpc.VotesStub(channel)
        self.effects = effects_pb2_grpc.EffectsStub(channel)
        self.auth = auth_pb2_grpc.AuthStub(channel)
        self.quotas = quotas_pb2_grpc.QuotasStub(channel)
        self.replicas = replicas_pb2_grpc.ReplicasStub(channel)


@dataclass(frozen=True, slots=True)
class Unary(Generic[Req, Resp]):
    method: Callable[[Stubs], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]]
    # May be sent again (on any replica) when the first attempt got no answer.
    safe: bool = True


@dataclass(frozen=True, slots=True)
class ServerStream(Generic[Req, Resp]):
    method: Callable[[Stubs], grpc.aio.UnaryStreamMultiCallable[Req, Resp]]


@dataclass(frozen=True, slots=True)
class BidiStream(Generic[Req, Resp]):
    method: Callable[[Stubs], grpc.aio.StreamStreamMultiCallable[Req, Resp]]


# accord.v1.KV
KV_GET = Unary(lambda s: s.kv.Get)
KV_LIST = Unary(lambda s: s.kv.List)
KV_PUT = Unary(lambda s: s.kv.Put)
KV_DELETE = Unary(lambda s: s.kv.Delete)
KV_TXN = Unary(lambda s: s.kv.Txn)
KV_HISTORY = Unary(lambda s: s.kv.History)
KV_WATCH = ServerStream(lambda s: s.kv.Watch)
# Safe to repeat: the client sends no write without a request_id (client/batching.py).
KV_BATCH = Unary(lambda s: s.kv.Batch)

# accord.v1.Leases. Grant has no request_id: a repeat would make a second lease.
LEASES_GRANT = Unary(lambda s: s.leases.Grant, safe=False)
LEASES_KEEP_ALIVE_ONCE = Unary(lambda s: s.leases.KeepAliveOnce)
LEASES_REVOKE = Unary(lambda s: s.leases.Revoke)
LEASES_TIME_TO_LIVE = Unary(lambda s: s.leases.TimeToLive)
LEASES_LIST = Unary(lambda s: s.leases.List)
LEASES_KEEP_ALIVE = BidiStream(lambda s: s.leases.KeepAlive)

# accord.v1.Locks. Acquire is idempotent per (lock, lease): a repeat keeps its place.
LOCKS_ACQUIRE = Unary(lambda s: s.locks.Acquire)
LOCKS_ACQUIRE_MANY = Unary(lambda s: s.locks.AcquireMany)
LOCKS_RELEASE = Unary(lambda s: s.locks.Release)
LOCKS_DESCRIBE = Unary(lambda s: s.locks.Describe)
LOCKS_LIST = Unary(lambda s: s.locks.List)
LOCKS_WAIT_GRAPH = Unary(lambda s: s.locks.WaitGraph)
LOCKS_BREAK = Unary(lambda s: s.locks.Break)
LOCKS_LIST_DEADLOCKS = Unary(lambda s: s.locks.ListDeadlocks)

# accord.v1.Sessions
SESSIONS_OPEN = Unary(lambda s: s.sessions.Open)
SESSIONS_LIST = Unary(lambda s: s.sessions.List)
SESSIONS_DELETE = Unary(lambda s: s.sessions.Delete)
SESSIONS_SYNC = Unary(lambda s: s.sessions.Sync)
SESSIONS_PUSH = Unary(lambda s: s.sessions.Push)
SESSIONS_READ = Unary(lambda s: s.sessions.Read)
SESSIONS_APPLY = Unary(lambda s: s.sessions.Apply)
SESSIONS_SET_PRESENCE = Unary(lambda s: s.sessions.SetPresence)
SESSIONS_SUBSCRIBE = ServerStream(lambda s: s.sessions.Subscribe)

# accord.v1.Votes
VOTES_PROPOSE = Unary(lambda s: s.votes.Propose)
VOTES_CAST = Unary(lambda s: s.votes.Cast)
# Safe to repeat: the client sends no Cast without a request_id (client/batching.py).
VOTES_CAST_MANY = Unary(lambda s: s.votes.CastMany)
VOTES_GET = Unary(lambda s: s.votes.Get)
VOTES_LIST = Unary(lambda s: s.votes.List)
VOTES_CANCEL = Unary(lambda s: s.votes.Cancel)
VOTES_WATCH = ServerStream(lambda s: s.votes.Watch)

# accord.v1.Effects. All safe to repeat: Begin is idempotent by key and lease, Complete
# replays the first outcome, the rest are naturally idempotent.
EFFECTS_BEGIN = Unary(lambda s: s.effects.Begin)
EFFECTS_COMPLETE = Unary(lambda s: s.effects.Complete)
# Safe to repeat: a Begin is idempotent by key and lease, a Complete replays its outcome.
EFFECTS_BEGIN_MANY = Unary(lambda s: s.effects.BeginMany)
EFFECTS_COMPLETE_MANY = Unary(lambda s: s.effects.CompleteMany)
EFFECTS_ABORT = Unary(lambda s: s.effects.Abort)
EFFECTS_GET = Unary(lambda s: s.effects.Get)
EFFECTS_LIST = Unary(lambda s: s.effects.List)
EFFECTS_GET_RUN = Unary(lambda s: s.effects.GetRun)
EFFECTS_SET_RUN_STATUS = Unary(lambda s: s.effects.SetRunStatus)
EFFECTS_COMPENSATE = Unary(lambda s: s.effects.Compensate)

# accord.v1.Auth. CreateToken is not repeated: a repeat would mint a second token.
AUTH_WHO_AM_I = Unary(lambda s: s.auth.WhoAmI)
AUTH_CREATE_TOKEN = Unary(lambda s: s.auth.CreateToken, safe=False)
AUTH_REVOKE_TOKEN = Unary(lambda s: s.auth.RevokeToken)
AUTH_LIST_PRINCIPALS = Unary(lambda s: s.auth.ListPrincipals)
AUTH_GRANT_ROLE = Unary(lambda s: s.auth.GrantRole)
AUTH_REVOKE_ROLE = Unary(lambda s: s.auth.RevokeRole)
AUTH_LIST_AUDIT = Unary(lambda s: s.auth.ListAudit)
AUTH_GRANT_LABEL = Unary(lambda s: s.auth.GrantLabel)
AUTH_REVOKE_LABEL = Unary(lambda s: s.auth.RevokeLabel)

# accord.v1.Quotas
QUOTAS_GET = Unary(lambda s: s.quotas.Get)
QUOTAS_SET = Unary(lambda s: s.quotas.Set)

# accord.v1.Replicas
REPLICAS_STATUS = Unary(lambda s: s.replicas.Status)
