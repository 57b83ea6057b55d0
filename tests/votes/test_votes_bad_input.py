"""Bad vote input, over raw gRPC against real replicas: malformed proposals, ballots and
reads get INVALID_ARGUMENT with a BadRequest naming every bad field; ineligible, closed,
repeated, unknown and unpermitted calls get their own codes and details; none of them
stores anything (etcd's revision, the vote list and every ballot stay as they were);
and both replicas keep serving afterwards."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from accord.v1 import common_pb2, leases_pb2, leases_pb2_grpc, votes_pb2, votes_pb2_grpc
from accord.v1.votes_pb2 import (
    CastRequest,
    Electorate,
    LabelSelector,
    ProposeRequest,
    Quorum,
    Ratio,
    Rule,
    Voter,
    Voters,
    VotesCancelRequest,
    VotesGetRequest,
    VotesListRequest,
    VoteSpec,
    VotesWatchRequest,
)
from tests.harness import (
    AUTH_REQUIRED,
    Coordinator,
    EtcdMember,
    Metadata,
    Stubs,
    grant_labels,
    identity,
)

HOUR_MS = 3_600_000  # long enough that no deadline timer fires during a test
YEAR_SECONDS = 365 * 24 * 3600
PROPOSER = "paula"
VOTERS = ("alice", "bob", "carol")
VETO_HOLDER = "vera"  # not a voter; while she has not voted, nothing decides early
ADMIN = "admin"  # the replicas' default admin agent id
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# --- calling and decoding ------------------------------------------------------------


@dataclass
class Failure:
    """A refused call, decoded from its google.rpc.Status details."""

    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo
    violations: list[tuple[str, str]]
    others: list[any_pb2.Any] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.info.reason

    @property
    def fields(self) -> list[str]:
        return [f for f, _ in self.violations]

    def detail(self, kind: type[Message]) -> Any:
        found = [d for d in self.others if d.Is(kind.DESCRIPTOR)]
        assert len(found) == 1, f"expected one {kind.__name__} detail, got {self.others}"
        message = kind()
        found[0].Unpack(message)
        return message


def decode(error: grpc.aio.AioRpcError) -> Failure:
    status = rpc_status.from_call(error)  # also checks code and message match the status
    assert status is not None, f"no google.rpc.Status in {error.code()}: {error.details()}"
    infos, bad, others = [], [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            bad.append(request)
        else:
            others.append(detail)
    assert len(infos) == 1, f"expected one ErrorInfo: {status}"
    assert infos[0].domain == "accord.v1"
    assert len(bad) <= 1
    violations = [(v.field, v.description) for b in bad for v in b.field_violations]
    return Failure(error.code(), status.message, infos[0], violations, others)


@dataclass
class Api:
    """Raw Votes (and Leases) stubs on each replica, for one namespace."""

    namespace: str
    etcd: EtcdMember
    votes: list[votes_pb2_grpc.VotesStub]
    leases: list[leases_pb2_grpc.LeasesStub]

    def metadata(self, agent: str | None) -> Metadata:
        return identity(self.namespace, agent)

    async def call(
        self, method: str, request: Message, *, agent: str | None = PROPOSER, replica: int = 0
    ) -> Any:
        rpc = getattr(self.votes[replica], method)
        return await rpc(request, metadata=self.metadata(agent), timeout=15)

    async def fails(
        self, method: str, request: Message, *, agent: str | None = PROPOSER, replica: int = 0
    ) -> Failure:
        try:
            answer = await self.call(method, request, agent=agent, replica=replica)
        except grpc.aio.AioRpcError as error:
            return decode(error)
        raise AssertionError(f"{method} succeeded but should have failed: {answer}")

    async def watch_fails(self, vote_id: str, *, replica: int = 0) -> Failure:
        stream = self.votes[replica].Watch(
            VotesWatchRequest(vote_id=vote_id), metadata=self.metadata(PROPOSER), timeout=15
        )
        try:
            first = await stream.read()
        except grpc.aio.AioRpcError as error:
            return decode(error)
        finally:
            stream.cancel()
        raise AssertionError(f"Watch({vote_id!r}) answered {first}")

    async def propose(self, vote_id: str, spec: VoteSpec, *, replica: int = 0) -> votes_pb2.Vote:
        answer = await self.call(
            "Propose", ProposeRequest(vote_id=vote_id, spec=spec), replica=replica
        )
        return answer.vote

    async def cast(
        self, vote_id: str, agent: str, *, replica: int = 0, **ballot: Any
    ) -> votes_pb2.CastResponse:
        return await self.call(
            "Cast", CastRequest(vote_id=vote_id, **ballot), agent=agent, replica=replica
        )

    def keyspace(self) -> list[tuple[bytes, int]]:
        """Every etcd key of this test's namespace (its votes, ballots, timers, request
        records), with its mod revision. Other tests' background work (timers closing
        their votes) moves etcd's global revision, so that is not compared."""
        out = []
        for prefix in (f"accord/ns/{self.namespace}/", "accord/vote-timers/"):
            for kv in self.etcd.kvs(prefix, prefix=True):
                ours = f"\x00{self.namespace}\x00".encode() in kv.key  # a timer of our votes
                if prefix.startswith("accord/ns/") or ours:
                    out.append((kv.key, kv.mod_revision))
        return sorted(out)

    async def observe(self, *vote_ids: str) -> tuple[Any, ...]:
        """The namespace's etcd keys, the vote list on each replica and each vote (with
        its ballots and tally) on each replica: what a refused call must leave unchanged."""
        revision = self.keyspace()
        seen: list[Any] = [revision]
        for replica in (0, 1):
            listed = await self.call("List", VotesListRequest(limit=1000), replica=replica)
            seen.append([v.SerializeToString(deterministic=True) for v in listed.votes])
            for vote_id in vote_ids:
                got = await self.call("Get", VotesGetRequest(vote_id=vote_id), replica=replica)
                seen.append(got.vote.SerializeToString(deterministic=True))
        assert self.keyspace() == revision, "reading the votes wrote to etcd"
        return tuple(seen)

    async def absent(self, vote_id: str) -> None:
        for replica in (0, 1):
            failure = await self.fails("Get", VotesGetRequest(vote_id=vote_id), replica=replica)
            assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def assert_invalid(failure: Failure, fields: list[str]) -> None:
    assert failure.code == INVALID, failure
    assert failure.reason == "INVALID_ARGUMENT", failure
    assert sorted(failure.fields) == sorted(fields), failure.violations
    for name, description in failure.violations:
        assert description, f"{name} has no description"
        assert f"{name}: {description}" in failure.message  # readable without the details


