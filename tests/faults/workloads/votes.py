"""The votes workload (issue 16, workload 3): many voters cast through every replica, with
retries, while faults are injected; every vote must end with exactly one decision that
counts exactly the acknowledged ballots (the checker is votes_check.py).

A run is rounds of votes, one after another until told to stop (at least one; at most
`rounds`). A round proposes `votes` votes, each with its own electorate of 8-20 voters
(weight 1), of two kinds, alternating:
- early: MAJORITY of the electorate between "yes" and "no", most voters choosing "yes",
  so the outcome is certain (and decided) before every voter has cast; the voters after
  it are refused (VOTE_CLOSED);
- deadline: MAJORITY of the ballots cast among three options chosen at random, which
  stays uncertain until the deadline decides; voters cast until a little past it, so the
  last ones race the replicas' close timers.
Each voter casts once, at a random moment of the round, through one of a few clients
(every replica, in rotated orders; voters are views of them, AsyncVotes.as_agent), with
one request_id, sent again on UNAVAILABLE or DEADLINE_EXCEEDED (the service answers a
retried request_id with its first outcome); one Cast in ten is hasty instead (a deadline
of a few milliseconds, never resent), so every run has indeterminate ballots. Readers
Get the votes through the rotated clients during the round; two watchers per vote (each
starting on another replica) follow it to its decision; at the end of the round each
vote is read through every replica on its own (direct links; the faults are healed by
then) until decided.

Everything goes into the Recorder's history, with the vote id as partition:
- ("propose", kind, voters, options, of_electorate, period_ms): output ("ok", revision);
- ("cast", voter, choice): ("ok", revision, decision or None) when acknowledged,
  ("refused", reason) when refused (the recorder counts it failed; the history keeps it
  for the checker), INDETERMINATE when still unanswered after its resends;
- ("get", reader): ("open" or "decided", decision or None, ballots), a read;
- ("watch", watcher): (ballots seen in order, decision or None), a read.
A decision is (outcome, option, decided_by, revision, last_ballot_revision, tally), the
tally ((option, voters) per option, participated); a ballot (voter, choice, revision).

Error handling: a proposal that cannot be made after its retries raises (the run is
void); every other error reaches the Recorder, which classifies it (an unanswered read
is left out of the history).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass

from accord.client import AsyncClient
from accord.client.errors import AccordError, DeadlineExceededError, UnavailableError
from accord.client.retry import RetryPolicy
from accord.client.votes import (
    AsyncVotes,
    BallotEvent,
    CastResult,
    DecisionEvent,
    Rule,
    VoteStateEvent,
)
from accord.v1 import votes_pb2
from tests.faults.recorder import Recorder, ambiguous
from tests.harness import make_client
from tests.linearizability import Operation

# Attempts of one Cast with one request_id before it is left indeterminate.
RESENDS = 3
# The share of Casts made hasty: a deadline of a few milliseconds, never resent.
HASTY = 0.1
EARLY, DEADLINE = "early", "deadline"
OPTIONS = {EARLY: ("yes", "no"), DEADLINE: ("a", "b", "c")}


def decision_of(d: votes_pb2.Decision) -> tuple[Hashable, ...]:
    tally = tuple((o.option, o.voters) for o in d.tally.options)
    return (
        votes_pb2.Outcome.Name(d.outcome).removeprefix("OUTCOME_"),
        d.option,
        votes_pb2.DecidedBy.Name(d.decided_by).removeprefix("DECIDED_BY_"),
        d.revision,
        d.last_ballot_revision,
        (tally, d.tally.participated),
    )


def ballot_of(b: votes_pb2.Ballot) -> tuple[str, str, int]:
    return (b.voter, b.choice, b.revision)


@dataclass(frozen=True)
class Planned:
    """One vote of a round: its id, kind, voters, period, and each voter's choice and
    moment (seconds from the round's start)."""

    vote_id: str
    kind: str
    voters: tuple[str, ...]
    period: float
    casts: tuple[tuple[str, str, float, bool], ...]  # voter, choice, moment, hasty


@dataclass(frozen=True)
class VotesWorkload:
    addresses: list[str]
    namespace: str
    seed: int
    votes: int = 4
    clients: int = 3
    # Seconds from a round's start to its votes' deadlines (each vote its own, within).
    period: tuple[float, float] = (5.0, 7.0)
    timeout: float = 2.0
    # direct addresses for the end-of-round reads, one replica at a time (default: addresses)
    replicas: tuple[str, ...] = ()
    # At most this many rounds (None: until stopped).
    rounds: int | None = None

    def _client(self, i: int, addresses: list[str] | None = None) -> AsyncClient:
        addresses = addresses or self.addresses
        turn = i % len(addresses)
        ordered = addresses[turn:] + addresses[:turn]
        retry = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5)
        return make_client(ordered, self.namespace, f"votes-{i}", timeout=self.timeout, retry=retry)

    def plan(self, round_: int) -> list[Planned]:
        rng = random.Random(f"{self.seed}/votes/{round_}")
        planned = []
        for v in range(self.votes):
            kind = EARLY if v % 2 == 0 else DEADLINE
            vote_id = f"r{round_}.v{v}.{uuid.uuid4().hex[:6]}"
            voters = tuple(f"voter-{v}-{j}" for j in range(rng.randint(8, 20)))
            period = rng.uniform(*self.period)
            casts = []
            for voter in voters:
                if kind == EARLY:
                    choice = "yes" if rng.random() < 0.8 else "no"
                    moment = rng.uniform(0, period - 1)
                else:
                    choice = rng.choice(OPTIONS[DEADLINE])
                    moment = rng.uniform(0, period + 1.5)
                casts.append((voter, choice, moment, rng.random() < HASTY))
            planned.append(Planned(vote_id, kind, voters, period, tuple(casts)))
        return planned

    async def run(self, recorder: Recorder, stop: asyncio.Event) -> None:
        """Rounds until stop is set (at least one)."""
        clients = [self._client(i) for i in range(self.clients)]
        try:
            round_ = 0
            while True:
                await self._round(round_, clients, recorder)
                round_ += 1
                if stop.is_set() or round_ == self.rounds:
                    return
        finally:
            for c in clients:
                await c.close()

    async def _round(self, round_: int, clients: list[AsyncClient], recorder: Recorder) -> None:
        planned = self.plan(round_)
        start = time.monotonic()
        await asyncio.gather(*(self._propose(clients[0], p, recorder) for p in planned))
        ends = start + max(p.period for p in planned) + 30  # the watchers' patience
        watchers = [
            asyncio.create_task(
                self._watch(clients[w % len(clients)], p.vote_id, w, ends, recorder)
            )
            for p in planned
            for w in range(2)
        ]
        done = asyncio.Event()
        readers = [
            asyncio.create_task(self._read(c, r, planned, recorder, done))
            for r, c in enumerate(clients)
        ]
        casting = [
            self._cast(
                clients[j % len(clients)].votes.as_agent(voter),
                j,
                p.vote_id,
                voter,
                choice,
                start + moment,
                hasty,
                recorder,
            )
            for p in planned
            for j, (voter, choice, moment, hasty) in enumerate(p.casts)
        ]
        await asyncio.gather(*casting)
        done.set()
        await asyncio.gather(*readers)
        await self._settle(planned, recorder)
        await asyncio.gather(*watchers)

    async def _propose(self, c: AsyncClient, p: Planned, recorder: Recorder) -> None:
        of_electorate = p.kind == EARLY
        rule = Rule.majority(of_electorate=of_electorate)
        period_ms = round(p.period * 1000)
        request_id = uuid.uuid4().hex
        input = ("propose", p.kind, p.voters, OPTIONS[p.kind], of_electorate, period_ms)
        for attempt in range(10):
            call = time.monotonic()
            try:
                vote = await c.votes.propose(
                    f"{p.kind} vote {p.vote_id}?",
                    list(OPTIONS[p.kind]),
                    voters=list(p.voters),
                    rule=rule,
                    voting_period=p.period,
                    vote_id=p.vote_id,
                    request_id=request_id,
                )
            except AccordError as error:
                if not ambiguous(error):
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))  # again, with the same ids
                continue
            # Setup, not under test: in the history for the checker, not in the counts.
            output = ("ok", vote.created_revision)
            recorder.operations.append(
                Operation(-1, input, output, call, time.monotonic(), p.vote_id)
            )
            return
        raise RuntimeError(f"vote {p.vote_id} could not be proposed")

    async def _cast(
        self,
        votes: AsyncVotes,
        client: int,
        vote_id: str,
        voter: str,
        choice: str,
        at: float,
        hasty: bool,
        recorder: Recorder,
    ) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        request_id = uuid.uuid4().hex
        input = ("cast", voter, choice)
        call = time.monotonic()
        refused: AccordError | None = None
        async with recorder.op(client, input, vote_id) as done:
            try:
                if hasty:  # often still in flight when given up: it may apply, or not
                    timeout = random.Random(request_id).uniform(0.002, 0.03)
                    result = await votes.cast(
                        vote_id, choice, request_id=request_id, timeout=timeout
                    )
                else:
                    result = await self._resend(votes, vote_id, choice, request_id, recorder)
            except AccordError as error:
                if not ambiguous(error):
                    refused = error
                raise
            decision = decision_of(result.decision) if result.decision is not None else None
            done.output = ("ok", result.ballot.revision, decision)
        if refused is not None:  # the recorder counted it failed; the checker needs it
            recorder.operations.append(
                Operation(
                    client,
                    input,
                    ("refused", refused.reason or type(refused).__name__),
                    call,
                    time.monotonic(),
                    vote_id,
                )
            )

    async def _resend(
        self, votes: AsyncVotes, vote_id: str, choice: str, request_id: str, recorder: Recorder
    ) -> CastResult:
        for attempt in range(RESENDS):
            try:
                result = await votes.cast(vote_id, choice, request_id=request_id)
            except (DeadlineExceededError, UnavailableError):
                if attempt == RESENDS - 1:
                    raise
                recorder.counts["resent"] += 1
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            if result.replayed:
                recorder.counts["replayed"] += 1
            return result
        raise AssertionError("unreachable")

    async def _read(
        self,
        c: AsyncClient,
        reader: int,
        planned: list[Planned],
        recorder: Recorder,
        done: asyncio.Event,
    ) -> None:
        rng = random.Random(f"{self.seed}/reader/{reader}")
        while not done.is_set():
            await self._get(c, f"reader-{reader}", rng.choice(planned).vote_id, recorder)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), rng.uniform(0.2, 0.5))

    async def _get(self, c: AsyncClient, reader: str, vote_id: str, recorder: Recorder) -> bool:
        """One Get, recorded; whether it found the vote decided."""
        decided = False
        async with recorder.op(-2, ("get", reader), vote_id, mutates=False) as done:
            vote = await c.votes.get(vote_id)
            decided = vote.status == votes_pb2.VOTE_STATUS_DECIDED
            done.output = (
                "decided" if decided else "open",
                decision_of(vote.decision) if decided else None,
                tuple(ballot_of(b) for b in vote.ballots),
            )
        return decided

    async def _settle(self, planned: list[Planned], recorder: Recorder) -> None:
        """Each vote read through each replica on its own until decided (at most 30 s)."""
        replicas = list(self.replicas or self.addresses)
        for i, address in enumerate(replicas):
            async with make_client(
                [address], self.namespace, "votes-final", timeout=self.timeout
            ) as c:
                for p in planned:
                    give_up = time.monotonic() + 30
                    while not await self._get(c, f"replica-{i}", p.vote_id, recorder):
                        if time.monotonic() > give_up:
                            break
                        await asyncio.sleep(0.3)

    async def _watch(
        self, c: AsyncClient, vote_id: str, watcher: int, ends: float, recorder: Recorder
    ) -> None:
        """Follow the vote from its state to its decision (until ends, at most)."""
        seen: list[tuple[str, str, int]] = []
        decision: tuple[Hashable, ...] | None = None
        async with recorder.op(-3, ("watch", watcher), vote_id, mutates=False) as done:
            events = c.votes.watch(vote_id)
            try:
                async with asyncio.timeout(max(0.0, ends - time.monotonic())):
                    async for event in events:
                        if isinstance(event, VoteStateEvent):
                            seen += [ballot_of(b) for b in event.vote.ballots]
                        elif isinstance(event, BallotEvent):
                            seen.append(ballot_of(event.ballot))
                        elif isinstance(event, DecisionEvent):
                            decision = decision_of(event.decision)
                            break
            except TimeoutError:
                pass  # recorded without a decision: the checker says so
            finally:
                await events.aclose()
            done.output = (tuple(seen), decision)
