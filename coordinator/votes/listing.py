"""Listing votes: pages of vote records in id order, with how many ballots each open
vote has, counted by etcd without reading them.

A page holds at most `limit` votes and stops before the page budget (substrate/pages.py):
a vote names up to 5,000 voters, so 1,000 records could reach tens of MiB.

Error handling: a bad limit, status or `after` is INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import FieldViolation, require
from accord.coordinator.substrate.pages import PageBudget
from accord.coordinator.substrate.txn import Op, count, read, txn
from accord.coordinator.votes import spec as vote_spec
from accord.coordinator.votes.model import parse_record
from accord.v1 import votes_pb2

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


class VoteListing:
    def __init__(self, substrate: Substrate) -> None:
        self._s = substrate
        self._etcd = substrate.etcd
        self._keys = substrate.keys

    async def list_votes(
        self, status: votes_pb2.VoteStatus.ValueType, limit: int, after: str
    ) -> tuple[int, list[votes_pb2.Vote], bool]:
        violations = vote_spec.check_vote_id("after", after, allow_empty=True)
        if not 0 <= limit <= MAX_LIST_LIMIT:
            violations.append(FieldViolation("limit", f"must be 0-{MAX_LIST_LIMIT}"))
        if status not in votes_pb2.VoteStatus.values():
            violations.append(FieldViolation("status", f"unknown status {status}"))
        require(violations)
        limit = limit or DEFAULT_LIST_LIMIT
        prefix = self._keys.votes_prefix(calls.current.get().namespace)
        request = read(prefix, prefix=True)
        if after:
            request.key = prefix + after.encode() + b"\x00"
        request.limit = MAX_LIST_LIMIT
        out: list[votes_pb2.Vote] = []
        budget = PageBudget()  # a page fits a standard client, whatever limit says
        while True:
            found = await self._etcd.range(request)
            revision = request.revision = request.revision or int(found.header.revision)
            more = False
            for raw in found.kvs:
                vote = parse_record(raw)
                if status and vote.status != status:
                    continue
                if len(out) == limit or not budget.take(vote):
                    more = True
                    break
                out.append(vote)
            if more or not found.more:
                break
            request.key = found.kvs[-1].key + b"\x00"
        await self._count_ballots(out, revision)
        return revision, out, more

    async def _count_ballots(self, votes: Sequence[votes_pb2.Vote], revision: int) -> None:
        """Set ballots_cast on the open votes listed: etcd counts each one's ballots at the
        listing's revision, less those of veto holders outside its electorate, and sends
        only the numbers (a page costs a few read-only Txns, never its ballots)."""
        ns = calls.current.get().namespace
        reads: list[tuple[votes_pb2.Vote, int, Op]] = []  # (vote, +1 or -1, count op)
        for vote in votes:
            if vote.status != votes_pb2.VOTE_STATUS_OPEN:
                continue
            vote.ballots_cast = 0
            ballots = self._keys.ballots_prefix(ns, vote.id)
            voters = {v.agent_id for v in vote.voters}
            reads.append((vote, 1, count(ballots, prefix=True, revision=revision)))
            reads += [
                (vote, -1, count(ballots + holder.encode(), revision=revision))
                for holder in vote.spec.veto_holders
                if holder not in voters
            ]
        step = self._s.limits.max_txn_ops
        for start in range(0, len(reads), step):
            chunk = reads[start : start + step]
            found = await self._etcd.txn(txn(then=[op for _, _, op in chunk]), retry=True)
            for (vote, sign, _), answer in zip(chunk, found.responses, strict=True):
                vote.ballots_cast += sign * answer.response_range.count