@pytest.fixture
async def api(replicas: list[Coordinator], etcd: EtcdMember, namespace: str) -> AsyncIterator[Api]:
    stubs = [Stubs(r.address) for r in replicas]
    yield Api(namespace, etcd, [s.votes for s in stubs], [s.leases for s in stubs])
    for each in stubs:
        await each.close()


# --- proposals -----------------------------------------------------------------------


def electorate(*agents: str, weights: tuple[float, ...] = ()) -> Electorate:
    weights = weights or (0.0,) * len(agents)  # 0: the default weight, 1
    listed = [Voter(agent_id=a, weight=w) for a, w in zip(agents, weights, strict=True)]
    return Electorate(voters=Voters(voters=listed))


def base_spec(**changes: Any) -> VoteSpec:
    spec = VoteSpec(
        question="Ship release 1.2 today?",
        options=["yes", "no"],
        electorate=electorate(*VOTERS),
        rule=Rule(kind=votes_pb2.RULE_KIND_MAJORITY),
        veto_holders=[VETO_HOLDER],
        timeout_ms=HOUR_MS,
    )
    for name, value in changes.items():
        if isinstance(value, Message):
            getattr(spec, name).CopyFrom(value)
        elif isinstance(value, list):
            spec.ClearField(name)  # type: ignore[arg-type]
            getattr(spec, name).extend(value)
        else:
            setattr(spec, name, value)
    return spec


Mutation = Callable[[VoteSpec], object]


def change(**changes: Any) -> Mutation:
    """The base proposal with some fields replaced."""
    return lambda spec: spec.CopyFrom(base_spec(**changes))


def weight(i: int, value: float) -> Mutation:
    return lambda spec: setattr(spec.electorate.voters.voters[i], "weight", value)


def clear(*names: str) -> Mutation:
    return lambda spec: [spec.ClearField(n) for n in names]  # type: ignore[arg-type]


def deadline_in(seconds: float, *, keep_timeout: bool = False) -> Mutation:
    def mutate(spec: VoteSpec) -> None:
        spec.deadline.FromMilliseconds(int((time.time() + seconds) * 1000))
        if not keep_timeout:
            spec.ClearField("timeout_ms")

    return mutate


def rule(**fields: Any) -> Mutation:
    return change(rule=Rule(**fields))


FRACTION = votes_pb2.RULE_KIND_FRACTION
K_OF_N = votes_pb2.RULE_KIND_K_OF_N
UNANIMOUS = votes_pb2.RULE_KIND_UNANIMOUS
WEIGHTED = votes_pb2.RULE_KIND_WEIGHTED_THRESHOLD
VOTERS_FIELD = "spec.electorate.voters.voters"

