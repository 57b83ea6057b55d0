"""The blocking client: the async client driven on a private event loop thread.

Every method mirrors the async one of the same name; leases are kept alive by the loop
thread, so a blocking agent keeps its lease while it works.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc

from accord.client.client import AsyncClient
from accord.client.kv import (
    Delete,
    DeleteResult,
    Expect,
    HistoryPage,
    KeyValue,
    Page,
    Put,
    TxnResult,
    WatchEvent,
    WriteResult,
)
from accord.client.leases import Lease, LeaseInfo
from accord.client.locks import Grant, LockMode, LockState
from accord.client.retry import RetryPolicy
from accord.client.sessions import (
    ApplyResult,
    Presence,
    RootKind,
    SessionEvent,
    SessionInfo,
    SessionState,
    SyncResult,
)
from accord.client.votes import (
    CastResult,
    Decision,
    Rule,
    TiePolicy,
    Vote,
    VoteEvent,
    VotePage,
    VoteStatus,
)
from accord.v1 import common_pb2, sessions_pb2, votes_pb2

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="accord-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class KV:
    """Blocking mirror of AsyncKV."""

    def __init__(self, loop: _Loop, client: AsyncClient) -> None:
        self._loop = loop
        self._kv = client.kv

    def get(
        self,
        key: str,
        *,
        serializable: bool = False,
        revision: int = 0,
        timeout: float | None = None,
    ) -> KeyValue | None:
        return self._loop.run(
            self._kv.get(key, serializable=serializable, revision=revision, timeout=timeout)
        )

    def list(
        self,
        prefix: str = "",
        *,
        limit: int = 0,
        page_token: str = "",
        keys_only: bool = False,
        revision: int = 0,
        timeout: float | None = None,
    ) -> Page:
        return self._loop.run(
            self._kv.list(
                prefix,
                limit=limit,
                page_token=page_token,
                keys_only=keys_only,
                revision=revision,
                timeout=timeout,
            )
        )

    def list_all(self, prefix: str = "", *, keys_only: bool = False) -> builtins.list[KeyValue]:
        return self._loop.run(self._kv.list_all(prefix, keys_only=keys_only))

    def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        return_current_on_failure: bool = False,
        fence: Grant | common_pb2.Fence | None = None,
        lease: Lease | int | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        return self._loop.run(
            self._kv.put(
                key,
                value,
                expect=expect,
                request_id=request_id,
                return_current_on_failure=return_current_on_failure,
                fence=fence,
                lease=lease,
                timeout=timeout,
            )
        )

    def delete(
        self,
        key: str,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        return_current_on_failure: bool = False,
        fence: Grant | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> DeleteResult:
        return self._loop.run(
            self._kv.delete(
                key,
                expect=expect,
                request_id=request_id,
                return_current_on_failure=return_current_on_failure,
                fence=fence,
                timeout=timeout,
            )
        )

    def txn(
        self,
        checks: Mapping[str, Expect],
        ops: Sequence[Put | Delete],
        *,
        request_id: str | None = None,
        return_current_on_failure: bool = False,
        fences: Sequence[Grant | common_pb2.Fence] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        return self._loop.run(
            self._kv.txn(
                checks,
                ops,
                request_id=request_id,
                return_current_on_failure=return_current_on_failure,
                fences=fences,
                timeout=timeout,
            )
        )

    def update(
        self,
        key: str,
        fn: Callable[[bytes | None], bytes | str | Awaitable[bytes | str]],
        *,
        max_attempts: int = 100,
        timeout: float | None = None,
    ) -> WriteResult:
        return self._loop.run(self._kv.update(key, fn, max_attempts=max_attempts, timeout=timeout))

    def history(
        self, key: str, *, limit: int = 0, before_revision: int = 0, timeout: float | None = None
    ) -> HistoryPage:
        return self._loop.run(
            self._kv.history(key, limit=limit, before_revision=before_revision, timeout=timeout)
        )

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0, prev_kv: bool = False
    ) -> Iterator[WatchEvent]:
        watch = self._kv.watch(key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv)
        try:
            while True:
                try:
                    yield self._loop.run(watch.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(watch.aclose())


class Leases:
    """Blocking mirror of AsyncLeases; granted leases are kept alive by the loop thread."""

    def __init__(self, loop: _Loop, client: AsyncClient) -> None:
        self._loop = loop
        self._leases = client.leases

    def grant(self, ttl: int = 10, *, labels: Mapping[str, str] | None = None) -> Lease:
        return self._loop.run(self._leases.grant(ttl, labels=labels))

    def revoke(self, lease: Lease | int) -> None:
        if isinstance(lease, Lease):
            self._loop.run(lease.revoke())
        else:
            self._loop.run(self._leases.revoke(lease))

    def time_to_live(self, lease_id: int) -> LeaseInfo:
        return self._loop.run(self._leases.time_to_live(lease_id))

    def list(self) -> builtins.list[LeaseInfo]:
        return self._loop.run(self._leases.list())


class Locks:
    """Blocking mirror of AsyncLocks."""

    def __init__(self, loop: _Loop, client: AsyncClient) -> None:
        self._loop = loop
        self._locks = client.locks

    def acquire(
        self,
        name: str,
        lease: Lease | int,
        *,
        mode: LockMode = LockMode.EXCLUSIVE,
        permits: int = 0,
        wait: float = 60.0,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Grant:
        return self._loop.run(
            self._locks.acquire(
                name,
                lease,
                mode=mode,
                permits=permits,
                wait=wait,
                priority=priority,
                timeout=timeout,
            )
        )

    def try_acquire(
        self,
        name: str,
        lease: Lease | int,
        *,
        mode: LockMode = LockMode.EXCLUSIVE,
        permits: int = 0,
    ) -> Grant | None:
        return self._loop.run(self._locks.try_acquire(name, lease, mode=mode, permits=permits))

    def release(self, name: str | Grant, lease: Lease | int | None = None) -> bool:
        return self._loop.run(self._locks.release(name, lease))

    def describe(self, name: str, lease: Lease | int = 0) -> tuple[LockState, int]:
        return self._loop.run(self._locks.describe(name, lease))

    def list(self, prefix: str = "") -> builtins.list[LockState]:
        return self._loop.run(self._locks.list(prefix))


async def _next(events: AsyncIterator[T]) -> T:
    return await anext(events)


class Sessions:
    """Blocking mirror of AsyncSessions, without the synced Doc (pycrdt documents belong
    to one thread; use the async client's `session()` for that)."""

    def __init__(self, loop: _Loop, client: AsyncClient) -> None:
        self._loop = loop
        self._sessions = client.sessions

    def open(
        self,
        name: str,
        *,
        must_exist: bool = False,
        roots: Mapping[str, RootKind | str] | None = None,
        timeout: float | None = None,
    ) -> SessionInfo:
        return self._loop.run(
            self._sessions.open(name, must_exist=must_exist, roots=roots, timeout=timeout)
        )

    def list(
        self,
        prefix: str = "",
        *,
        limit: int = 0,
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> builtins.list[SessionInfo]:
        return self._loop.run(
            self._sessions.list(prefix, limit=limit, page_size=page_size, timeout=timeout)
        )

    def delete(
        self,
        name: str,
        *,
        expected_created_revision: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        return self._loop.run(
            self._sessions.delete(
                name,
                expected_created_revision=expected_created_revision,
                request_id=request_id,
                timeout=timeout,
            )
        )

    def sync(
        self, name: str, state_vector: bytes = b"", *, timeout: float | None = None
    ) -> SyncResult:
        return self._loop.run(self._sessions.sync(name, state_vector, timeout=timeout))

    def push(
        self,
        name: str,
        update: bytes,
        *,
        request_id: str | None = None,
        fence: Grant | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        return self._loop.run(
            self._sessions.push(name, update, request_id=request_id, fence=fence, timeout=timeout)
        )

    def read(self, name: str, *, timeout: float | None = None) -> SessionState:
        return self._loop.run(self._sessions.read(name, timeout=timeout))

    def apply(
        self,
        name: str,
        *operations: sessions_pb2.Operation,
        request_id: str | None = None,
        fence: Grant | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> ApplyResult:
        return self._loop.run(
            self._sessions.apply(
                name, *operations, request_id=request_id, fence=fence, timeout=timeout
            )
        )

    def set_presence(
        self,
        name: str,
        lease: Lease | int,
        state: Mapping[str, Any] | None,
        *,
        client_id: int = 0,
        timeout: float | None = None,
    ) -> Presence:
        return self._loop.run(
            self._sessions.set_presence(name, lease, state, client_id=client_id, timeout=timeout)
        )

    def subscribe(
        self, name: str, state_vector: bytes = b"", *, presence: bool = False
    ) -> Iterator[SessionEvent]:
        events = self._sessions.subscribe(name, state_vector, presence=presence)
        try:
            while True:
                try:
                    yield self._loop.run(_next(events))
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(events.aclose())


class Votes:
    """Blocking mirror of AsyncVotes."""

    def __init__(self, loop: _Loop, client: AsyncClient) -> None:
        self._loop = loop
        self._votes = client.votes

    def propose(
        self,
        question: str,
        options: Sequence[str],
        *,
        voters: Mapping[str, float] | Sequence[str] | None = None,
        lease_labels: Mapping[str, str] | None = None,
        rule: Rule | votes_pb2.Rule | None = None,
        quorum_voters: int = 0,
        quorum_weight: float = 0.0,
        veto_holders: Sequence[str] = (),
        deadline: datetime | None = None,
        voting_period: float | timedelta | None = None,
        allow_abstain: bool = False,
        allow_change: bool = False,
        on_tie: TiePolicy = TiePolicy.NO_DECISION,
        retention: float | timedelta | None = None,
        vote_id: str = "",
        request_id: str | None = None,
        call_timeout: float | None = None,
        timeout: float | timedelta | None = None,
    ) -> Vote:
        return self._loop.run(
            self._votes.propose(
                question,
                options,
                voters=voters,
                lease_labels=lease_labels,
                rule=rule,
                quorum_voters=quorum_voters,
                quorum_weight=quorum_weight,
                veto_holders=veto_holders,
                deadline=deadline,
                voting_period=voting_period,
                allow_abstain=allow_abstain,
                allow_change=allow_change,
                on_tie=on_tie,
                retention=retention,
                vote_id=vote_id,
                request_id=request_id,
                call_timeout=call_timeout,
                timeout=timeout,
            )
        )

    def cast(
        self,
        vote_id: str,
        choice: str = "",
        *,
        abstain: bool = False,
        veto: bool = False,
        rationale: str = "",
        confidence: float = 0.0,
        fence: Grant | common_pb2.Fence | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> CastResult:
        return self._loop.run(
            self._votes.cast(
                vote_id,
                choice,
                abstain=abstain,
                veto=veto,
                rationale=rationale,
                confidence=confidence,
                fence=fence,
                request_id=request_id,
                timeout=timeout,
            )
        )

    def get(self, vote_id: str, *, timeout: float | None = None) -> Vote:
        return self._loop.run(self._votes.get(vote_id, timeout=timeout))

    def list(
        self,
        status: VoteStatus | None = None,
        *,
        limit: int = 100,
        after: str = "",
        timeout: float | None = None,
    ) -> VotePage:
        return self._loop.run(self._votes.list(status, limit=limit, after=after, timeout=timeout))

    def scan(self, status: VoteStatus | None = None, *, page_size: int = 100) -> Iterator[Vote]:
        after = ""
        while True:
            page = self.list(status, limit=page_size, after=after)
            yield from page.votes
            if not page.next_after:
                return
            after = page.next_after

    def cancel(
        self,
        vote_id: str,
        reason: str = "",
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Decision:
        return self._loop.run(
            self._votes.cancel(vote_id, reason, request_id=request_id, timeout=timeout)
        )

    def watch(self, vote_id: str, *, max_reconnects: int = 20) -> Iterator[VoteEvent]:
        events = self._votes.watch(vote_id, max_reconnects=max_reconnects)
        try:
            while True:
                try:
                    yield self._loop.run(_next(events))
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(events.aclose())

    def wait(self, vote_id: str, timeout: float | None = None) -> Decision:
        return self._loop.run(self._votes.wait(vote_id, timeout))


class Client:
    """``with Client("127.0.0.1:50051", agent_id="a") as accord: accord.kv.put(...)``"""

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        agent_id: str = "",
        namespace: str = "default",
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._loop = _Loop()

        async def make() -> AsyncClient:
            return AsyncClient(
                addresses,
                agent_id=agent_id,
                namespace=namespace,
                timeout=timeout,
                retry=retry,
                credentials=credentials,
            )

        self._client = self._loop.run(make())
        self.kv = KV(self._loop, self._client)
        self.leases = Leases(self._loop, self._client)
        self.locks = Locks(self._loop, self._client)
        self.sessions = Sessions(self._loop, self._client)
        self.votes = Votes(self._loop, self._client)

    def close(self) -> None:
        self._loop.run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
