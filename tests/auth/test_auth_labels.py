"""Label electorates with auth required (the Sybil attack in issue 12): a writer cannot
put a label an admin did not grant on its lease, so it cannot invent electorate members;
a label electorate counts the agents whose principals hold the label by grant, and a
label taken back stops counting even while the lease still carries it."""

from __future__ import annotations

import grpc

from accord.client import AsyncClient, InvalidArgumentError, PermissionDeniedError, Role
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.harness import make_client, until

TEAM = {"team": "triage"}


async def voters_of(proposer: AsyncClient) -> list[str]:
    vote = await proposer.votes.propose(
        "refund?", ["yes", "no"], lease_labels=TEAM, voting_period=600
    )
    return sorted(v.agent_id for v in vote.voters)


async def test_a_label_is_an_admins_grant_not_a_claim(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    member, sybil, chair = unique("member"), unique("sybil"), unique("chair")
    member_token = await mint(member, Role.WRITE)
    sybil_token = await mint(sybil, Role.WRITE)
    chair_token = await mint(chair, Role.PROPOSE)
    await admin.auth.grant_label(member, "team", "triage")
    for address in auth_cluster.addresses:  # every replica's copy has the grant
        async with make_client([address], namespace, agent="", token=member_token) as me:

            async def labels(me: AsyncClient = me) -> dict[str, str]:
                held = (await me.auth.whoami()).principal.labels
                return dict(held[namespace].labels) if namespace in held else {}

            await until(labels, lambda held: held == TEAM, "the label grant on every replica")
    before = auth_cluster.stored(namespace)
    async with make_client(auth_cluster.addresses, namespace, agent="", token=sybil_token) as s:
        try:
            forged = await s.leases.grant(ttl=30, labels=TEAM)
        except PermissionDeniedError as refused:
            assert refused.code == grpc.StatusCode.PERMISSION_DENIED
            assert refused.metadata["labels"] == "team=triage"
        else:
            async with forged:  # revoked on the way out
                raise AssertionError("a lease carried a label nobody granted")
    assert auth_cluster.stored(namespace) == before

    async with (
        make_client(auth_cluster.addresses, namespace, agent="", token=member_token) as m,
        await m.leases.grant(ttl=30, labels=TEAM),
        make_client(auth_cluster.addresses, namespace, agent="", token=chair_token) as c,
    ):
        assert await voters_of(c) == [member]
        await admin.auth.revoke_label(member, "team")
        found = {p.name: p for p in await admin.auth.principals()}
        assert namespace not in found[member].labels

        async def electorate() -> list[str]:
            try:
                return await voters_of(c)
            except InvalidArgumentError:  # nobody left: the vote is refused
                return []

        # Every replica follows the grants by a watch: wait for the proposer's to see it.
        await until(electorate, lambda voters: voters == [], "the revoked label to stop counting")
