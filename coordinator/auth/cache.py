"""Every replica's copy of {root}/auth/: tokens and principals, followed by one etcd watch.

The replica reads the whole prefix once, then applies each change the watch reports,
so a token revoked or a role changed through any replica takes effect on every replica
as soon as etcd tells it (milliseconds; the tests hold it to a second), for new calls
and for open streams (auth.streams) alike. Verifying a call is a dict lookup, a SHA-256
and a constant-time compare: no etcd call.

A token id the copy does not know (made on another replica a moment ago, not yet seen
here) is looked up in etcd once before it is refused, so a token works everywhere as
soon as CreateToken answered. That read is only for well-formed tokens and costs one
small etcd read; garbage is refused before it.

Error handling: an unknown, revoked or expired token, or one whose secret does not
match, is Unauthenticated (without saying which of unknown/wrong secret, and never
echoing the secret). Until the copy is loaded, and while the watch is broken and being
re-established, a call waits for it (at most READY_WAIT seconds, within its deadline) and
then gets BackendUnavailable (retryable): authorization fails closed rather than
trusting a copy that may miss a revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from accord.coordinator import logs
from accord.coordinator.auth import tokens
from accord.coordinator.auth.streams import Recheck, Revocation
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import BackendUnavailable, Unauthenticated
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.txn import read, watch
from accord.v1 import auth_pb2, records_pb2

_log = logs.get("accord.auth")
MAX_RESYNC_DELAY = 2.0
READY_WAIT = 5.0  # how long a call waits for the copy to be (re)loaded
READY_MARGIN = 0.1  # seconds left of a call's deadline for answering UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Verified:
    """Who a valid token says the caller is, and until when (epoch seconds; None: no
    expiry)."""

    token_id: str
    principal: records_pb2.PrincipalRecord
    expires_at: float | None = None


class AuthCache:
    def __init__(self, etcd: Etcd, keys: Keyspace) -> None:
        self._etcd = etcd
        self._keys = keys
        self._tokens: dict[str, records_pb2.TokenRecord] = {}
        self._principals: dict[str, records_pb2.PrincipalRecord] = {}
        self._synced = asyncio.Event()
        # Open streams by the token they were opened with (auth.streams).
        self._streams: dict[str, set[Revocation]] = {}
        self._task: asyncio.Task[None] | None = None
        self.revision = 0  # the etcd revision the copy reflects

    async def start(self, timeout: float = 30.0) -> None:
        """Load the copy and keep following it; return once it is loaded."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- verification ----------------------------------------------------------------------

    def principal(self, name: str) -> records_pb2.PrincipalRecord | None:
        return self._principals.get(name)

    def labels_of(self, principal: str, namespace: str) -> auth_pb2.LabelSet:
        """The lease labels (and their voter weights) an admin granted principal in
        namespace; empty for an unknown principal."""
        record = self._principals.get(principal)
        if record is None or namespace not in record.labels:
            return auth_pb2.LabelSet()
        return record.labels[namespace]

    async def _ready(self) -> None:
        """Wait (within the call's deadline, at most READY_WAIT seconds) for the copy to be
        loaded; then, if it still is not, fail closed with a retryable error."""
        if self._synced.is_set():
            return
        wait = READY_WAIT
        deadline = calls.current.get().deadline
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic() - READY_MARGIN)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), wait)
        if not self._synced.is_set():
            raise BackendUnavailable(
                "this replica is (re)loading its copy of the credentials from etcd; retry"
            )

    async def verify(self, token: tokens.Token) -> Verified:
        await self._ready()
        record = self._tokens.get(token.id)
        if record is None:
            record = await self._read_token(token.id)
        if record is None or not tokens.matches(token.secret, record.secret_sha256):
            raise Unauthenticated(
                f"token {token.id} is unknown or has been revoked",
                metadata={"token_id": token.id},
            )
        if record.HasField("expires_at") and record.expires_at.seconds <= time.time():
            raise Unauthenticated(
                f"token {token.id} expired at {record.expires_at.ToJsonString()}",
                metadata={"token_id": token.id, "expired_at": record.expires_at.ToJsonString()},
            )
        principal = self._principals.get(record.principal)
        if principal is None:
            found = await self._etcd.range(read(self._keys.principal(record.principal)))
            if not found.kvs:
                raise Unauthenticated(
                    f"token {token.id} names principal {record.principal!r}, which does not "
                    "exist any more",
                    metadata={"token_id": token.id},
                )
            principal = records_pb2.PrincipalRecord.FromString(found.kvs[0].value)
        expires = record.expires_at.seconds if record.HasField("expires_at") else None
        return Verified(token.id, principal, expires)

    # --- open streams ------------------------------------------------------------------------

    def follow(self, verified: Verified, recheck: Recheck) -> Revocation:
        """Watch an open stream's credential until forget(): its Revocation ends when its
        token is revoked or recheck refuses its principal as that changes."""
        token_id = verified.token_id
        revocation = Revocation(token_id, verified.principal.name, recheck)
        self._streams.setdefault(token_id, set()).add(revocation)
        return revocation

    def forget(self, revocation: Revocation) -> None:
        streams = self._streams.get(revocation.token_id)
        if streams is not None:
            streams.discard(revocation)
            if not streams:
                del self._streams[revocation.token_id]

    def _revoked(self, token_id: str) -> None:
        for revocation in list(self._streams.get(token_id, ())):
            revocation.end(
                Unauthenticated(f"token {token_id} was revoked", metadata={"token_id": token_id})
            )

    def _recheck(self, name: str | None = None) -> None:
        """Re-check open streams against the copy: those of principal name, or all."""
        for streams in list(self._streams.values()):
            for revocation in list(streams):
                if name is not None and revocation.principal != name:
                    continue
                if revocation.token_id and revocation.token_id not in self._tokens:
                    self._revoked(revocation.token_id)
                    continue
                principal = self._principals.get(revocation.principal)
                if principal is None:
                    revocation.end(
                        Unauthenticated(f"principal {revocation.principal!r} no longer exists")
                    )
                    continue
                revocation.check(principal)

    async def verify_certificate(self, name: str) -> Verified:
        """The principal a verified client certificate's CN names (mutual TLS)."""
        await self._ready()
        principal = self._principals.get(name)
        if principal is None:
            found = await self._etcd.range(read(self._keys.principal(name)))
            if not found.kvs:
                raise Unauthenticated(
                    f"the client certificate names {name!r}, which is no principal here (a "
                    "cluster admin creates it with `accord auth token create` or a role grant)",
                    metadata={"certificate": name},
                )
            principal = records_pb2.PrincipalRecord.FromString(found.kvs[0].value)
        return Verified("", principal)

    async def _read_token(self, token_id: str) -> records_pb2.TokenRecord | None:
        found = await self._etcd.range(read(self._keys.token(token_id)))
        return records_pb2.TokenRecord.FromString(found.kvs[0].value) if found.kvs else None

    # --- following etcd ------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the copy must outlive any etcd trouble
                _log.warning("auth copy lost its etcd watch; resyncing", error=str(exc))
            self._synced.clear()  # fail closed until reloaded
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESYNC_DELAY)

    async def _follow(self) -> None:
        """Read everything, then apply each change the watch reports."""
        prefix = self._keys.auth_prefix
        found = await self._etcd.range(read(prefix, prefix=True))
        self._tokens, self._principals = {}, {}
        for kv in found.kvs:
            self._put(kv.key, kv.value)
        self.revision = found.header.revision
        self._recheck()  # what changed while the watch was down
        changes = watch(prefix, prefix=True, start_revision=found.header.revision + 1)
        stream = self._etcd.watch(changes)
        self._synced.set()
        async for response in stream:
            for event in response.events:
                if event.type == event.PUT:
                    self._put(event.kv.key, event.kv.value)
                else:
                    self._delete(event.kv.key)
            self.revision = max(self.revision, response.header.revision)

    def _put(self, key: bytes, value: bytes) -> None:
        keys = self._keys
        if key.startswith(keys.tokens_prefix):
            token_id = key[len(keys.tokens_prefix) :].decode()
            self._tokens[token_id] = records_pb2.TokenRecord.FromString(value)
        elif key.startswith(keys.principals_prefix):
            record = records_pb2.PrincipalRecord.FromString(value)
            self._principals[record.name] = record
            if self._streams:
                self._recheck(record.name)

    def _delete(self, key: bytes) -> None:
        keys = self._keys
        if key.startswith(keys.tokens_prefix):
            token_id = key[len(keys.tokens_prefix) :].decode()
            self._tokens.pop(token_id, None)
            self._revoked(token_id)
        elif key.startswith(keys.principals_prefix):
            name = key[len(keys.principals_prefix) :].decode()
            self._principals.pop(name, None)
            self._recheck(name)
