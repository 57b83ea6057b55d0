"""What each namespace holds, counted from etcd's own event stream, and its quota overrides.

Every replica reads `{root}/ns/` and `{root}/quotas/` once, in pages at one revision,
then follows them from the next revision on one etcd watch stream. Each event moves the
counts of the namespace its key is under: keys and bytes under kv/ (key plus value), lease
records, session records, session data bytes (sdata/: updates, snapshots, presence),
votes whose record says OPEN, and the effect ledger's records (effects/; each is bounded
in size by the ledger's checks, so their bytes are not counted). Deletions by lease
expiry are events like any other, so a namespace's usage falls when its leases end, on
every replica.

A watch with prev_kv makes etcd read each changed key's previous version from its backend
(measured: 54 -> 162 us of etcd CPU per write), and most writes (idempotency records, lock
entries, ballots) count nothing, so only the counts that need it get it. One watch of
`{root}/ns/` without prev_kv counts lease, session and effect records (a PUT of version 1 creates,
a DELETE removes) and finds namespaces; each namespace has three watches with prev_kv,
of its kv/, sdata/ and votes/, which alone count those kinds. A namespace's are created
from the scan's next revision when the scan found it, else from the revision of its first
kv/, sdata/ or votes/ event seen by the watch of every write: nothing in between is lost,
and each event is counted by exactly one watch. A namespace keeps its watches while the
replica runs (three etcd watchers for each namespace ever written). They share the book's
own stream, not the watch hub's, whose waits are one-shot and dropped when it breaks: the
book must see every event or count again. `revision` is what
every count reflects: what the watch of every write has seen, short of the first revision
whose kv/, sdata/ or votes/ events have not all come from their own watches yet.

With quotas off (`counting=False`) nothing is refused for counts, so the book follows
only the overrides: no replica pays a watch event for every write. `count` then reads one
namespace's keys when asked (Quotas.Get).

Admission reads these counts (a dict lookup), so the bound on overshoot is what all
replicas admit between a write's admission and its event reaching this copy (the watch
lag, milliseconds on loopback): at most the namespace's writes in flight, each adding at
most one key (a Txn: its ops, at most the Txn limit) and at most the request size limit.
A new namespace's watches start behind etcd's revision, and etcd catches such a watch up
in a loop that runs every 100 ms: for its first writes the lag is up to ~100 ms more.

Error handling: a lost watch is re-established with a fresh scan (counts rebuilt, not
patched). Until the first scan is done, and while resyncing, `synced` is False and
admission does not refuse for counts (quotas protect capacity, not data; failing open
for a second beats refusing every write). A stored override that does not parse is
logged and ignored. A deletion whose previous value etcd did not send (compacted) is
counted with its key size only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator import logs
from accord.coordinator.quotas.limits import QuotaLimits
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.txn import prefix_end, watch
from accord.v1 import quotas_pb2, votes_pb2

_log = logs.get("accord.quotas")
SCAN_PAGE = 100  # values are at most 512 KiB: a page stays well under gRPC's receive limit
MAX_RESYNC_DELAY = 2.0


class Usage:
    """One namespace's counts."""

    __slots__ = ("bytes", "effects", "keys", "leases", "session_bytes", "sessions", "votes_open")

    def __init__(self) -> None:
        self.keys = self.bytes = self.leases = 0
        self.sessions = self.session_bytes = self.votes_open = self.effects = 0

    def to_proto(self) -> quotas_pb2.QuotaUsage:
        return quotas_pb2.QuotaUsage(
            keys=self.keys,
            bytes=self.bytes,
            leases=self.leases,
            sessions=self.sessions,
            session_bytes=self.session_bytes,
            votes_open=self.votes_open,
            effects=self.effects,
        )


_EMPTY = Usage()


def _vote_open(value: bytes | None) -> int:
    if value is None:
        return 0
    try:
        return int(votes_pb2.Vote.FromString(value).status == votes_pb2.VOTE_STATUS_OPEN)
    except Exception:  # a record written around Accord: not a vote
        return 0