# name: (how the valid base proposal is spoilt, every field that must be reported)
PROPOSALS: dict[str, tuple[Mutation, list[str]]] = {
    # options
    "no options": (change(options=[]), ["spec.options"]),
    "duplicate option": (change(options=["yes", "yes"]), ["spec.options[1]"]),
    "duplicate option later": (change(options=["a", "b", "c", "b"]), ["spec.options[3]"]),
    "empty option": (change(options=["yes", "", "no"]), ["spec.options[1]"]),
    "oversized option": (change(options=["yes", "x" * 257]), ["spec.options[1]"]),
    "oversized multibyte option": (change(options=["é" * 129, "no"]), ["spec.options[0]"]),
    "control character in option": (change(options=["yes", "n\x00o"]), ["spec.options[1]"]),
    "too many options": (change(options=[f"o{i}" for i in range(65)]), ["spec.options"]),
    # question
    "empty question": (change(question=""), ["spec.question"]),
    "oversized question": (change(question="q" * 4097), ["spec.question"]),
    "oversized multibyte question": (change(question="é" * 2049), ["spec.question"]),
    "control character in question": (change(question="ship\x07it?"), ["spec.question"]),
    # electorate
    "negative weight": (weight(1, -1.0), [f"{VOTERS_FIELD}[1].weight"]),
    "tiny negative weight": (weight(0, -1e-300), [f"{VOTERS_FIELD}[0].weight"]),
    "NaN weight": (weight(2, math.nan), [f"{VOTERS_FIELD}[2].weight"]),
    "infinite weight": (weight(0, math.inf), [f"{VOTERS_FIELD}[0].weight"]),
    "negative infinite weight": (weight(1, -math.inf), [f"{VOTERS_FIELD}[1].weight"]),
    "weight above the limit": (weight(1, 1e13), [f"{VOTERS_FIELD}[1].weight"]),
    "duplicate voter": (
        change(electorate=electorate("alice", "alice")),
        [f"{VOTERS_FIELD}[1].agent_id"],
    ),
    "voter without an agent id": (
        change(electorate=electorate("alice", "")),
        [f"{VOTERS_FIELD}[1].agent_id"],
    ),
    "voter id with a space": (
        change(electorate=electorate("al ice", "bob")),
        [f"{VOTERS_FIELD}[0].agent_id"],
    ),
    "empty electorate": (change(electorate=Electorate(voters=Voters())), [VOTERS_FIELD]),
    "no electorate": (clear("electorate"), ["spec.electorate"]),
    "empty label selector": (
        change(electorate=Electorate(lease_labels=LabelSelector())),
        ["spec.electorate.lease_labels.labels"],
    ),
    "too many voters": (
        change(electorate=electorate(*[f"agent-{i}" for i in range(5001)])),
        [VOTERS_FIELD],
    ),
    # rule
    "missing rule kind": (rule(), ["spec.rule.kind"]),
    "no rule at all": (clear("rule"), ["spec.rule.kind"]),
    "unknown rule kind": (rule(kind=99), ["spec.rule.kind"]),
    "fraction 0/3": (
        rule(kind=FRACTION, fraction=Ratio(numerator=0, denominator=3)),
        ["spec.rule.fraction"],
    ),
    "fraction 4/3": (
        rule(kind=FRACTION, fraction=Ratio(numerator=4, denominator=3)),
        ["spec.rule.fraction"],
    ),
    "fraction -1/3": (
        rule(kind=FRACTION, fraction=Ratio(numerator=-1, denominator=3)),
        ["spec.rule.fraction"],
    ),
    "fraction -2/-3": (
        rule(kind=FRACTION, fraction=Ratio(numerator=-2, denominator=-3)),
        ["spec.rule.fraction"],
    ),
    "fraction 1/0": (
        rule(kind=FRACTION, fraction=Ratio(numerator=1, denominator=0)),
        ["spec.rule.fraction"],
    ),
    "fraction unset": (rule(kind=FRACTION), ["spec.rule.fraction"]),
    "k above n": (rule(kind=K_OF_N, k=4), ["spec.rule.k"]),
    "k zero": (rule(kind=K_OF_N, k=0), ["spec.rule.k"]),
    "k negative": (rule(kind=K_OF_N, k=-2), ["spec.rule.k"]),
    "of_electorate on K_OF_N": (
        rule(kind=K_OF_N, k=2, of_electorate=True),
        ["spec.rule.of_electorate"],
    ),
    "of_electorate on UNANIMOUS": (
        rule(kind=UNANIMOUS, of_electorate=True),
        ["spec.rule.of_electorate"],
    ),
    "weighted threshold above the electorate's weight": (
        rule(kind=WEIGHTED, threshold_weight=3.5),
        ["spec.rule.threshold_weight"],
    ),
    "weighted threshold zero": (rule(kind=WEIGHTED), ["spec.rule.threshold_weight"]),
    "weighted threshold negative": (
        rule(kind=WEIGHTED, threshold_weight=-1),
        ["spec.rule.threshold_weight"],
    ),
    "weighted threshold NaN": (
        rule(kind=WEIGHTED, threshold_weight=math.nan),
        ["spec.rule.threshold_weight"],
    ),
    # quorum
    "quorum of more voters than the electorate": (
        change(quorum=Quorum(min_voters=4)),
        ["spec.quorum.min_voters"],
    ),
    "negative quorum of voters": (change(quorum=Quorum(min_voters=-1)), ["spec.quorum.min_voters"]),
    "quorum of more weight than the electorate": (
        change(quorum=Quorum(min_weight=3.01)),
        ["spec.quorum.min_weight"],
    ),
    "negative quorum weight": (change(quorum=Quorum(min_weight=-0.5)), ["spec.quorum.min_weight"]),
    "NaN quorum weight": (change(quorum=Quorum(min_weight=math.nan)), ["spec.quorum.min_weight"]),
    "infinite quorum weight": (
        change(quorum=Quorum(min_weight=math.inf)),
        ["spec.quorum.min_weight"],
    ),
    # deadline
    "deadline in the past": (deadline_in(-60), ["spec.deadline"]),
    "deadline now-ish": (deadline_in(-0.5), ["spec.deadline"]),
    "deadline at the epoch": (
        lambda spec: (spec.ClearField("timeout_ms"), spec.deadline.CopyFrom(Timestamp(seconds=1))),
        ["spec.deadline"],
    ),
    "deadline more than a year away": (deadline_in(YEAR_SECONDS + 3600), ["spec.deadline"]),
    "deadline and timeout_ms": (deadline_in(3600, keep_timeout=True), ["spec.timeout_ms"]),
    "neither deadline nor timeout_ms": (clear("timeout_ms"), ["spec.timeout_ms"]),
    "negative timeout_ms": (change(timeout_ms=-1000), ["spec.timeout_ms"]),
    "timeout_ms more than a year": (
        change(timeout_ms=(YEAR_SECONDS + 1) * 1000),
        ["spec.timeout_ms"],
    ),
    # the rest of the spec
    "negative retention": (change(retention_seconds=-1), ["spec.retention_seconds"]),
    "retention over a year": (
        change(retention_seconds=YEAR_SECONDS + 1),
        ["spec.retention_seconds"],
    ),
    "unknown tie policy": (change(on_tie=7), ["spec.on_tie"]),
    "veto holder with a space": (change(veto_holders=["ve ra"]), ["spec.veto_holders[0]"]),
    "empty veto holder": (change(veto_holders=["vera", ""]), ["spec.veto_holders[1]"]),
    "duplicate veto holder": (change(veto_holders=["vera", "vera"]), ["spec.veto_holders[1]"]),
    "too many veto holders": (
        change(veto_holders=[f"v{i}" for i in range(65)]),
        ["spec.veto_holders"],
    ),
    # several at once: all reported in one answer
    "several problems in the spec": (
        lambda spec: spec.CopyFrom(
            base_spec(
                question="",
                options=["yes", "yes", ""],
                electorate=electorate("alice", "alice", weights=(1.0, -2.0)),
                rule=Rule(kind=FRACTION, fraction=Ratio(numerator=4, denominator=3)),
                quorum=Quorum(min_voters=-1, min_weight=math.nan),
                timeout_ms=0,
                retention_seconds=-5,
            )
        ),
        [
            "spec.question",
            "spec.options[1]",
            "spec.options[2]",
            f"{VOTERS_FIELD}[1].agent_id",
            f"{VOTERS_FIELD}[1].weight",
            "spec.rule.fraction",
            "spec.quorum.min_voters",
            "spec.quorum.min_weight",
            "spec.timeout_ms",
            "spec.retention_seconds",
        ],
    ),
    "several limits of the electorate": (
        lambda spec: spec.CopyFrom(
            base_spec(
                rule=Rule(kind=K_OF_N, k=5),
                quorum=Quorum(min_voters=4, min_weight=10),
            )
        ),
        ["spec.rule.k", "spec.quorum.min_voters", "spec.quorum.min_weight"],
    ),
}


