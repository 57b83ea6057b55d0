"""Lease and lock loss pushed to the MCP client, so an agent learns it lost its claim when
it happens, not at its next fenced write.

`register` hooks every session lease the façade starts (Facade.lease_hooks): when the
client's keep-alive reports it lost (it expired during a stall, an admin revoked it),
every lock grant the session held under it is lost too, and its MCP client gets:
- `notifications/message` (level "warning", logger "accord") on the session's standalone
  channel: what was lost, why, and what to do, as data a host shows or hands to the model;
- `notifications/resources/updated` for `accord://leases/{id}` and for each lost lock's
  `accord://locks/{name}` (resources.py): to subscriptions/listen streams naming them
  (2026-07-28 clients) and on the standalone channel (earlier clients).
The session keeps the lost lease and grants as they are: accord_leases_status reports
the loss, a fenced write with a lost grant is refused by the service as FENCED (saying who
holds the lock now), and accord_leases_start grants a new lease.

A lease the session revoked itself (accord_leases_end, the session's end) is not a loss
and sends nothing.

A lock taken away while the lease lives (an admin broke it) is found by a check: while a
session holds grants, every lease TTL (at least MIN_CHECK_SECONDS) one TimeToLive call
asks which locks its lease still has; a grant whose lock is gone from it is pushed as a
`lock_lost` message and its lock's resources/updated. Accord has no lock watch, so this is
a poll, bounded to one call per session holding locks per TTL: a break is pushed within
about one TTL, and a release by the session itself is never reported.

Error handling: sending is best effort (Notifier): a host that is gone or never opened
a standalone stream loses the message, and nothing is raised into the keep-alive task. A
check that no replica answers is logged and made again a TTL later; a lease found gone
ends the checks (its loss is reported by the keep-alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import quote

from mcp.server.mcpserver import MCPServer

from accord.client import AccordError, Grant, Lease, LeaseNotFoundError
from accord.mcpserver.context import AgentSession, Facade

log = logging.getLogger("accord.mcp")

LOGGER = "accord"
# The shortest pause between two checks of a session's grants.
MIN_CHECK_SECONDS = 2.0
_pushing: set[asyncio.Task[None]] = set()  # strong references until each push is sent
# Each live session's grant checker (None: none running now).
_checkers: dict[AgentSession, asyncio.Task[None] | None] = {}


def lease_uri(lease_id: int) -> str:
    return f"accord://leases/{lease_id:x}"  # hexadecimal, as accord_leases_start shows it


def lock_uri(name: str) -> str:
    # Reserved expansion ({+name}) keeps "/" in lock names; other unsafe bytes are escaped.
    return "accord://locks/" + quote(name, safe="/")


def register(server: MCPServer[Any], facade: Facade) -> None:
    facade.lease_hooks.append(watch_lease)
    facade.grant_hooks.append(watch_grants)


def watch_lease(session: AgentSession, lease: Lease) -> None:
    """Push a loss notification to session's client when lease is lost."""

    def lost(reason: AccordError) -> None:
        task = asyncio.get_running_loop().create_task(lease_lost(session, lease, reason))
        _pushing.add(task)
        task.add_done_callback(_pushing.discard)

    lease.on_lost(lost)


async def lease_lost(session: AgentSession, lease: Lease, reason: AccordError) -> None:
    """Tell session's client that lease is lost, and the locks with it."""
    if session.ended:
        return
    locks = sorted(name for name, grant in session.grants.items() if grant.lease_id == lease.id)
    data: dict[str, Any] = {
        "event": "lease_lost",
        "lease_id": f"{lease.id:x}",
        "reason": reason.reason or "UNAVAILABLE",
        "message": reason.message,
        "locks_lost": locks,
        "what_to_do": (
            "Stop work done under these locks: other agents may hold them now, and fenced "
            "writes with them are refused. Call accord_leases_start for a new lease, then "
            "accord_locks_acquire again, and re-read shared state before continuing."
        ),
    }
    log.warning(
        "MCP session %s lost lease %x (%s); locks lost: %s",
        session.key,
        lease.id,
        data["reason"],
        locks,
    )
    notifier = session.notifier
    await notifier.notify(
        "notifications/message", {"level": "warning", "logger": LOGGER, "data": data}
    )
    for uri in [lease_uri(lease.id), *(lock_uri(name) for name in locks)]:
        await notifier.resource_updated(uri)


def watch_grants(session: AgentSession, grant: Grant) -> None:
    """Check the session's grants while it holds any (one checker per session)."""
    if session not in _checkers:
        session.at_end(lambda: _stop_checking(session))
    elif (running := _checkers[session]) is not None and not running.done():
        return
    _checkers[session] = asyncio.get_running_loop().create_task(_check_grants(session))


async def _stop_checking(session: AgentSession) -> None:
    task = _checkers.pop(session, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _check_grants(session: AgentSession) -> None:
    """Every lease TTL, ask which locks the lease still has (one TimeToLive call); a grant
    the session still keeps whose lock is gone from it was broken (or otherwise taken
    away) while the lease lived: push that. Ends when the session holds no grant it has
    not reported, or its lease is gone (lease_lost reports that)."""
    reported: set[int] = set()  # tokens of the grants already reported lost
    while not session.ended:
        lease = session.lease
        held = _held(session, lease, reported)
        if lease is None or lease.lost.is_set() or not held:
            return
        await asyncio.sleep(max(lease.ttl, MIN_CHECK_SECONDS))
        try:
            info = await session.client.leases.time_to_live(lease.id)
        except LeaseNotFoundError:
            return
        except AccordError as exc:  # no replica answered: ask again next time
            log.info("checking the locks of MCP session %s: %s", session.key, exc.message)
            continue
        for name, grant in _held(session, lease, reported).items():
            if name not in info.locks and held.get(name) is grant:
                reported.add(grant.token)
                await lock_lost(session, grant)


def _held(session: AgentSession, lease: Lease | None, reported: set[int]) -> dict[str, Grant]:
    if lease is None:
        return {}
    return {
        name: grant
        for name, grant in session.grants.items()
        if grant.lease_id == lease.id and grant.token not in reported
    }


async def lock_lost(session: AgentSession, grant: Grant) -> None:
    """Tell session's client that grant no longer holds its lock (its lease lives)."""
    data: dict[str, Any] = {
        "event": "lock_lost",
        "lock": grant.name,
        "token": grant.token,
        "reason": "the lock was taken from this session (broken by an admin) while its lease lived",
        "what_to_do": (
            "Stop work done under this lock: another agent may hold it now, and fenced "
            "writes with it are refused. Acquire it again and re-read what it protects "
            "before continuing."
        ),
    }
    log.warning("MCP session %s lost lock %s (token %d)", session.key, grant.name, grant.token)
    await session.notifier.notify(
        "notifications/message", {"level": "warning", "logger": LOGGER, "data": data}
    )
    await session.notifier.resource_updated(lock_uri(grant.name))