class UsageBook:
    def __init__(
        self, etcd: Etcd, keys: Keyspace, defaults: QuotaLimits, *, counting: bool = True
    ) -> None:
        self._etcd = etcd
        self.counting = counting
        self._ns_prefix = keys.namespaces_prefix
        self._quotas_prefix = keys.quotas_prefix
        self.defaults = defaults
        self._usage: dict[str, Usage] = {}
        self._overrides: dict[str, quotas_pb2.QuotaLimits] = {}
        self._limits: dict[str, QuotaLimits] = {}  # merged, for namespaces with overrides
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self.synced = False
        self.revision = 0

    async def start(self, timeout: float = 5.0) -> None:
        """Count everything and keep following; return once counted, or after timeout
        (a large etcd takes longer to count: admission does not refuse for counts until
        then, and the replica need not wait to serve)."""
        if not self.counting:
            _log.info("quota usage not counted: quotas are off")
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.wait_for(asyncio.shield(self._loaded.wait()), timeout)
        except TimeoutError:
            _log.info("quota usage still being counted; serving meanwhile", seconds=timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- reading --------------------------------------------------------------------------

    def usage(self, namespace: str) -> Usage:
        return self._usage.get(namespace, _EMPTY)

    def limits(self, namespace: str) -> QuotaLimits:
        return self._limits.get(namespace, self.defaults)

    def overrides(self, namespace: str) -> quotas_pb2.QuotaLimits:
        return self._overrides.get(namespace) or quotas_pb2.QuotaLimits()

    async def count(self, namespace: str) -> tuple[Usage, int]:
        """One namespace's counts read from etcd now (pages at one revision), and that
        revision: what a replica that does not follow the counts answers with."""
        usage: dict[str, Usage] = {}
        revision = 0
        async for kvs, read_at in self._scan(self._ns_prefix + namespace.encode() + b"/", 0):
            revision = read_at
            for kv in kvs:
                self._apply(usage, {}, kv.key, None, kv.value)
        return usage.get(namespace, Usage()), revision

    # --- following etcd -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the counts must outlive any etcd trouble
                _log.warning("quota usage lost its etcd watch; recounting", error=str(exc))
            self.synced = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESYNC_DELAY)

    async def _follow(self) -> None:
        usage: dict[str, Usage] = {}
        overrides: dict[str, quotas_pb2.QuotaLimits] = {}
        watched: set[bytes] = set()  # namespaces (as in their keys) with their prev watches
        revision = 0
        prefixes = [self._ns_prefix] if self.counting else []
        for prefix in [*prefixes, self._quotas_prefix]:
            async for kvs, read_at in self._scan(prefix, revision):
                revision = read_at
                for kv in kvs:
                    self._apply(usage, overrides, kv.key, None, kv.value)
                    if prefix == self._ns_prefix:
                        watched.add(self._split(kv.key)[0])
        self._usage, self._overrides = usage, overrides
        self._remerge()
        self.revision = revision
        follow = _Follow(self._ns_prefix, watched)
        creates = [follow.create(_Role.OVERRIDES, self._quotas_prefix, revision + 1)]
        if self.counting:
            creates.append(follow.create(_Role.ALL, self._ns_prefix, revision + 1))
            for namespace in watched:
                creates += follow.prev_watches(namespace, revision + 1)
        stream = self._etcd.watch(creates, follow.more)
        self.synced = True
        self._loaded.set()
        seen = revision  # where the watch of every write (or, counting off, of overrides) is
        async for response in stream:
            if response.created:
                follow.roles[response.watch_id] = follow.sent.popleft()
                continue
            role = follow.roles.get(response.watch_id)
            if role is _Role.ALL:
                for event in response.events:
                    self._count_plain(usage, follow, event)
            elif role is _Role.PREV:
                for event in response.events:
                    self._count_with_prev(usage, event)
                    follow.settle(event.kv.mod_revision, -1)
            elif role is _Role.OVERRIDES:
                for event in response.events:
                    new = event.kv.value if event.type == event.PUT else None
                    self._apply(usage, overrides, event.kv.key, None, new)
            if role is _Role.ALL or not self.counting:
                seen = max(seen, response.header.revision)
            self.revision = max(self.revision, follow.counted_up_to(seen))

    def _count_plain(self, usage: dict[str, Usage], follow: _Follow, event: Any) -> None:
        """An event of the watch of every write (no previous values): lease, session and
        effect records count by creation and deletion; the kinds that need the previous value are
        left to their namespace's own watches, started here when it is new."""
        namespace, kind = self._split(event.kv.key)
        if kind in _PREV_KINDS:
            if namespace not in follow.watched:  # first seen: its watches start at this event
                follow.watched.add(namespace)
                for create in follow.prev_watches(namespace, event.kv.mod_revision):
                    follow.more.put_nowait(create)
            follow.settle(event.kv.mod_revision, +1)  # its prev watch counts it
        elif kind in _PLAIN_KINDS:
            if event.type == event.PUT:
                created = event.kv.version == 1  # etcd's version restarts at 1 after a delete
                self._apply(usage, {}, event.kv.key, None if created else b"", event.kv.value)
            else:
                self._apply(usage, {}, event.kv.key, b"", None)

    def _count_with_prev(self, usage: dict[str, Usage], event: Any) -> None:
        old = event.prev_kv.value if event.HasField("prev_kv") else None
        if event.type == event.PUT:
            self._apply(usage, {}, event.kv.key, old, event.kv.value)
        else:
            missing = old is None  # compacted: count the key, not its value
            self._apply(usage, {}, event.kv.key, b"" if missing else old, None)

    def _split(self, key: bytes) -> tuple[bytes, bytes]:
        """A key under {root}/ns/: its namespace and its kind, as bytes."""
        namespace, _, tail = key[len(self._ns_prefix) :].partition(b"/")
        return namespace, tail.partition(b"/")[0]

    async def _scan(self, prefix: bytes, revision: int) -> AsyncIterator[tuple[Any, int]]:
        """Pages of every key under prefix at one revision (0: now, then that one), each
        with the revision read at."""
        start, end = prefix, prefix_end(prefix)
        while True:
            page = await self._etcd.range(
                rpc.RangeRequest(key=start, range_end=end, revision=revision, limit=SCAN_PAGE)
            )
            revision = revision or page.header.revision
            yield page.kvs, revision
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + b"\x00"

    def _apply(
        self,
        usage: dict[str, Usage],
        overrides: dict[str, quotas_pb2.QuotaLimits],
        key: bytes,
        old: bytes | None,
        new: bytes | None,
    ) -> None:
        """Move the counts by one key going from old to new (None: absent)."""
        if key.startswith(self._ns_prefix):
            namespace, _, tail = key[len(self._ns_prefix) :].partition(b"/")
            kind = tail.partition(b"/")[0]
            name = namespace.decode("utf-8", "replace")
            counts = usage.get(name)
            if counts is None:
                counts = usage[name] = Usage()
            present = (new is not None) - (old is not None)
            if kind == b"kv":
                counts.keys += present
                counts.bytes += _size(key, new) - _size(key, old)
            elif kind == b"sdata":
                counts.session_bytes += _size(key, new) - _size(key, old)
            elif kind == b"leases":
                counts.leases += present
            elif kind == b"sessions":
                counts.sessions += present
            elif kind == b"effects":
                counts.effects += present
            elif kind == b"votes":
                counts.votes_open += _vote_open(new) - _vote_open(old)
        elif key.startswith(self._quotas_prefix):
            name = key[len(self._quotas_prefix) :].decode("utf-8", "replace")
            if new is None:
                overrides.pop(name, None)
            else:
                try:
                    overrides[name] = quotas_pb2.QuotaLimits.FromString(new)
                except Exception as exc:
                    _log.warning(
                        "unreadable quota override ignored", namespace=name, error=str(exc)
                    )
                    overrides.pop(name, None)
            if overrides is self._overrides:
                self._remerge()

    def _remerge(self) -> None:
        self._limits = {ns: self.defaults.merged(o) for ns, o in self._overrides.items()}


