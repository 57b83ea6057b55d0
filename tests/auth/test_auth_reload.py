"""While a replica reloads its copy of the credentials (its etcd watch broke), a call
waits for the copy, within its deadline, instead of being answered UNAVAILABLE at once:
a raw caller that does not retry still gets its answer once etcd is back."""

from __future__ import annotations

import asyncio

from accord.v1 import auth_pb2
from tests.auth.conftest import AuthCluster
from tests.harness import EtcdMember, Stubs


async def test_a_call_waits_for_the_credentials_to_be_reloaded(
    auth_cluster: AuthCluster, etcd: EtcdMember
) -> None:
    md = (("authorization", f"Bearer {auth_cluster.admin_token}"),)
    address = auth_cluster.addresses[0]
    async with Stubs(address) as stubs:
        await stubs.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md, timeout=10)
        etcd.kill()  # the replica's watch on the credentials breaks: its copy is stale
        try:
            await asyncio.sleep(0.5)
            asked = asyncio.ensure_future(
                stubs.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md, timeout=20)
            )
            await asyncio.sleep(0.5)
            assert not asked.done()  # waiting, not refused
        finally:
            etcd.start()
        answer = await asked
        assert answer.principal.name
    for other in auth_cluster.addresses:  # the next test finds both copies loaded
        async with Stubs(other) as stubs:
            await stubs.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md, timeout=30)
