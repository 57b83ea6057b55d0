"""Voter weights from admin-granted labels (issue 12): with auth required, an agent in a
label electorate weighs what its principal's grant of the selecting label carries (the
smallest, when several labels select), the tally counts that weight, and a label left on
a lease after its grant was taken back counts for nothing, however heavy it was."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from accord.client import AsyncClient, InvalidArgumentError, Role, Rule, VoteStatus
from tests.auth.conftest import AuthCluster, Mint, accord_cli, unique
from tests.harness import make_client, until

TEAM = {"team": "triage"}
GOLD_TEAM = {"team": "triage", "tier": "gold"}


async def held_everywhere(
    cluster: AuthCluster, namespace: str, token: str, expected: dict[str, object]
) -> None:
    """Until every replica's whoami for token shows exactly these labels and weights."""
    for address in cluster.addresses:
        async with make_client([address], namespace, agent="", token=token) as me:

            async def held(me: AsyncClient = me) -> dict[str, object]:
                granted = (await me.auth.whoami()).principal.labels
                if namespace not in granted:
                    return {}
                mine = granted[namespace]
                return {"labels": dict(mine.labels), "weights": dict(mine.weights)}

            await until(held, lambda now: now == expected, f"label grants on {address}")


async def test_a_granted_weight_is_the_voters_weight_and_the_tallys(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    heavy, light, former, chair = (unique(n) for n in ("heavy", "light", "former", "chair"))
    tokens = {name: await mint(name, Role.WRITE) for name in (heavy, light, former)}
    chair_token = await mint(chair, Role.PROPOSE)
    await admin.auth.grant_label(heavy, "team", "triage", weight=2)
    await admin.auth.grant_label(heavy, "tier", "gold", weight=3)
    await admin.auth.grant_label(light, "team", "triage")
    await admin.auth.grant_label(light, "tier", "gold")
    await admin.auth.grant_label(former, "team", "triage", weight=5)
    both = {"labels": GOLD_TEAM}
    await held_everywhere(
        auth_cluster, namespace, tokens[heavy], {**both, "weights": {"team": 2, "tier": 3}}
    )
    await held_everywhere(auth_cluster, namespace, tokens[light], {**both, "weights": {}})
    await held_everywhere(
        auth_cluster, namespace, tokens[former], {"labels": TEAM, "weights": {"team": 5}}
    )

    addresses = auth_cluster.addresses
    async with (
        make_client(addresses, namespace, agent="", token=tokens[heavy]) as h,
        await h.leases.grant(ttl=60, labels=GOLD_TEAM),
        make_client(addresses, namespace, agent="", token=tokens[light]) as li,
        await li.leases.grant(ttl=60, labels=GOLD_TEAM),
        make_client(addresses, namespace, agent="", token=tokens[former]) as f,
        await f.leases.grant(ttl=60, labels=TEAM),
        make_client(addresses, namespace, agent="", token=chair_token) as c,
    ):
        # Taken back: the lease still says team=triage, now a mere claim.
        await admin.auth.revoke_label(former, "team")
        await held_everywhere(auth_cluster, namespace, tokens[former], {})

        for selector in (TEAM, GOLD_TEAM):  # team=triage weighs 2, tier=gold 3: the smaller
            opened = await c.votes.propose(
                "refund?", ["yes", "no"], lease_labels=selector, voting_period=600,
                rule=Rule.weighted_threshold(2),
            )  # fmt: skip
            assert {v.agent_id: v.weight for v in opened.voters} == {heavy: 2.0, light: 1.0}

        cast = await h.votes.cast(opened.id, "yes")  # alone, it reaches the threshold of 2
        assert cast.status == VoteStatus.DECIDED and cast.decision is not None
        tally = cast.decision.tally
        assert cast.decision.option == "yes"
        assert [(o.option, o.voters, o.weight) for o in tally.options] == [
            ("yes", 1, 2.0),
            ("no", 0, 0.0),
        ]
        assert tally.electorate_weight == 3.0 and tally.electorate_size == 2


async def test_a_bad_weight_is_refused_and_nothing_is_written(
    auth_cluster: AuthCluster, admin: AsyncClient, namespace: str
) -> None:
    name = unique("weighed")
    stored = f"{auth_cluster.root}/auth/"
    before = auth_cluster.etcd.kvs(stored, prefix=True)
    for bad in (0.0, -1.0, math.nan, math.inf, 1e13):
        with pytest.raises(InvalidArgumentError) as refused:
            await admin.auth.grant_label(name, "team", "triage", weight=bad)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in refused.value.field_violations] == ["weight"]
    as_admin = {"ACCORD_TOKEN": auth_cluster.admin_token}
    where = ("--addr", ",".join(auth_cluster.addresses), "--namespace", namespace)
    grant = ("auth", "label", "grant", name, "team=triage", *where)
    by_cli = accord_cli(*grant, "--weight", "-2", env=as_admin)
    assert by_cli.returncode == 1 and "weight" in by_cli.stderr
    assert auth_cluster.etcd.kvs(stored, prefix=True) == before

    made = accord_cli(*grant, "--weight", "2.5", "-o", "json", env=as_admin)
    assert made.returncode == 0, made.stderr
    granted = json.loads(made.stdout)["labels"][namespace]
    assert granted == {"labels": TEAM, "weights": {"team": 2.5}}
