"""Runs of the effect ledger: a run's status, its counts, its journal, and listings.

A run's record (status, who created it, who changed it last) is written by its first
effect's Begin and by SetRunStatus and Compensate; nothing on the hot path writes it (a
Begin re-attaches it to the retention lease only when it hangs on an older one). Its
counts are computed on read from count-only ranges of the run's marker keys (keyspace
RunKeys), one etcd transaction for all of them, so parallel steps of one run never
contend on one key:
  effects = journal entries; running = live claims; succeeded, failed = s, f markers;
  in_doubt = open markers - running - aborted; compensations = registrations;
  compensated = compensation effects with an outcome.
resume_at is the open marker created first (the least key among those created at that
revision, as the journal orders them): markers are created when their effect begins and
deleted when it gets an outcome, so that is the first effect in journal order without
one. A run whose status is COMPENSATING reads COMPENSATED once every registered
compensation has an outcome (computed on read, so no write decides it).

The journal is the order effects began: their journal entries' create_revision, ties
(effects begun in one group-commit batch) broken by key. Cost: a page reads the run's
journal keys (keys only; at most --effects-max-per-run) and the page's records in
transactions of at most PER_TXN effects; a namespace listing reads a page of records in
key order. A page with a state filter holds the matching effects among the `limit` it
looked at, so it may be short (even empty) before the end.

Error handling: an unknown run is NOT_FOUND; a status other than FINISHED, FAILED or
RUNNING, a limit out of range, an unknown state, or a page token this service did not
issue is INVALID_ARGUMENT; nothing is written then.
"""

from __future__ import annotations

import base64
import binascii
import builtins
from collections.abc import Sequence
from dataclasses import dataclass

from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator.effects import records
from accord.coordinator.effects.ledger import Ledger
from accord.coordinator.effects.records import (
    ABORTED_MARK,
    FAILED_MARK,
    OPEN,
    RUNNING,
    SUCCEEDED_MARK,
    actor,
    effect_of,
)
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    BackendUnavailable,
    FieldViolation,
    NotFound,
    invalid,
    require,
)
from accord.coordinator.substrate.limits import check_enum
from accord.coordinator.substrate.pages import PageBudget
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
    Range,
    Txn,
    count,
    first_kv,
    get,
    mod_is,
    put,
    read,
    txn,
)
from accord.v1 import effects_pb2

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PER_TXN = 60  # effects read per etcd transaction (a record and a claim each: 120 ops)
SETTABLE = frozenset(
    {
        effects_pb2.RUN_STATUS_FINISHED,
        effects_pb2.RUN_STATUS_FAILED,
        effects_pb2.RUN_STATUS_RUNNING,
    }
)


@dataclass(frozen=True, slots=True)
class Page:
    revision: int
    effects: list[effects_pb2.Effect]
    token: str


def unknown_run(run_id: str) -> NotFound:
    ns = calls.current.get().namespace
    return NotFound(
        f"run {run_id!r} does not exist in namespace {ns!r} (no effect began in it, or it "
        "was deleted after its retention)",
        metadata={"run_id": run_id},
    )


def check_limit(limit: int) -> list[FieldViolation]:
    if not 0 <= limit <= MAX_LIMIT:
        return [FieldViolation("limit", f"must be between 0 and {MAX_LIMIT}")]
    return []