# The kinds of key under a namespace that _apply counts (keyspace.py names them): those
# whose count needs a changed key's previous value (its size; a vote's status), and those
# that count by creation and deletion alone.
_PREV_KINDS = (b"kv", b"sdata", b"votes")
_PLAIN_KINDS = frozenset({b"leases", b"sessions", b"effects"})


class _Role(enum.Enum):
    OVERRIDES = enum.auto()  # {root}/quotas/
    ALL = enum.auto()  # {root}/ns/ without prev_kv: every write, a namespace's first seen
    PREV = enum.auto()  # one namespace's kv/, sdata/ or votes/, with prev_kv


class _Follow:
    """One watch stream's bookkeeping: which watch each response is from, which
    namespaces have their prev watches, and which of their events are still to come."""

    def __init__(self, ns_prefix: bytes, watched: set[bytes]) -> None:
        self._ns_prefix = ns_prefix
        self.watched = watched
        self.more: asyncio.Queue[Any] = asyncio.Queue()  # creates sent on the open stream
        self.sent: deque[_Role] = deque()  # roles of creates not yet answered, in order
        self.roles: dict[int, _Role] = {}
        # revision -> events of prev kinds the ALL watch saw, minus those their prev
        # watches delivered (either may come first); zero entries are dropped.
        self._due: dict[int, int] = {}

    def create(self, role: _Role, prefix: bytes, start: int) -> Any:
        self.sent.append(role)
        return watch(prefix, prefix=True, start_revision=start, prev_kv=role is _Role.PREV)

    def prev_watches(self, namespace: bytes, start: int) -> list[Any]:
        base = self._ns_prefix + namespace + b"/"
        return [self.create(_Role.PREV, base + kind + b"/", start) for kind in _PREV_KINDS]

    def settle(self, revision: int, step: int) -> None:
        left = self._due.get(revision, 0) + step
        if left:
            self._due[revision] = left
        else:
            self._due.pop(revision, None)

    def counted_up_to(self, seen: int) -> int:
        """The revision every count reflects: what the ALL watch saw, short of the first
        revision whose prev-watch events have not all arrived."""
        return min(seen, min(self._due, default=seen + 1) - 1)


def _size(key: bytes, value: bytes | None) -> int:
    return 0 if value is None else len(key) + len(value)
