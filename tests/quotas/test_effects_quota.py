"""The effects quota: a namespace holding its quota of effect records begins no new
effect, in any run (QUOTA_EXCEEDED, nothing written), on either replica; effects it holds
are still begun again, completed and aborted; the count falls when the records expire
(their retention lease revoked) and new effects are admitted again."""

from __future__ import annotations

import pytest

from accord.client import QuotaExceededError, intent
from tests.harness import Coordinator, EtcdMember, make_client
from tests.quotas.helpers import assert_pushback, set_quota, usage_reaches


async def test_effects_quota_refuses_a_new_effect_and_writes_nothing(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, effects=2)
    async with (
        make_client([replicas[0].address], namespace, agent="alice") as a,
        make_client([replicas[1].address], namespace, agent="bob") as b,
    ):
        lease = await a.leases.grant(60, keepalive=False)
        # Two runs: the quota bounds the namespace, not one run (--effects-max-per-run).
        first = await a.effects.begin("k1", "run-1", intent("t", b"1"), lease=lease)
        second = await a.effects.begin("k2", "run-2", intent("t", b"2"), lease=lease)
        assert first.proceed and second.proceed
        await usage_reaches(a, "effects", 2)
        await usage_reaches(b, "effects", 2)  # each replica counts from its own watch
        before = etcd.stored(namespace)
        with pytest.raises(QuotaExceededError) as refused:
            await a.effects.begin("k3", "run-3", intent("t", b"3"), lease=lease)
        assert_pushback(refused.value, "effects", f"namespace:{namespace}")
        assert etcd.stored(namespace) == before
        other_lease = await b.leases.grant(60, keepalive=False)
        with pytest.raises(QuotaExceededError) as refused:
            await b.effects.begin("k3", "run-1", intent("t", b"3"), lease=other_lease)
        assert_pushback(refused.value, "effects", f"namespace:{namespace}")
        # What the namespace holds is still served: begun again, completed, aborted.
        again = await a.effects.begin("k1", "run-1", intent("t", b"1"), lease=lease)
        assert again.proceed and again.claim == first.claim
        await a.effects.complete("k1", first.claim, lease=lease, result=b"done")
        await a.effects.abort("k2", second.claim, lease=lease, reason="not needed")
        # The records expire (their retention lease revoked, as after --effects-ttl): the
        # count falls and a new effect is admitted.
        assert etcd.revoke_leases_of(namespace) > 0
        await usage_reaches(a, "effects", 0)
        await usage_reaches(b, "effects", 0)
        lease = await a.leases.grant(60, keepalive=False)
        assert (await a.effects.begin("k3", "run-3", intent("t", b"3"), lease=lease)).proceed
        await usage_reaches(a, "effects", 1)
