"""Looking at locks, and breaking them: what the admin CLI and Describe/List/Break use.

Error handling: bad names are INVALID_ARGUMENT. A break deletes the current holders'
entries in one etcd transaction guarded by each being the incarnation read; if holders
keep changing under it, it gives up with LOCK_CONFLICT after BREAK_ATTEMPTS and breaks
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from accord.coordinator import logs
from accord.coordinator.locks.explain import lock_state
from accord.coordinator.locks.queue import Entry, check_name, holders, is_granted
from accord.coordinator.locks.store import LockStore
from accord.coordinator.substrate import Substrate, audit, calls
from accord.coordinator.substrate.errors import InvalidArgument, LockConflict
from accord.coordinator.substrate.txn import Txn, created_at, delete, txn
from accord.v1 import locks_pb2
from accord.v1.auth_pb2 import AuditEntry

_log = logs.get("accord.locks")
BREAK_ATTEMPTS = 5


class LockAdmin:
    def __init__(self, substrate: Substrate, locks: LockStore) -> None:
        self._s = substrate
        self._locks = locks

    async def describe(self, name: str, lease_id: int) -> tuple[int, locks_pb2.LockState, int]:
        """The lock's state and lease_id's place: -1 holding, -2 not queued, else the
        number of waiters ahead."""
        violations = check_name("name", name)
        if violations:
            raise InvalidArgument(violations)
        ns = calls.current.get().namespace
        revision, queue = await self._locks.queue(ns, name)
        position = -2
        for i, entry in enumerate(queue):
            if entry.lease_id == lease_id:
                position = -1 if is_granted(queue, i) else i - len(holders(queue))
        return revision, await lock_state(self._s.etcd, name, queue), position

    async def list_states(self, prefix: str) -> tuple[int, list[locks_pb2.LockState]]:
        ns = calls.current.get().namespace
        revision, queues = await self._locks.all_entries(ns, prefix)
        states = await asyncio.gather(
            *(lock_state(self._s.etcd, n, q) for n, q in sorted(queues.items()))
        )
        return revision, list(states)

    async def break_lock(self, name: str) -> tuple[int, list[locks_pb2.LockEntry]]:
        """Delete the current holders' entries. Retried while holders change under it, a
        bounded number of times."""
        violations = check_name("name", name)
        if violations:
            raise InvalidArgument(violations)
        ns = calls.current.get().namespace
        for _ in range(BREAK_ATTEMPTS):
            _, queue = await self._locks.queue(ns, name)
            held = holders(queue)
            if not held:
                return 0, []
            state = await lock_state(self._s.etcd, name, queue)
            logged = audit.entry(
                "Break", name, "holders: " + ", ".join(e.record.agent_id for e in held)
            )

            def build(lease: int, held: list[Entry] = held, logged: AuditEntry = logged) -> Txn:
                return txn(
                    when=[created_at(e.key, e.token) for e in held],  # still these holders
                    then=[
                        *(delete(e.key) for e in held),
                        audit.write(self._s.keys, logged, lease),  # who broke it, in the act
                    ],
                )

            committed = await self._s.writes.commit(build, retained=True, batched=False, retry=True)
            response = committed.response
            if response.succeeded:
                _log.warning(
                    "lock broken",
                    lock=name,
                    namespace=ns,
                    holders=[e.record.agent_id for e in held],
                )
                return response.header.revision, list(state.holders)
        raise LockConflict(
            f"the holders of {name!r} kept changing; nothing was broken", metadata={"lock": name}
        )

    def names_from_keys(self, namespace: str, keys: Sequence[bytes]) -> list[str]:
        """The locks among etcd keys attached to a lease (what the lease holds or waits for)."""
        names = (self._s.keys.parse_lock_entry(namespace, k) for k in keys)
        return sorted({n[0] for n in names if n is not None})
