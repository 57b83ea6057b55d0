"""A vote's ballots a page at a time, so Get and Watch fit a standard client: pure, no I/O.

A vote names up to 5,000 voters, each ballot carrying up to 4 KiB of rationale: all of
them can reach tens of MiB, past the 4 MiB a standard gRPC client accepts. The record,
the tally and the decision always come whole (each is bounded far below a page); the
ballots come in a fixed order (revision, then voter) and a page takes them while they fit
the page budget (substrate/pages.py) beside the rest of the vote. A page is named by the
snapshot's revision and the number of ballots before it; ballots_omitted says how many
of the vote's ballots the message leaves out.

Error handling: a page token this module did not make is INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

from accord.coordinator.substrate.errors import invalid
from accord.coordinator.substrate.pages import MAX_PAGE_BYTES, PageBudget
from accord.v1 import votes_pb2


def in_order(ballots: Sequence[votes_pb2.Ballot]) -> list[votes_pb2.Ballot]:
    """Ballots in the order pages list them: by revision (one group commit may store
    several at one revision), then by voter."""
    return sorted(ballots, key=lambda b: (b.revision, b.voter))


def page(vote: votes_pb2.Vote, offset: int = 0) -> tuple[votes_pb2.Vote, int]:
    """vote (whole, its ballots in_order) with only the ballots of the page starting at
    offset, and where the next page starts (0: this is the last)."""
    ballots = list(vote.ballots)
    if offset and offset >= len(ballots):
        raise invalid("page_token", "is not a token this service issued for this vote")
    out = votes_pb2.Vote()
    out.CopyFrom(vote)
    out.ClearField("ballots")
    budget = PageBudget(MAX_PAGE_BYTES - out.ByteSize())
    end = offset
    while end < len(ballots) and budget.take(ballots[end]):
        end += 1
    out.ballots.extend(ballots[offset:end])
    out.ballots_omitted = len(ballots) - (end - offset)
    return out, end if end < len(ballots) else 0
