"""A retried session delete (same request_id, any replica) gets its first answer, revision
included, after that answer was stored in the request's record."""

from __future__ import annotations

from accord.v1 import records_pb2, sessions_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, until


async def test_a_retried_delete_answers_with_the_first_revision(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    who = identity(namespace, "cleaner")
    first_replica, other_replica = (Stubs(r.address) for r in replicas)
    async with first_replica, other_replica:
        await first_replica.sessions.Open(
            sessions_pb2.SessionsOpenRequest(name="plan"), metadata=who
        )
        delete = sessions_pb2.SessionsDeleteRequest(name="plan", request_id="del-1")
        first = await first_replica.sessions.Delete(delete, metadata=who)
        assert first.deleted

        async def record() -> records_pb2.IdempotencyRecord:
            stored = etcd.kvs(f"accord/ns/{namespace}/idem/cleaner", prefix=True)
            return records_pb2.IdempotencyRecord.FromString(stored[0].value)

        # Storing the answer rewrites the record, so its revision is no longer the delete's.
        await until(record, lambda r: bool(r.answer), "the delete's answer in its record")
        retry = await other_replica.sessions.Delete(delete, metadata=who)
        assert (retry.header.revision, retry.deleted) == (first.header.revision, True)
