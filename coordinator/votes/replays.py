"""A retried Cast (a request_id answered before) gets its first answer.

The answer is the one stored in the request_id's record, or, when none was stored (a
ballot that cannot change is its own answer; or the first attempt's replica died before
storing it), rebuilt from the ballot's key, which nothing rewrites while its vote exists.

Error handling: a first attempt that was refused is refused again (its stored failure, or
CONDITION_FAILED when none was stored); a ballot stored and since deleted with its vote
(after the vote's retention) is NOT_FOUND.
"""

from __future__ import annotations

from google.rpc import status_pb2

from accord.coordinator.substrate.errors import ConditionFailed, StoredFailure
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.idempotency import Prior
from accord.coordinator.substrate.txn import read
from accord.coordinator.votes.model import not_found
from accord.v1 import votes_pb2


async def replay_cast(
    etcd: Etcd, vote_id: str, key: bytes, prior: Prior
) -> tuple[int, votes_pb2.Ballot, bool]:
    """The first answer to the Cast prior recorded, whose ballot is at key: (revision,
    ballot, True)."""
    record = prior.record
    if record.answer:
        if not record.applied:
            raise StoredFailure(status_pb2.Status.FromString(record.answer))
        answer = votes_pb2.CastResponse.FromString(record.answer)
        return prior.revision, answer.ballot, True
    found = await etcd.range(read(key))
    if record.applied and found.kvs:
        ballot = votes_pb2.Ballot.FromString(found.kvs[0].value)
        ballot.revision = found.kvs[0].mod_revision
        return prior.revision, ballot, True
    if record.applied:  # stored, then deleted with its vote after the retention
        raise not_found(vote_id)
    raise ConditionFailed(
        "the first attempt with this request_id was refused (the vote was closed, the "
        "ballot already cast, or the fence lost); read the vote for its state",
        metadata={"vote_id": vote_id},
    )
