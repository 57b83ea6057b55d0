"""The sessions workload (issue 16, workload 5): concurrent edits to a few session
documents through every replica; after healing, every acknowledged edit is present in
every replica's document and in every subscriber's, exactly once, and they all agree.

Every edit appends one element, unique to the run and naming its writer, to the array
root "edits" of one document. The writers:
- editors: AsyncClients over every replica (rotated, their own first), each edit one of
  - push: a Yjs update made in a fresh pycrdt Doc, sent with a request_id and sent again
    with the same request_id after a lost answer (UNAVAILABLE, DEADLINE_EXCEEDED);
  - apply: the server-side operation array_append, resent the same way (a retry applied
    twice would append the element twice: the duplicate check's target);
  - hasty apply: its first attempt has a deadline of milliseconds (often still in flight
    when the client gives up), then it is resent normally with the same request_id, so
    the service must answer the resend with the first attempt's outcome;
  - quick push: a deadline of milliseconds, never resent (indeterminate edits);
  - doomed apply: [append X, delete past the end]: all or none, so it must be refused
    and X never appear;
- subscribers: a SyncedSession (pycrdt Doc kept in sync) per document and replica,
  through a client of that replica alone; each appends to its local document and waits
  for `flush` (acknowledged: durable).
Each edit is one recorded operation: input (kind, element), partition the document,
output the revision acknowledged.

When told to stop, the run settles: subscribers flush what they still hold, then it
reads each document from every replica until every replica and every subscriber agree
(or a deadline passes) and keeps what each had.

Meanwhile a reader per replica reads the documents through that replica alone, one
after another, noting when each read was called and what it held.

check(): problems (empty: valid), per document:
- an acknowledged edit missing from a replica's document; a refused (or doomed) edit
  present; an element present twice (a retry applied twice); an element no writer made;
- replicas that disagree (their JSON views differ), and a subscriber whose local
  document differs from the replicas' (or that stopped syncing).
An indeterminate edit may be present or not, but at most once and the same everywhere.
And for every read during the run: every edit acknowledged before the read was called is
in it (a read on one replica sees what another acknowledged), nothing refused or twice.

Error handling: the recorder classifies each edit's errors; a replica that cannot be read
while settling, or a subscriber that stopped, is a problem reported by check, not an
exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pycrdt import Array, Doc

from accord.client import AsyncClient, ops
from accord.client.errors import AccordError, DeadlineExceededError, UnavailableError
from accord.client.retry import RetryPolicy
from accord.client.sessions import SyncedSession
from tests.faults.recorder import Recorder
from tests.harness import make_client
from tests.linearizability import INDETERMINATE

ROOT = "edits"
# An editor's kinds of edit; an element's first letter names its kind.
KINDS = ("push", "apply", "hasty-apply", "quick-push", "doomed")
RESENDS = 3  # attempts of one edit with one request_id before it is left indeterminate
T = TypeVar("T")


@dataclass
class Subscriber:
    """A synced document on one replica, and what it held once the run settled."""

    document: str
    replica: int
    client: AsyncClient
    live: SyncedSession
    edits: int = 0
    final: list[Any] | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return f"subscriber of {self.document} on replica {self.replica}"

    def local(self) -> list[Any]:
        return list(self.live.doc.get(ROOT, type=Array).to_py() or [])


@dataclass(frozen=True)
class Read:
    """A Read of a document through one replica during the run: when it was called and
    answered (time.monotonic()), and the elements it held."""

    document: str
    replica: int
    call: float
    ret: float
    edits: tuple[Any, ...]


@dataclass
class SessionRun:
    documents: list[str]
    acknowledged: dict[str, set[str]]
    indeterminate: dict[str, set[str]]
    refused: dict[str, set[str]]
    # per document: each replica's "edits" once settled (None: it could not be read)
    replicas: dict[str, list[list[Any] | None]]
    subscribers: list[Subscriber]
    settle_seconds: float = 0.0
    reads: list[Read] = field(default_factory=list)
    # when each acknowledged edit was acknowledged, per document
    acknowledged_at: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Edits:
    """The edits refused (left out of the history by the recorder) or that had to be
    (doomed applies), per document: none of them may appear."""

    refused: dict[str, set[str]]

    def note(self, recorder: Recorder, before: int, name: str, element: str) -> None:
        """After an edit's block: no operation recorded means it was refused."""
        if len(recorder.operations) == before:
            self.refused[name].add(element)


