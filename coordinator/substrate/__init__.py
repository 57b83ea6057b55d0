"""What every primitive stands on, and nothing else: etcd access, the transaction
vocabulary, the keyspace, group commit, the at-most-once write, retention leases, the
watch hub, errors, limits and preconditions. Nothing here imports a primitive.

A store takes one Substrate, the way every etcd concurrency recipe takes one Session.
"""

from __future__ import annotations

from dataclasses import dataclass

from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.group_commit import GroupCommitter
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.limits import Limits
from accord.coordinator.substrate.retention import RetentionLeases

# Answers still being stored get this long to finish when a replica stops.
DRAIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Substrate:
    etcd: Etcd
    keys: Keyspace
    committer: GroupCommitter
    retention: RetentionLeases
    writes: Writes
    limits: Limits

    @classmethod
    def over(
        cls,
        etcd: Etcd,
        *,
        root: str,
        limits: Limits,
        retention_ttl: int,
        group_commit_in_flight: int = 1,
    ) -> Substrate:
        """Everything the primitives share, on one etcd client."""
        keys = Keyspace(root)
        committer = GroupCommitter(etcd, max_in_flight=group_commit_in_flight)
        retention = RetentionLeases(
            etcd, ttl=retention_ttl, rotate_every=max(1, retention_ttl // 24)
        )
        writes = Writes(etcd, keys, committer, retention)
        return cls(etcd, keys, committer, retention, writes, limits)

    async def close(self) -> None:
        """Stop writing: let stored answers finish, then fail what is still queued."""
        await self.writes.drain(DRAIN_SECONDS)
        await self.committer.close()


__all__ = ["Etcd", "GroupCommitter", "Keyspace", "Limits", "RetentionLeases", "Substrate", "Writes"]
