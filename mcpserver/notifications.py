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
and sends nothing. A lock broken by an admin while the lease lives is not pushed: the
agent learns it from the FENCED refusal of its next fenced write (Accord has no lock
watch; a poll per held grant would cost a call per grant per period).

Error handling: sending is best effort (Notifier): a host that is gone or never opened
a standalone stream loses the message, and nothing is raised into the keep-alive task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

from mcp.server.mcpserver import MCPServer

from accord.client import AccordError, Lease
from accord.mcpserver.context import AgentSession, Facade

log = logging.getLogger("accord.mcp")

LOGGER = "accord"
_pushing: set[asyncio.Task[None]] = set()  # strong references until each push is sent


def lease_uri(lease_id: int) -> str:
    return f"accord://leases/{lease_id:x}"  # hexadecimal, as accord_leases_start shows it


def lock_uri(name: str) -> str:
    # Reserved expansion ({+name}) keeps "/" in lock names; other unsafe bytes are escaped.
    return "accord://locks/" + quote(name, safe="/")


def register(server: MCPServer[Any], facade: Facade) -> None:
    facade.lease_hooks.append(watch_lease)


def watch_lease(session: AgentSession, lease: Lease) -> None:
    """Push a loss notification to session's client when lease is lost."""

    def lost(reason: AccordError) -> None:
        task = asyncio.get_running_loop().create_task(lease_lost(session, lease, reason))
        _pushing.add(task)
        task.add_done_callback(_pushing.discard)

    lease.on_lost(lost)


async def lease_lost(session: AgentSession, lease: Lease, reason: AccordError) -> None:
    """Forget what the session held under lease, and tell its client."""
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