class Runs:
    def __init__(self, ledger: Ledger) -> None:
        self._l = ledger
        self._s = ledger.s

    async def run(self, run_id: str) -> tuple[int, effects_pb2.Run, KeyValue]:
        """The run with its counts, and its record as read; NOT_FOUND when unknown."""
        run = self._l.run(run_id)
        resume = read(run.marker(OPEN), prefix=True, by_creation=True, keys_only=True)
        resume.limit = 1
        found = await self._s.etcd.txn(
            txn(
                then=[
                    get(run.record),
                    count(run.journal(), prefix=True),
                    count(run.claim(), prefix=True),
                    count(run.marker(OPEN), prefix=True),
                    count(run.marker(ABORTED_MARK), prefix=True),
                    count(run.marker(SUCCEEDED_MARK), prefix=True),
                    count(run.marker(FAILED_MARK), prefix=True),
                    count(run.compensation(), prefix=True),
                    count(run.compensated(), prefix=True),
                    _range_op(resume),
                ]
            ),
            retry=True,
        )
        record, *counts, first_open = found.responses
        raw = first_kv(record)
        if raw is None:
            raise unknown_run(run_id)
        effects, running, opened, aborted, succeeded, failed, comps, compensated = (
            int(c.response_range.count) for c in counts
        )
        out = effects_pb2.Run.FromString(raw.value)
        out.effects, out.running, out.succeeded, out.failed = effects, running, succeeded, failed
        out.in_doubt = max(0, opened - running - aborted)
        out.compensations, out.compensated = comps, compensated
        kvs = first_open.response_range.kvs
        if kvs:
            out.resume_at = await self._first_of(run.marker(OPEN), kvs[0].create_revision)
        if out.status == effects_pb2.RUN_STATUS_COMPENSATING and comps and compensated >= comps:
            out.status = effects_pb2.RUN_STATUS_COMPENSATED
        return int(found.header.revision), out, raw

    async def _first_of(self, prefix: bytes, revision: int) -> str:
        """The least key under prefix created at revision: effects begun in one
        group-commit batch share a revision, and the journal orders them by key."""
        request = read(prefix, prefix=True, keys_only=True)
        request.min_create_revision = request.max_create_revision = revision
        request.limit = 1  # in key order, after the revision filter
        found = await self._s.etcd.range(request)
        return str(found.kvs[0].key[len(prefix) :].decode()) if found.kvs else ""

    async def get_run(
        self, run_id: str, limit: int, page_token: str
    ) -> tuple[int, effects_pb2.Run, Page]:
        require(records.check_name("run_id", run_id) + check_limit(limit))
        revision, run, _ = await self.run(run_id)
        page = await self.journal(run_id, (), limit, page_token)
        return revision, run, page

    async def set_status(
        self, run_id: str, status: effects_pb2.RunStatus.ValueType
    ) -> tuple[int, effects_pb2.Run]:
        violations = records.check_name("run_id", run_id)
        if status not in SETTABLE:
            violations.append(
                FieldViolation(
                    "status", "must be FINISHED, FAILED or RUNNING (Compensate sets COMPENSATING)"
                )
            )
        require(violations)
        await self.write_status(run_id, status)
        revision, run, _ = await self.run(run_id)
        return revision, run

    async def write_status(self, run_id: str, status: effects_pb2.RunStatus.ValueType) -> None:
        """Set the run's stored status (unchanged: nothing written); NOT_FOUND if unknown."""
        key = self._l.run(run_id).record
        for _ in range(8):
            found = await self._s.etcd.range(read(key))
            if not found.kvs:
                raise unknown_run(run_id)
            raw = found.kvs[0]
            record = effects_pb2.Run.FromString(raw.value)
            if record.status == status:
                return
            record.status = status
            record.updated.CopyFrom(actor(0))
            value = record.SerializeToString()

            def build(retention: int, value: bytes = value, mod: int = raw.mod_revision) -> Txn:
                return txn(when=[mod_is(key, mod)], then=[put(key, value, lease=retention)])

            committed = await self._l.writes.commit(build, retained=True)
            if committed.response.succeeded:
                return
        raise BackendUnavailable(f"run {run_id!r} kept changing while its status was set")

    # --- listings -----------------------------------------------------------------------

    async def list(
        self,
        states: Sequence[int],
        run_id: str,
        limit: int,
        page_token: str,
    ) -> Page:
        violations = check_limit(limit)
        if run_id:
            violations += records.check_name("run_id", run_id)
        for i, state in enumerate(states[:16]):
            violations += check_enum(f"states[{i}]", state, effects_pb2.EffectState.DESCRIPTOR)
        require(violations)
        if run_id:
            return await self.journal(run_id, states, limit, page_token)
        return await self._by_key(states, limit, page_token)

    async def journal(
        self, run_id: str, states: Sequence[int], limit: int, page_token: str
    ) -> Page:
        """A page of the run's effects in the order they began."""
        after = _decode(page_token)
        run = self._l.run(run_id)
        prefix = run.journal()
        entries = await self._s.etcd.range(read(prefix, prefix=True, keys_only=True))
        order = sorted((kv.create_revision, kv.key[len(prefix) :].decode()) for kv in entries.kvs)
        if after is not None:
            order = [e for e in order if e > after]
        wanted = order[: limit or DEFAULT_LIMIT]
        effects, last = await self._records([key for _, key in wanted], run_id, states)
        token = ""
        if last < len(wanted) or len(order) > len(wanted):
            end = wanted[last - 1] if last else None
            token = _encode(end) if end is not None else page_token
        return Page(int(entries.header.revision), effects, token)

    async def _by_key(self, states: Sequence[int], limit: int, page_token: str) -> Page:
        after = _decode(page_token, key_only=True)
        ns = calls.current.get().namespace
        prefix = self._s.keys.effects_prefix(ns)
        request = read(prefix, prefix=True, keys_only=True)
        if after is not None:
            request.key = prefix + after[1].encode() + b"\x00"
        request.limit = limit or DEFAULT_LIMIT
        found = await self._s.etcd.range(request)
        keys = [kv.key[len(prefix) :].decode() for kv in found.kvs]
        effects, last = await self._records(keys, None, states)
        token = ""
        if last < len(keys) or found.more:
            token = _encode((0, keys[last - 1])) if last else page_token
        return Page(int(found.header.revision), effects, token)

    async def _records(
        self, keys: builtins.list[str], run_id: str | None, states: Sequence[int]
    ) -> tuple[builtins.list[effects_pb2.Effect], int]:
        """The effects of keys (those in states, if any), read PER_TXN at a time, and how
        many keys the page covers (fewer than all when the page's bytes ran out)."""
        budget = PageBudget()
        wanted = set(states)
        out: builtins.list[effects_pb2.Effect] = []
        covered = 0
        for start in range(0, len(keys), PER_TXN):
            chunk = keys[start : start + PER_TXN]
            ops = []
            for key in chunk:
                ops.append(get(self._l.effect(key)))
                if run_id is not None:
                    ops.append(get(self._l.run(run_id).claim(key)))
            found = await self._s.etcd.txn(txn(then=ops), retry=True)
            step = 2 if run_id is not None else 1
            for i, key in enumerate(chunk):
                raw = first_kv(found.responses[i * step])
                if raw is None:  # gone since the journal was read (retention)
                    covered += 1
                    continue
                if run_id is not None:
                    effect = effect_of(raw, first_kv(found.responses[i * step + 1]))
                else:
                    effect = effect_of(raw, None, claim_read=False)
                    if effect.state == RUNNING:
                        claim = await self._s.etcd.range(
                            read(self._l.run(effect.run_id).claim(key))
                        )
                        effect = effect_of(raw, claim.kvs[0] if claim.kvs else None)
                if not wanted or effect.state in wanted:
                    if not budget.take(effect):
                        return out, covered
                    out.append(effect)
                covered += 1
        return out, covered


def _range_op(request: Range) -> Op:
    return rpc.RequestOp(request_range=request)


def _encode(position: tuple[int, str]) -> str:
    revision, key = position
    return f"{revision}.{base64.urlsafe_b64encode(key.encode()).decode()}"


def _decode(token: str, *, key_only: bool = False) -> tuple[int, str] | None:
    """(create revision, key) after which a page starts; None for the first page."""
    if not token:
        return None
    revision, _, key = token.partition(".")
    try:
        position = (int(revision), base64.urlsafe_b64decode(key.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("page_token", "is not a token this service issued") from None
    if position[0] < 0 or not position[1] or (key_only and position[0]):
        raise invalid("page_token", "is not a token this service issued")
    return position