@dataclass(frozen=True)
class SessionWorkload:
    addresses: list[str]
    namespace: str
    seed: int
    documents: int = 2
    editors: int = 3
    timeout: float = 2.0
    # Seconds each writer waits between edits (a range: it varies).
    pace: tuple[float, float] = (0.0, 0.05)
    # How often editors make each kind of edit (KINDS), as weights.
    mix: tuple[float, ...] = (0.4, 0.3, 0.15, 0.08, 0.07)
    # The deadline of a hasty edit's first attempt, in seconds (a range).
    hasty: tuple[float, float] = (0.002, 0.03)

    def names(self) -> list[str]:
        return [f"doc-{d}" for d in range(self.documents)]

    def _client(self, addresses: list[str], agent: str) -> AsyncClient:
        retry = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5)
        return make_client(addresses, self.namespace, agent, timeout=self.timeout, retry=retry)

    def _editor_client(self, i: int) -> AsyncClient:
        turn = i % len(self.addresses)
        return self._client(self.addresses[turn:] + self.addresses[:turn], f"editor-{i}")

    async def run(
        self, recorder: Recorder, stop: asyncio.Event, settle: float = 30.0
    ) -> SessionRun:
        """Edit until stop is set, then settle (at most settle seconds) and read back."""
        names = self.names()
        async with self._editor_client(0) as admin:
            for name in names:
                await _again(lambda name=name: admin.sessions.open(name, roots={ROOT: "array"}))
        subscribers: list[Subscriber] = []
        edits = _Edits({name: set() for name in names})
        reads: list[Read] = []
        try:
            for name in names:
                for r, address in enumerate(self.addresses):
                    c = self._client([address], f"subscriber-{name}-{r}")
                    live = c.sessions.synced(name, create=False)
                    subscribers.append(Subscriber(name, r, c, live))
            # The faults may have begun: a subscriber's replica killed or out of reach.
            await asyncio.gather(*(_start(s) for s in subscribers))
            await asyncio.gather(
                *(self._edit(i, recorder, stop, edits) for i in range(self.editors)),
                *(self._edit_live(s, recorder, stop, edits) for s in subscribers),
                *(self._read(r, stop, reads) for r in range(len(self.addresses))),
            )
            started = time.monotonic()
            replicas = await self._settle(subscribers, settle)
            settle_seconds = time.monotonic() - started
        finally:
            for s in subscribers:
                with contextlib.suppress(Exception):
                    await s.live.stop()
                with contextlib.suppress(Exception):
                    await s.client.close()
        run = SessionRun(names, {n: set() for n in names}, {n: set() for n in names},
                         edits.refused, replicas, subscribers, settle_seconds, reads)  # fmt: skip
        for op in recorder.operations:
            assert isinstance(op.partition, str) and isinstance(op.input, tuple)
            kind, element = op.input
            assert isinstance(element, str)
            if kind == "doomed":
                continue  # in refused already, whatever its answer
            if op.output is INDETERMINATE:
                run.indeterminate[op.partition].add(element)
            else:
                assert op.ret is not None
                run.acknowledged[op.partition].add(element)
                run.acknowledged_at.setdefault(op.partition, {})[element] = op.ret
        return run

    # --- writers ------------------------------------------------------------------

    async def _edit(self, i: int, recorder: Recorder, stop: asyncio.Event, edits: _Edits) -> None:
        rng = random.Random(f"{self.seed}/sessions/editor/{i}")
        names = self.names()
        async with self._editor_client(i) as c:
            n = 0
            while not stop.is_set():
                name = rng.choice(names)
                n += 1
                (kind,) = rng.choices(KINDS, weights=self.mix)
                element = f"{kind[0]}{i}.{n}"
                if kind in {"push", "quick-push"}:
                    await self._push(
                        c, i, recorder, edits, name, element, rng, hasty=kind != "push"
                    )
                elif kind in {"apply", "hasty-apply"}:
                    hasty = kind != "apply"
                    await self._apply(c, i, recorder, edits, name, element, rng, hasty=hasty)
                else:
                    await self._doomed(c, i, recorder, name, element, edits)
                await asyncio.sleep(rng.uniform(*self.pace))

    async def _push(
        self,
        c: AsyncClient,
        i: int,
        recorder: Recorder,
        edits: _Edits,
        name: str,
        element: str,
        rng: random.Random,
        *,
        hasty: bool,
    ) -> None:
        local: Doc[Any] = Doc()
        local.get(ROOT, type=Array).append(element)
        update = local.get_update()
        kind = "quick-push" if hasty else "push"
        before = len(recorder.operations)
        async with recorder.op(i, (kind, element), name) as done:
            if hasty:  # never resent: often indeterminate
                done.output = await c.sessions.push(
                    name, update, timeout=rng.uniform(*self.hasty), request_id=uuid.uuid4().hex
                )
            else:
                done.output = await _settled(
                    recorder,
                    lambda rid, timeout: c.sessions.push(
                        name, update, request_id=rid, timeout=timeout
                    ),
                )
        edits.note(recorder, before, name, element)

    async def _apply(
        self,
        c: AsyncClient,
        i: int,
        recorder: Recorder,
        edits: _Edits,
        name: str,
        element: str,
        rng: random.Random,
        *,
        hasty: bool,
    ) -> None:
        operation = ops.array_append(ROOT, element)
        first = rng.uniform(*self.hasty) if hasty else None

        async def attempt(rid: str, timeout: float | None) -> int:
            return (
                await c.sessions.apply(name, operation, request_id=rid, timeout=timeout)
            ).revision

        before = len(recorder.operations)
        async with recorder.op(i, ("hasty-apply" if hasty else "apply", element), name) as done:
            done.output = await _settled(recorder, attempt, first_timeout=first)
        edits.note(recorder, before, name, element)

    async def _doomed(
        self, c: AsyncClient, i: int, recorder: Recorder, name: str, element: str, edits: _Edits
    ) -> None:
        """All or none: the delete past the end must refuse the append before it."""
        edits.refused[name].add(element)
        past = ops.array_delete(ROOT, 1_000_000)
        async with recorder.op(i, ("doomed", element), name) as done:
            done.output = (
                await c.sessions.apply(name, ops.array_append(ROOT, element), past)
            ).revision

    async def _edit_live(
        self, s: Subscriber, recorder: Recorder, stop: asyncio.Event, edits: _Edits
    ) -> None:
        rng = random.Random(f"{self.seed}/sessions/{s.document}/{s.replica}")
        client = 100 + len(self.addresses) * self.names().index(s.document) + s.replica
        array = s.live.doc.get(ROOT, type=Array)
        while not stop.is_set() and s.live.error is None:
            s.edits += 1
            element = f"s{s.document}.{s.replica}.{s.edits}"
            before = len(recorder.operations)
            async with recorder.op(client, ("live", element), s.document) as done:
                array.append(element)
                done.output = await s.live.flush(2 * self.timeout)
            edits.note(recorder, before, s.document, element)
            await asyncio.sleep(rng.uniform(0.05, 0.2))

    async def _read(self, r: int, stop: asyncio.Event, reads: list[Read]) -> None:
        """Read the documents through replica r alone, one after another, until stop."""
        rng = random.Random(f"{self.seed}/sessions/reader/{r}")
        async with self._client([self.addresses[r]], f"reader-{r}") as c:
            while not stop.is_set():
                name = rng.choice(self.names())
                call = time.monotonic()
                try:
                    state = await c.sessions.read(name)
                except AccordError:
                    await asyncio.sleep(0.05)  # no answer: nothing to check
                    continue
                edits = tuple(state.json.get(ROOT) or [])
                reads.append(Read(name, r, call, time.monotonic(), edits))
                await asyncio.sleep(rng.uniform(0.02, 0.1))

    # --- settling -----------------------------------------------------------------

    async def _settle(
        self, subscribers: list[Subscriber], settle: float
    ) -> dict[str, list[list[Any] | None]]:
        """Flush every subscriber, then read every document from every replica until all
        replicas and subscribers agree or settle seconds pass; what each held last."""
        deadline = time.monotonic() + settle
        for s in subscribers:
            try:
                await s.live.flush(max(0.1, deadline - time.monotonic()))
            except (AccordError, TimeoutError) as error:
                s.error = f"flush: {error!r}"
        readers = [self._client([a], f"reader-{r}") for r, a in enumerate(self.addresses)]
        try:
            while True:
                replicas = {name: await _read_all(readers, name) for name in self.names()}
                for s in subscribers:
                    s.final = s.local() if s.live.error is None else None
                    if s.live.error is not None:
                        s.error = f"stopped syncing: {s.live.error!r}"
                if _agree(replicas, subscribers) or time.monotonic() > deadline:
                    return replicas
                await asyncio.sleep(0.2)
        finally:
            for reader in readers:
                await reader.close()


