"""Leases that nobody keeps alive, for records that should expire on their own.

Idempotency records and deletion tombstones attach to the current retention lease, so
etcd removes them between `ttl - rotate_every` and `ttl` seconds after they were
written. A replica grants a fresh lease every `rotate_every` seconds; a replica that dies
leaves its leases to expire on schedule.
"""

from __future__ import annotations

import asyncio
import time

from accord.coordinator.substrate.etcd import Etcd


class RetentionLeases:
    def __init__(self, etcd: Etcd, *, ttl: int, rotate_every: int) -> None:
        self._etcd = etcd
        self._ttl = ttl
        self._rotate_every = rotate_every
        self._lease_id = 0
        self._granted_at = 0.0
        self._lock = asyncio.Lock()

    def forget(self, lease_id: int) -> None:
        """etcd no longer knows lease_id (revoked by hand, or a reset cluster): grant anew."""
        if self._lease_id == lease_id:
            self._lease_id = 0

    async def alive(self, lease_id: int) -> bool:
        """Whether etcd still knows lease_id (asked after a write was refused for a lease)."""
        return bool((await self._etcd.lease_time_to_live(lease_id)).TTL > 0)

    async def current(self) -> int:
        if self._lease_id and time.monotonic() - self._granted_at < self._rotate_every:
            return self._lease_id
        async with self._lock:
            if not self._lease_id or time.monotonic() - self._granted_at >= self._rotate_every:
                response = await self._etcd.lease_grant(self._ttl)
                self._lease_id = response.ID
                self._granted_at = time.monotonic()
            return self._lease_id
