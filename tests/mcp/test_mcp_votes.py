"""Votes through MCP alone, two agents each with its own `accord mcp` (stdio) against the
two replicas: propose, a bounded wait that comes back undecided with its follow-up, casts
(a repeated one replayed, not counted twice), the decision with its explanation, a
refused ballot that stores nothing, cancel; the wait that returns once a ballot decides
the vote, with progress; and the caller's traceparent (SEP-414 `_meta`) recorded as the
vote's provenance."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from accord.client import AsyncClient
from tests.harness import make_client, until
from tests.mcp.conftest import Agents, both
from tests.mcp.harness import structured

T = TypeVar("T")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _returns(value: T) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return value

    return probe


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _client(agents: Agents) -> AsyncClient:
    """A plain Accord client in the namespace the agents act in."""
    return make_client(agents.addresses, agents.namespace)


async def test_vote_tools_schemas_and_annotations(agents: Agents) -> None:
    async with agents.open("a") as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
    expected = {
        # name: (readOnly, destructive, idempotent)
        "accord_votes_propose": (False, False, False),
        "accord_votes_cast": (False, False, True),
        "accord_votes_get": (True, False, True),
        "accord_votes_wait": (True, False, True),
        "accord_votes_cancel": (False, True, True),
    }
    for name, (read_only, destructive, idempotent) in expected.items():
        tool = tools[name]
        hints = tool.annotations
        assert hints is not None, name
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (
            read_only,
            destructive,
            idempotent,
        ), name
        assert tool.output_schema is not None and tool.description, name
    propose = tools["accord_votes_propose"].input_schema
    assert set(propose["required"]) == {"question", "options"}
    assert propose["properties"]["rule"]["enum"] == [
        "majority",
        "fraction",
        "k_of_n",
        "unanimous",
        "weighted_threshold",
    ]
    assert tools["accord_votes_wait"].input_schema["required"] == ["vote_id"]
    assert "decided" in tools["accord_votes_wait"].output_schema["properties"]  # type: ignore[index]


async def test_a_vote_from_proposal_to_decision(agents: Agents) -> None:
    async with both(agents, "alice", "bob") as (alice, bob), _client(agents) as client:
        proposed = await alice.call_tool(
            "accord_votes_propose",
            {"question": "Ship it?", "options": ["yes", "no"], "voters": ["alice", "bob"]},
        )
        assert not proposed.is_error, _text(proposed)
        vote = structured(proposed)
        vote_id = vote["id"]
        assert vote["status"] == "OPEN" and vote["rule"] == "more than half of the weight cast"
        assert "0 of 2 voters" in vote["explanation"]

        # A bounded wait on an open vote comes back undecided, saying to call again.
        waited = structured(
            await bob.call_tool("accord_votes_wait", {"vote_id": vote_id, "wait_seconds": 0.5})
        )
        assert waited["decided"] is False and waited["vote"]["status"] == "OPEN"
        assert "accord_votes_wait again" in waited["next_step"]

        # Carol is no voter: refused as a readable result, and no ballot is stored.
        async with agents.open("carol") as carol:
            refused = await carol.call_tool(
                "accord_votes_cast", {"vote_id": vote_id, "choice": "no"}
            )
        assert refused.is_error and structured(refused)["reason"] == "NOT_ELIGIBLE"
        assert not (await client.votes.get(vote_id)).ballots

        first = structured(
            await alice.call_tool(
                "accord_votes_cast",
                {"vote_id": vote_id, "choice": "yes", "rationale": "tests pass"},
            )
        )
        assert first["status"] == "OPEN" and first["replayed"] is False
        again = structured(
            await alice.call_tool(
                "accord_votes_cast",
                {"vote_id": vote_id, "choice": "yes", "rationale": "tests pass"},
            )
        )
        assert again["replayed"] is True  # the same ballot again: answered, not counted
        deciding = structured(
            await bob.call_tool("accord_votes_cast", {"vote_id": vote_id, "choice": "yes"})
        )
        assert deciding["status"] == "DECIDED"
        assert deciding["decision"]["outcome"] == "APPROVED"
        assert deciding["decision"]["option"] == "yes"

        got = structured(await bob.call_tool("accord_votes_get", {"vote_id": vote_id}))
        assert got["status"] == "DECIDED"
        assert got["explanation"] == got["decision"]["explanation"]
        assert "APPROVED 'yes'" in got["explanation"]
        assert [(b["voter"], b["choice"]) for b in got["ballots"]] == [
            ("alice", "yes"),
            ("bob", "yes"),
        ]
        assert got["tally"]["participated"] == 2

        waited = structured(await alice.call_tool("accord_votes_wait", {"vote_id": vote_id}))
        assert waited["decided"] is True and waited["vote"]["decision"]["outcome"] == "APPROVED"

        # Cancelling a decided vote is refused; a proposer may cancel an open one.
        closed = await alice.call_tool("accord_votes_cancel", {"vote_id": vote_id})
        assert closed.is_error and structured(closed)["reason"] == "VOTE_CLOSED"
        other = structured(
            await alice.call_tool(
                "accord_votes_propose",
                {"question": "Rename?", "options": ["yes", "no"], "voters": ["alice", "bob"]},
            )
        )
        cancelled = structured(
            await alice.call_tool("accord_votes_cancel", {"vote_id": other["id"], "reason": "moot"})
        )
        assert cancelled["outcome"] == "CANCELLED" and cancelled["cancel_reason"] == "moot"

        stored = await client.votes.get(vote_id)
        assert len(stored.ballots) == 2 and stored.decision.option == "yes"


async def test_wait_returns_when_a_ballot_decides_the_vote(agents: Agents) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, message))

    async with both(agents, "alice", "bob") as (alice, bob):
        vote = structured(
            await alice.call_tool(
                "accord_votes_propose",
                {"question": "Go?", "options": ["yes", "no"], "voters": ["alice", "bob"]},
            )
        )
        waiting = asyncio.create_task(
            bob.call_tool(
                "accord_votes_wait",
                {"vote_id": vote["id"], "wait_seconds": 30},
                progress_callback=on_progress,
            )
        )
        # The wait has reported the vote's state (as progress) before any ballot is cast.
        await until(_returns(progress), bool, "the wait's first progress report")
        assert progress[0][1] == "0 of 2 voters have cast a ballot"
        for agent in (alice, bob):
            cast = await agent.call_tool(
                "accord_votes_cast", {"vote_id": vote["id"], "choice": "no"}
            )
            assert not cast.is_error, _text(cast)
        waited = structured(await waiting)
    assert waited["decided"] is True
    assert waited["vote"]["decision"]["option"] == "no"
    # Each ballot seen while waiting was reported (bob's may come with the decision).
    assert progress[1][1] == "alice cast a ballot"


async def test_traceparent_in_meta_is_recorded_with_the_decision(agents: Agents) -> None:
    """The deciding ballot's call carries the MCP request's traceparent: the service
    records it with the decision it wrote."""
    async with agents.open("alice") as alice, _client(agents) as client:
        vote = structured(
            await alice.call_tool(
                "accord_votes_propose",
                {"question": "Traced?", "options": ["yes", "no"], "voters": ["alice"]},
            )
        )
        cast = structured(
            await alice.call_tool(
                "accord_votes_cast",
                {"vote_id": vote["id"], "choice": "yes"},
                meta={"traceparent": TRACEPARENT},
            )
        )
        stored = await client.votes.get(vote["id"])
    assert cast["decision"]["traceparent"].split("-")[1] == TRACE_ID
    assert stored.decision.trace_context.traceparent.split("-")[1] == TRACE_ID


async def test_propose_rules_electorates_and_options(agents: Agents) -> None:
    """Each rule and electorate form reaches the service as asked (the vote states them)."""
    async with agents.open("alice") as alice:

        async def propose(**args: Any) -> dict[str, Any]:
            result = await alice.call_tool(
                "accord_votes_propose", {"question": "Q?", "options": ["a", "b"], **args}
            )
            assert not result.is_error, result.content
            return structured(result)

        fraction = await propose(
            voters=["alice", "bob", "carol"], rule="fraction", numerator=3, denominator=4
        )
        assert fraction["rule"] == "at least 3/4 of the weight cast"
        weighted = await propose(
            weights={"alice": 2.0, "bob": 1.0}, rule="majority", of_electorate=True
        )
        assert weighted["rule"] == "more than half of the electorate's weight"
        assert {v["agent_id"]: v["weight"] for v in weighted["voters"]} == {
            "alice": 2.0,
            "bob": 1.0,
        }
        k_of_n = await propose(voters=["alice", "bob", "carol"], rule="k_of_n", k=2)
        assert k_of_n["rule"] == "at least 2 of 3 voters choose the same option"
        unanimous = await propose(
            voters=["alice", "bob"],
            rule="unanimous",
            veto_holders=["carol"],
            quorum_voters=2,
            allow_abstain=True,
            allow_change=True,
            vote_id="fixed-id",
            request_id="propose-once",
        )
        assert unanimous["id"] == "fixed-id" and unanimous["veto_holders"] == ["carol"]
        assert unanimous["quorum_voters"] == 2
        assert unanimous["allow_abstain"] is True and unanimous["allow_change"] is True
        again = await propose(
            voters=["alice", "bob"],
            rule="unanimous",
            veto_holders=["carol"],
            quorum_voters=2,
            allow_abstain=True,
            allow_change=True,
            vote_id="fixed-id",
            request_id="propose-once",
        )
        assert again["created_revision"] == unanimous["created_revision"]  # not a second vote
        threshold = await propose(
            weights={"alice": 2.0}, rule="weighted_threshold", threshold_weight=1.5
        )
        assert threshold["rule"] == "a weight of at least 1.5"