async def _again(call: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
    """call(), again after a failure until within seconds have passed (the faults may
    have begun before the run is set up)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except (AccordError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _start(s: Subscriber) -> None:
    """Start s's synced document, with a new one after each failure."""

    async def attempt() -> None:
        if s.live.error is not None or s.live.info is not None:  # a failed start: anew
            s.live = s.client.sessions.synced(s.document, create=False)
        await s.live.start()

    await _again(attempt)


async def _read_all(readers: list[AsyncClient], name: str) -> list[list[Any] | None]:
    out: list[list[Any] | None] = []
    for reader in readers:
        try:
            state = await reader.sessions.read(name)
            out.append(list(state.json.get(ROOT) or []))
        except AccordError:
            out.append(None)
    return out


def _agree(replicas: dict[str, list[list[Any] | None]], subscribers: list[Subscriber]) -> bool:
    for name, readings in replicas.items():
        if readings[0] is None or any(r != readings[0] for r in readings[1:]):
            return False
        if any(s.final != readings[0] for s in subscribers if s.document == name):
            return False
    return True


async def _settled(
    recorder: Recorder,
    write: Callable[[str, float | None], Awaitable[T]],
    first_timeout: float | None = None,
) -> T:
    """write(request_id, timeout), sent again with the same request_id after a lost
    answer; the first attempt with first_timeout when given (a hasty one), the others
    with the client's timeout (None)."""
    request_id = uuid.uuid4().hex
    for attempt in range(RESENDS):
        try:
            return await write(request_id, first_timeout if attempt == 0 else None)
        except (DeadlineExceededError, UnavailableError):
            if attempt == RESENDS - 1:
                raise
            recorder.counts["resent"] += 1
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def check(run: SessionRun) -> list[str]:
    """Every problem with the settled documents (see the module docstring)."""
    problems: list[str] = []
    for name in run.documents:
        acknowledged = run.acknowledged[name]
        maybe = run.indeterminate[name]
        refused = run.refused.get(name, set())
        readings = run.replicas[name]
        for r, edits in enumerate(readings):
            where = f"{name} on replica {r}"
            if edits is None:
                problems.append(f"{where}: could not be read")
                continue
            problems += _problems(where, edits, acknowledged, maybe, refused)
        first = next((e for e in readings if e is not None), None)
        for r, edits in enumerate(readings[1:], start=1):
            if edits is not None and first is not None and edits != first:
                problems.append(
                    f"{name}: replica {r} disagrees with replica 0: {_diff(first, edits)}"
                )
        for s in run.subscribers:
            if s.document != name:
                continue
            if s.final is None:
                problems.append(f"{s.name}: {s.error or 'no document'}")
                continue
            problems += _problems(s.name, s.final, acknowledged, maybe, refused)
            if first is not None and s.final != first:
                problems.append(f"{s.name} diverged from the replicas: {_diff(first, s.final)}")
    problems += _stale_reads(run)
    return problems


def _stale_reads(run: SessionRun) -> list[str]:
    """Reads during the run: each holds every edit acknowledged before it was called (a
    read on one replica sees what another acknowledged), and nothing refused or twice."""
    problems: list[str] = []
    for read in run.reads:
        where = f"a read of {read.document} on replica {read.replica} at {read.call:.3f}"
        acknowledged = run.acknowledged_at.get(read.document, {})
        present = set(read.edits)
        before = sorted(e for e, ret in acknowledged.items() if ret < read.call)
        lacks = [e for e in before if e not in present]
        if lacks:
            problems.append(
                f"{where}: lacks {len(lacks)} edits acknowledged before it: {lacks[:5]} "
                f"(the earliest at {min(acknowledged[e] for e in lacks):.3f})"
            )
        refused = run.refused.get(read.document, set())
        counts = Counter(read.edits)
        problems += [f"{where}: refused edit {e!r} present" for e in present & refused]
        problems += [f"{where}: {e!r} present {n} times" for e, n in counts.items() if n > 1]
    return problems


def _problems(
    where: str, edits: list[Any], acknowledged: set[str], maybe: set[str], refused: set[str]
) -> list[str]:
    out: list[str] = []
    present = Counter(edits)
    for element, times in sorted(present.items(), key=str):
        if times > 1:
            out.append(f"{where}: {element!r} present {times} times")
        if element in refused:
            out.append(f"{where}: refused edit {element!r} present")
        elif element not in acknowledged and element not in maybe:
            out.append(f"{where}: {element!r} is no edit of the run")
    missing = sorted(acknowledged - set(present))
    if missing:
        out.append(f"{where}: {len(missing)} acknowledged edits missing: {missing[:5]}")
    return out


def _diff(expected: list[Any], got: list[Any]) -> str:
    lacks, extra = (
        set(map(str, expected)) - set(map(str, got)),
        set(map(str, got)) - set(map(str, expected)),
    )
    if not lacks and not extra:
        return "same elements in another order"
    return (
        f"lacks {sorted(lacks)[:5]} ({len(lacks)}), has besides {sorted(extra)[:5]} ({len(extra)})"
    )
