"""The sessions this replica has loaded: each a SessionDoc following its etcd keys.

A session is loaded on first use (concurrent first uses share one load), kept while any
call or stream uses it, and unloaded once idle for idle_seconds, compacted first when
worth it: memory follows active sessions, and etcd keeps each at its smallest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from accord.coordinator.observability import accord_metrics
from accord.coordinator.sessions.doc import SessionDoc
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import NotFound
from accord.coordinator.substrate.txn import read
from accord.v1 import records_pb2, sessions_pb2


class LoadedSessions:
    def __init__(self, substrate: Substrate, idle_seconds: float) -> None:
        self._s = substrate
        self.idle_seconds = idle_seconds
        self._loaded: dict[tuple[str, str], SessionDoc] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[SessionDoc]] = {}
        self._reaper: asyncio.Task[None] | None = None
        accord_metrics.count_sessions_loaded(lambda: len(self._loaded))

    def presence_of(self, namespace: str, name: str) -> list[sessions_pb2.Presence]:
        """Who is present in a session, as far as this replica has it loaded."""
        session = self._loaded.get((namespace, name))
        return list(session.presence.values()) if session else []

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[SessionDoc]:
        """The loaded session, kept loaded while in use."""
        ns = calls.current.get().namespace
        key = (ns, name)
        session = self._loaded.get(key)
        if session is None or session.gone:
            session = await self._load(key)
        session.busy += 1
        try:
            yield session
        finally:
            session.busy -= 1
            session.last_used = time.monotonic()

    async def _load(self, key: tuple[str, str]) -> SessionDoc:
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SessionDoc] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            ns, name = key
            meta_key = self._s.keys.session(ns, name)
            found = await self._s.etcd.range(read(meta_key))
            if not found.kvs:
                raise not_found(ns, name)
            record = records_pb2.SessionRecord.FromString(found.kvs[0].value)
            session = SessionDoc(
                self._s.etcd,
                self._s.keys.session_data(ns, name, record.incarnation),
                meta_key,
                ns,
                name,
                found.kvs[0].create_revision,
                record.incarnation,
            )
            session.on_gone = self._forget
            await session.load()
            self._loaded[key] = session
            future.set_result(session)
            if self._reaper is None or self._reaper.done():
                self._reaper = asyncio.create_task(self._reap())
            return session
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a load nobody else awaited is not an error
            raise
        finally:
            self._loading.pop(key, None)

    def _forget(self, session: SessionDoc) -> None:
        key = (session.namespace, session.name)
        if self._loaded.get(key) is session:
            del self._loaded[key]

    async def _reap(self) -> None:
        """Unload sessions nobody used for idle_seconds: memory follows active sessions."""
        while self._loaded:
            await asyncio.sleep(max(0.05, self.idle_seconds / 4))
            now = time.monotonic()
            for key, session in list(self._loaded.items()):
                if not _idle(session, now, self.idle_seconds):
                    continue
                if session.worth_compacting():  # leave it in etcd at its smallest
                    await session.compact_now()
                    if not _idle(session, time.monotonic(), self.idle_seconds):
                        continue
                if self._loaded.get(key) is session:
                    del self._loaded[key]
                await session.close()

    def end_streams(self) -> None:
        for session in self._loaded.values():
            session.end_streams()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session in list(self._loaded.values()):
            await session.close()
        self._loaded.clear()


def not_found(namespace: str, name: str) -> NotFound:
    return NotFound(
        f"session {name!r} does not exist in namespace {namespace!r}",
        metadata={"session": name},
    )


def _idle(session: SessionDoc, now: float, idle_seconds: float) -> bool:
    return (
        session.busy == 0
        and not session.subscribers
        and now - session.last_used >= idle_seconds
        and not session.gone
    )