@pytest.fixture
async def standing(api: Api) -> str:
    """A valid open vote with one ballot: the state every refused call must leave alone."""
    vote = await api.propose("standing", base_spec())
    assert vote.status == votes_pb2.VOTE_STATUS_OPEN
    await api.cast("standing", "alice", choice="yes", replica=1)
    return "standing"


@pytest.mark.parametrize("case", sorted(PROPOSALS))
async def test_malformed_proposal_is_refused_and_stores_nothing(
    case: str, api: Api, standing: str
) -> None:
    spoil, fields = PROPOSALS[case]
    spec = base_spec()
    spoil(spec)
    assert spec != base_spec(), "the case changed nothing"
    before = await api.observe(standing)
    replica = sorted(PROPOSALS).index(case) % 2
    failure = await api.fails(
        "Propose", ProposeRequest(vote_id="victim", spec=spec), replica=replica
    )
    assert_invalid(failure, fields)
    assert await api.observe(standing) == before
    await api.absent("victim")


@pytest.mark.parametrize(
    ("vote_id", "request_id", "fields"),
    [
        ("has space", "", ["vote_id"]),
        ("a/b", "", ["vote_id"]),
        ("x" * 129, "", ["vote_id"]),
        ("ünïcode", "", ["vote_id"]),
        ("nul\x00", "", ["vote_id"]),
        ("fine", "bad request id", ["request_id"]),
        ("bad id", "bad request id", ["vote_id", "request_id"]),
    ],
)
async def test_malformed_proposal_ids(
    vote_id: str, request_id: str, fields: list[str], api: Api, standing: str
) -> None:
    before = await api.observe(standing)
    for replica in (0, 1):
        failure = await api.fails(
            "Propose",
            ProposeRequest(vote_id=vote_id, spec=base_spec(), request_id=request_id),
            replica=replica,
        )
        assert_invalid(failure, fields)
    assert await api.observe(standing) == before


async def test_spec_and_electorate_problems_are_reported_together(api: Api, standing: str) -> None:
    """An explicit voter list is known up front, so its limits are checked with the rest
    of the spec: one answer lists every problem."""
    spec = base_spec(options=["yes", ""], rule=Rule(kind=K_OF_N, k=4))
    before = await api.observe(standing)
    failure = await api.fails("Propose", ProposeRequest(vote_id="victim", spec=spec))
    assert_invalid(failure, ["spec.options[1]", "spec.rule.k"])
    assert await api.observe(standing) == before


async def test_zero_weight_means_one_and_the_boundaries_are_accepted(api: Api) -> None:
    """The valid edges of what the cases above refuse: they are not refused."""
    spec = base_spec(
        electorate=electorate("alice", "bob", "carol", weights=(0.0, 2.0, 1e12)),
        rule=Rule(kind=WEIGHTED, threshold_weight=1e12),
        quorum=Quorum(min_voters=3, min_weight=3.0 + 1e12),
        options=[f"o{i}" for i in range(63)] + ["x" * 256],
        question="é" * 2048,
    )
    vote = await api.propose("edges", spec)
    assert [(v.agent_id, v.weight) for v in vote.voters] == [
        ("alice", 1.0),
        ("bob", 2.0),
        ("carol", 1e12),
    ]
    fraction = base_spec(rule=Rule(kind=FRACTION, fraction=Ratio(numerator=3, denominator=3)))
    assert (await api.propose("whole", fraction)).spec.rule.fraction.numerator == 3
    k_all = base_spec(rule=Rule(kind=K_OF_N, k=3), quorum=Quorum(min_voters=3))
    assert (await api.propose("k-all", k_all, replica=1)).spec.rule.k == 3
    future = base_spec()
    deadline_in(YEAR_SECONDS - 3600)(future)
    assert (await api.propose("late", future, replica=1)).spec.deadline == future.deadline


async def test_a_threshold_up_to_the_whole_electorate_weight_is_accepted(api: Api) -> None:
    spec = base_spec(
        electorate=electorate(*VOTERS, weights=(1e12, 1e12, 1e12)),
        rule=Rule(kind=WEIGHTED, threshold_weight=2e12),
    )
    vote = await api.propose("heavy", spec)
    assert vote.spec.rule.threshold_weight == 2e12


async def grant(api: Api, agent: str, labels: dict[str, str]) -> int:
    grant_labels(api.namespace, agent, labels)
    answer = await api.leases[0].Grant(
        leases_pb2.GrantRequest(ttl_seconds=3600, labels=labels),
        metadata=api.metadata(agent),
        timeout=15,
    )
    return int(answer.lease.id)


async def revoke(api: Api, agent: str, lease_id: int) -> None:
    await api.leases[0].Revoke(
        leases_pb2.RevokeRequest(lease_id=lease_id), metadata=api.metadata(agent), timeout=15
    )


async def test_label_electorate_matching_no_live_lease(api: Api, standing: str) -> None:
    dave = await grant(api, "dave", {"role": "reviewer", "team": "core"})
    erin = await grant(api, "erin", {"role": "approver"})
    await revoke(api, "erin", erin)  # her lease is gone: she no longer counts
    try:
        selectors = [{"role": "approver"}, {"role": "reviewer", "team": "infra"}, {"x": ""}]
        before = await api.observe(standing)
        for i, labels in enumerate(selectors):
            spec = base_spec(electorate=Electorate(lease_labels=LabelSelector(labels=labels)))
            failure = await api.fails(
                "Propose", ProposeRequest(vote_id="victim", spec=spec), replica=i % 2
            )
            assert_invalid(failure, ["spec.electorate.lease_labels"])
        # The resolved electorate's limits: one live reviewer, so k=2 is too many.
        spec = base_spec(
            electorate=Electorate(lease_labels=LabelSelector(labels={"role": "reviewer"})),
            rule=Rule(kind=K_OF_N, k=2),
            quorum=Quorum(min_voters=2),
        )
        failure = await api.fails("Propose", ProposeRequest(vote_id="victim", spec=spec))
        assert_invalid(failure, ["spec.rule.k", "spec.quorum.min_voters"])
        assert await api.observe(standing) == before
        await api.absent("victim")
        # The matching selector is accepted and resolves to the live lease's agent.
        spec = base_spec(
            electorate=Electorate(lease_labels=LabelSelector(labels={"role": "reviewer"}))
        )
        vote = await api.propose("reviewers", spec, replica=1)
        assert [(v.agent_id, v.weight) for v in vote.voters] == [("dave", 1.0)]
    finally:
        await revoke(api, "dave", dave)


async def test_an_existing_vote_id_with_a_bad_spec_is_refused_as_bad_input(
    api: Api, standing: str
) -> None:
    """Validation comes before the id's existence: not CONDITION_FAILED, and the
    standing vote is untouched."""
    before = await api.observe(standing)
    failure = await api.fails(
        "Propose", ProposeRequest(vote_id=standing, spec=base_spec(options=[]))
    )
    assert_invalid(failure, ["spec.options"])
    assert await api.observe(standing) == before


# --- ballots -------------------------------------------------------------------------


@pytest.fixture
async def ballots(api: Api) -> list[str]:
    """Two open votes (one allowing abstention) with alice's ballot on each."""
    await api.propose("strict", base_spec())
    await api.propose("lenient", base_spec(allow_abstain=True), replica=1)
    await api.cast("strict", "alice", choice="yes", rationale="tests pass", confidence=0.9)
    await api.cast("lenient", "alice", abstain=True, replica=1)
    return ["strict", "lenient"]


# name: (vote, agent, ballot, every field that must be reported)
BALLOTS: dict[str, tuple[str, str, dict[str, Any], list[str]]] = {
    "unknown option": ("strict", "bob", {"choice": "maybe"}, ["choice"]),
    "option in another case": ("strict", "bob", {"choice": "YES"}, ["choice"]),
    "choice and abstain": ("lenient", "bob", {"choice": "yes", "abstain": True}, ["abstain"]),
    "abstain when not allowed": ("strict", "bob", {"abstain": True}, ["abstain"]),
    "no choice from a voter": ("strict", "bob", {}, ["choice"]),
    "only a rationale": ("lenient", "bob", {"rationale": "undecided"}, ["choice"]),
    "confidence below 0": ("strict", "bob", {"choice": "no", "confidence": -0.1}, ["confidence"]),
    "confidence above 1": ("strict", "bob", {"choice": "no", "confidence": 1.01}, ["confidence"]),
    "NaN confidence": ("strict", "bob", {"choice": "no", "confidence": math.nan}, ["confidence"]),
    "infinite confidence": (
        "lenient",
        "bob",
        {"choice": "no", "confidence": math.inf},
        ["confidence"],
    ),
    "oversized rationale": (
        "strict",
        "bob",
        {"choice": "no", "rationale": "r" * 4097},
        ["rationale"],
    ),
    "oversized multibyte rationale": (
        "strict",
        "bob",
        {"choice": "no", "rationale": "é" * 2049},
        ["rationale"],
    ),
    "control character in rationale": (
        "strict",
        "bob",
        {"choice": "no", "rationale": "bad\x1bbyte"},
        ["rationale"],
    ),
    "a veto holder outside the electorate choosing": (
        "strict",
        VETO_HOLDER,
        {"choice": "yes"},
        ["choice"],
    ),
    "a veto holder outside the electorate abstaining": (
        "lenient",
        VETO_HOLDER,
        {"abstain": True},
        ["choice"],
    ),
    "bad request id": (
        "strict",
        "bob",
        {"choice": "no", "request_id": "has space"},
        ["request_id"],
    ),
    "several problems in one ballot": (
        "strict",
        "bob",
        {"choice": "maybe", "abstain": True, "confidence": 2.0, "rationale": "r" * 5000},
        ["choice", "abstain", "abstain", "confidence", "rationale"],
    ),
}


@pytest.mark.parametrize("case", sorted(BALLOTS))
async def test_malformed_ballot_is_refused_and_stores_nothing(
    case: str, api: Api, ballots: list[str]
) -> None:
    vote_id, agent, ballot, fields = BALLOTS[case]
    replica = sorted(BALLOTS).index(case) % 2
    before = await api.observe(*ballots)
    failure = await api.fails(
        "Cast", CastRequest(vote_id=vote_id, **ballot), agent=agent, replica=replica
    )
    assert_invalid(failure, fields)
    assert await api.observe(*ballots) == before


@pytest.mark.parametrize("vote_id", ["", "has space", "a/b", "x" * 129, "tab\t", "ü"])
async def test_ballot_with_a_bad_vote_id(vote_id: str, api: Api, ballots: list[str]) -> None:
    before = await api.observe(*ballots)
    for replica in (0, 1):
        failure = await api.fails(
            "Cast", CastRequest(vote_id=vote_id, choice="yes"), agent="bob", replica=replica
        )
        assert_invalid(failure, ["vote_id"])
    assert await api.observe(*ballots) == before


async def test_ineligible_ballots(api: Api, ballots: list[str]) -> None:
    before = await api.observe(*ballots)
    for replica in (0, 1):
        # Not in the electorate (and not a veto holder): even a well-formed ballot.
        failure = await api.fails(
            "Cast", CastRequest(vote_id="strict", choice="yes"), agent="mallory", replica=replica
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_ELIGIBLE")
        assert failure.info.metadata["agent_id"] == "mallory"
        assert failure.info.metadata["vote_id"] == "strict"
        assert "mallory" in failure.message and not failure.violations
        # A voter who holds no veto, vetoing.
        failure = await api.fails(
            "Cast", CastRequest(vote_id="strict", veto=True), agent="bob", replica=replica
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_ELIGIBLE")
        assert "veto" in failure.message
    assert await api.observe(*ballots) == before


@pytest.mark.skipif(AUTH_REQUIRED, reason="a ballot without an agent id needs auth off")
async def test_a_ballot_without_an_agent_id_is_not_eligible(api: Api, ballots: list[str]) -> None:
    before = await api.observe(*ballots)
    for replica in (0, 1):
        failure = await api.fails(
            "Cast", CastRequest(vote_id="strict", choice="yes"), agent=None, replica=replica
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_ELIGIBLE")
    assert await api.observe(*ballots) == before


async def test_a_different_second_ballot_is_already_voted(api: Api, ballots: list[str]) -> None:
    standing = (await api.call("Get", VotesGetRequest(vote_id="strict"))).vote.ballots
    assert [b.voter for b in standing] == ["alice"]
    before = await api.observe(*ballots)
    for replica, ballot in [
        (0, {"choice": "no"}),
        (1, {"choice": "no", "rationale": "changed my mind", "confidence": 0.9}),
    ]:
        failure = await api.fails(
            "Cast", CastRequest(vote_id="strict", **ballot), agent="alice", replica=replica
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_VOTED")
        shown = failure.detail(votes_pb2.Ballot)
        assert shown == standing[0]  # the standing ballot, revision and all
        assert (shown.choice, shown.rationale) == ("yes", "tests pass")
        assert failure.info.metadata["revision"] == str(standing[0].revision)
    # Choosing after abstaining, on the vote that allows abstention, is a change too.
    lenient = (await api.call("Get", VotesGetRequest(vote_id="lenient"))).vote.ballots[0]
    failure = await api.fails(
        "Cast", CastRequest(vote_id="lenient", choice="no"), agent="alice", replica=1
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_VOTED")
    assert failure.detail(votes_pb2.Ballot) == lenient
    assert await api.observe(*ballots) == before


async def test_the_identical_ballot_again_returns_the_standing_one(
    api: Api, ballots: list[str]
) -> None:
    standing = (await api.call("Get", VotesGetRequest(vote_id="strict"))).vote.ballots[0]
    before = await api.observe(*ballots)
    for replica in (0, 1):
        answer = await api.cast(
            "strict",
            "alice",
            choice="yes",
            rationale="tests pass",
            confidence=0.9,
            replica=replica,
        )
        assert answer.ballot == standing  # not a new ballot: same revision, same cast_at
        assert answer.status == votes_pb2.VOTE_STATUS_OPEN
    assert await api.observe(*ballots) == before


async def test_a_refused_ballot_with_a_request_id_is_replayed_not_stored(
    api: Api, ballots: list[str]
) -> None:
    """With a request_id the refusal itself is remembered (that record is the only
    write), so a retry anywhere gets the same answer; the ballots never change."""
    standing = (await api.call("Get", VotesGetRequest(vote_id="strict"))).vote.ballots[0]
    before = (await api.observe(*ballots))[1:]  # all but etcd's revision
    answers = []
    for replica in (0, 1, 0):
        failure = await api.fails(
            "Cast",
            CastRequest(vote_id="strict", choice="no", request_id="change-1"),
            agent="alice",
            replica=replica,
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_VOTED")
        assert failure.detail(votes_pb2.Ballot) == standing
        answers.append(failure.message)
    assert len(set(answers)) == 1
    assert (await api.observe(*ballots))[1:] == before


async def decided_vote(api: Api) -> votes_pb2.Decision:
    """A 2-of-3 vote settled by two ballots; replica 1 saw it open (and may cache it so)."""
    await api.propose("closed", base_spec(rule=Rule(kind=K_OF_N, k=2), veto_holders=[]), replica=0)
    first = await api.cast("closed", "alice", choice="yes", replica=1)
    assert first.status == votes_pb2.VOTE_STATUS_OPEN
    second = await api.cast("closed", "bob", choice="yes", replica=0)
    assert second.status == votes_pb2.VOTE_STATUS_DECIDED
    assert (second.decision.outcome, second.decision.option) == (votes_pb2.OUTCOME_APPROVED, "yes")
    return second.decision


async def test_casting_on_a_decided_vote_is_vote_closed(api: Api) -> None:
    decision = await decided_vote(api)
    before = await api.observe("closed")
    for replica in (1, 0):
        for agent, ballot in [("carol", {"choice": "no"}), ("alice", {"choice": "no"})]:
            failure = await api.fails(
                "Cast", CastRequest(vote_id="closed", **ballot), agent=agent, replica=replica
            )
            assert (failure.code, failure.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "VOTE_CLOSED",
            ), failure
            shown = failure.detail(votes_pb2.Decision)
            assert shown.outcome == votes_pb2.OUTCOME_APPROVED and shown.option == "yes"
            assert shown.revision == decision.revision
            assert shown.explanation == decision.explanation
            assert failure.info.metadata["outcome"] == "APPROVED"
    assert await api.observe("closed") == before


async def test_casting_on_a_cancelled_vote_is_vote_closed(api: Api) -> None:
    await api.propose("called-off", base_spec())
    cancelled = await api.call(
        "Cancel", VotesCancelRequest(vote_id="called-off", reason="superseded")
    )
    before = await api.observe("called-off")
    for replica in (0, 1):
        failure = await api.fails(
            "Cast", CastRequest(vote_id="called-off", choice="yes"), agent="bob", replica=replica
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VOTE_CLOSED",
        )
        shown = failure.detail(votes_pb2.Decision)
        assert shown.outcome == votes_pb2.OUTCOME_CANCELLED
        assert (shown.cancelled_by, shown.cancel_reason) == (PROPOSER, "superseded")
        assert shown.revision == cancelled.decision.revision
    assert await api.observe("called-off") == before


async def test_unknown_votes_are_not_found(api: Api, standing: str) -> None:
    before = await api.observe(standing)
    for replica in (0, 1):
        calls: list[tuple[str, Message, str]] = [
            ("Cast", CastRequest(vote_id="nope", choice="yes"), "alice"),
            ("Get", VotesGetRequest(vote_id="nope"), PROPOSER),
            ("Cancel", VotesCancelRequest(vote_id="nope"), ADMIN),
        ]
        for method, request, agent in calls:
            failure = await api.fails(method, request, agent=agent, replica=replica)
            assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
            assert failure.info.metadata["vote_id"] == "nope"
        failure = await api.watch_fails("nope", replica=replica)
        assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    # A vote of another namespace is not found here either.
    elsewhere = Api(api.namespace + "-other", api.etcd, api.votes, api.leases)
    failure = await elsewhere.fails("Cast", CastRequest(vote_id=standing, choice="no"), agent="bob")
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert await api.observe(standing) == before


# --- cancel, reads -------------------------------------------------------------------


async def test_cancel_by_a_non_proposer_is_not_permitted(api: Api, standing: str) -> None:
    before = await api.observe(standing)
    for replica, agent in [(0, "bob"), (1, VETO_HOLDER), (0, "mallory"), (1, "Admin")]:
        failure = await api.fails(
            "Cancel", VotesCancelRequest(vote_id=standing), agent=agent, replica=replica
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_PERMITTED",
        )
        assert failure.info.metadata["proposer"] == PROPOSER
    assert await api.observe(standing) == before
    # The admin may: the same call then succeeds, and the vote is cancelled.
    answer = await api.call("Cancel", VotesCancelRequest(vote_id=standing), agent=ADMIN, replica=1)
    assert answer.decision.outcome == votes_pb2.OUTCOME_CANCELLED
    assert answer.decision.cancelled_by == ADMIN


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"vote_id": ""}, ["vote_id"]),
        ({"vote_id": "bad id"}, ["vote_id"]),
        ({"vote_id": "x" * 129}, ["vote_id"]),
        ({"vote_id": "standing", "reason": "r" * 1025}, ["reason"]),
        ({"vote_id": "standing", "reason": "é" * 513}, ["reason"]),
        ({"vote_id": "standing", "request_id": "bad request id"}, ["request_id"]),
        ({"vote_id": "bad/id", "reason": "r" * 2000}, ["vote_id", "reason"]),
    ],
)
async def test_malformed_cancel(
    request_fields: dict[str, str], fields: list[str], api: Api, standing: str
) -> None:
    before = await api.observe(standing)
    for replica in (0, 1):
        failure = await api.fails(
            "Cancel", VotesCancelRequest(**request_fields), agent=PROPOSER, replica=replica
        )
        assert_invalid(failure, fields)
    assert await api.observe(standing) == before


BAD_IDS = ["", "has space", "a/b", "x" * 129, "ünï", "nul\x00"]


@pytest.mark.parametrize("vote_id", BAD_IDS)
async def test_get_and_watch_with_a_bad_id(vote_id: str, api: Api, standing: str) -> None:
    before = await api.observe(standing)
    for replica in (0, 1):
        assert_invalid(
            await api.fails("Get", VotesGetRequest(vote_id=vote_id), replica=replica), ["vote_id"]
        )
        assert_invalid(await api.watch_fails(vote_id, replica=replica), ["vote_id"])
    assert await api.observe(standing) == before


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"limit": -1}, ["limit"]),
        ({"limit": 1001}, ["limit"]),
        ({"limit": 2**31 - 1}, ["limit"]),
        ({"after": "bad id"}, ["after"]),
        ({"after": "x" * 129}, ["after"]),
        ({"status": 9}, ["status"]),
        ({"status": -1}, ["status"]),
        ({"limit": -5, "after": "a/b", "status": 3}, ["limit", "after", "status"]),
    ],
)
async def test_list_with_bad_arguments(
    request_fields: dict[str, Any], fields: list[str], api: Api, standing: str
) -> None:
    before = await api.observe(standing)
    for replica in (0, 1):
        failure = await api.fails("List", VotesListRequest(**request_fields), replica=replica)
        assert_invalid(failure, fields)
    assert await api.observe(standing) == before
    # The edges of the same arguments are fine.
    listed = await api.call("List", VotesListRequest(limit=1000, after="a", status=1))
    assert [v.id for v in listed.votes] == [standing] and not listed.more


# --- server bugs these tests found (fixed) ---------------------------------------------


@pytest.mark.parametrize(
    "deadline",
    [
        Timestamp(seconds=2**62),
        Timestamp(seconds=253402300800),  # year 10000
        Timestamp(seconds=-(2**40)),
        Timestamp(seconds=int(time.time()) + 600, nanos=-5),
        Timestamp(seconds=int(time.time()) + 600, nanos=2_000_000_000),
    ],
    ids=["far-future", "year-10000", "far-past", "negative-nanos", "nanos-over-a-second"],
)
async def test_an_invalid_deadline_timestamp_is_bad_input(
    deadline: Timestamp, api: Api, standing: str
) -> None:
    spec = base_spec(timeout_ms=0, deadline=deadline)
    before = await api.observe(standing)
    failure = await api.fails("Propose", ProposeRequest(vote_id="victim", spec=spec))
    assert_invalid(failure, ["spec.deadline"])
    assert await api.observe(standing) == before


Call = tuple[str, Message, str]  # method, request, agent


def _huge_choice(standing: str) -> Call:
    return "Cast", CastRequest(vote_id=standing, choice="c" * 20_000), "bob"


def _propose(spec: VoteSpec) -> Callable[[str], Call]:
    return lambda _standing: ("Propose", ProposeRequest(vote_id="victim", spec=spec), PROPOSER)


def _selector(labels: dict[str, str]) -> VoteSpec:
    return base_spec(electorate=Electorate(lease_labels=LabelSelector(labels=labels)))


# name: (the call, given the standing vote's id; a field the answer must name)
ECHOES: dict[str, tuple[Callable[[str], Call], str]] = {
    "a 20 kB choice": (_huge_choice, "choice"),
    "a 20 kB label value": (_propose(_selector({"role": "v" * 20_000})), "spec.electorate"),
    "5000 labels": (_propose(_selector({f"k{i}": "v" for i in range(5000)})), "spec.electorate"),
    "2000 oversized duplicate options": (
        _propose(base_spec(options=["x" * 300] * 2000)),
        "spec.options",
    ),
    "20000 duplicate voters": (
        _propose(base_spec(electorate=electorate(*["a" * 100] * 20_000))),
        VOTERS_FIELD,
    ),
}


@pytest.mark.parametrize("case", sorted(ECHOES))
async def test_huge_bad_input_still_gets_a_readable_invalid_argument(
    case: str, api: Api, standing: str
) -> None:
    build, expected = ECHOES[case]
    method, request, agent = build(standing)
    before = await api.observe(standing)
    failure = await api.fails(method, request, agent=agent)
    assert (failure.code, failure.reason) == (INVALID, "INVALID_ARGUMENT")
    assert any(f.startswith(expected) for f in failure.fields), failure.fields
    assert await api.observe(standing) == before


async def test_a_malformed_fence_names_the_fence_field(api: Api, ballots: list[str]) -> None:
    before = await api.observe(*ballots)
    failure = await api.fails(
        "Cast",
        CastRequest(vote_id="strict", choice="no", fence=common_pb2.Fence()),
        agent="bob",
    )
    assert failure.code == INVALID
    assert sorted(failure.fields) == ["fence.lock", "fence.token"]
    assert await api.observe(*ballots) == before


# --- afterwards ----------------------------------------------------------------------


async def test_both_replicas_still_serve_after_bad_input(
    api: Api, replicas: list[Coordinator]
) -> None:
    # A burst of every kind of refusal first, alternating replicas.
    for i, case in enumerate(sorted(PROPOSALS)):
        spec = base_spec()
        PROPOSALS[case][0](spec)
        await api.fails("Propose", ProposeRequest(vote_id="burst", spec=spec), replica=i % 2)
    for i, vote_id in enumerate(BAD_IDS):
        await api.fails("Get", VotesGetRequest(vote_id=vote_id), replica=i % 2)
        await api.watch_fails(vote_id, replica=i % 2)
        await api.fails("Cast", CastRequest(vote_id=vote_id), agent="bob", replica=i % 2)
    await api.absent("burst")
    for replica in (0, 1):
        assert replicas[replica].running()
        vote_id = f"healthy-{replica}"
        proposed = await api.propose(vote_id, base_spec(veto_holders=[]), replica=replica)
        assert proposed.status == votes_pb2.VOTE_STATUS_OPEN
        first = await api.cast(vote_id, "alice", choice="yes", replica=replica)
        assert first.status == votes_pb2.VOTE_STATUS_OPEN
        # Two of three for "yes": carol can no longer change a majority of the ballots.
        second = await api.cast(vote_id, "bob", choice="yes", replica=1 - replica)
        assert second.status == votes_pb2.VOTE_STATUS_DECIDED
        got = (await api.call("Get", VotesGetRequest(vote_id=vote_id), replica=replica)).vote
        assert got.status == votes_pb2.VOTE_STATUS_DECIDED
        assert (got.decision.outcome, got.decision.option) == (votes_pb2.OUTCOME_APPROVED, "yes")
        assert [b.voter for b in got.ballots] == ["alice", "bob"]
