"""`accord status`: each replica's health, etcd endpoints and leader, connections, calls in
flight, group-commit batch sizes and busiest namespaces (accord.v1.Replicas.Status).

Every replica given (`--addr a,b` or as arguments) is asked at once, each on its own
connection, so a replica that is down is shown as down beside the ones that answered.
The table is three: the replicas, the etcd endpoints as each replica sees them, and
the namespaces with the most calls on each replica over the last minute. `-o json` gives
a list with one object per address: `{"address", "up", "status"}` (the Status response
in the proto JSON mapping), or `{"address", "up": false, "error"}`.

Exit codes: 0 every replica answered; 3 some did not (all are still printed); 1 a
replica refused (with auth required the call needs a cluster admin), with its reason.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Group

from accord.client import (
    AccordError,
    AsyncClient,
    DeadlineExceededError,
    ReplicaStatus,
    RetryPolicy,
    UnavailableError,
    tls_credentials,
)
from accord.coordinator.cli.common import (
    ADDR,
    EXIT_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    AddrOpt,
    Output,
    OutputOpt,
    TokenOpt,
    as_dict,
    duration,
    emit,
    fail,
    table_of,
)
from accord.v1 import replicas_pb2

# A replica that does not answer within this is shown as down.
STATUS_TIMEOUT_SECONDS = 5.0
_RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2)


@dataclass(frozen=True, slots=True)
class Seen:
    """One address: its status, or why it is down (refused: it answered with a refusal)."""

    address: str
    status: ReplicaStatus | None = None
    down: str = ""
    refused: AccordError | None = None


async def _ask(address: str, token: str, top: int) -> Seen:
    ca = os.environ.get("ACCORD_TLS_CA", "")
    try:
        async with AsyncClient(
            [address],
            agent_id="" if token else "accord-cli",
            timeout=STATUS_TIMEOUT_SECONDS,
            retry=_RETRY,
            token=token,
            credentials=tls_credentials(
                ca, os.environ.get("ACCORD_TLS_CERT"), os.environ.get("ACCORD_TLS_KEY")
            )
            if ca
            else None,
        ) as client:
            return Seen(address, status=await client.replicas.status(top_namespaces=top))
    except UnavailableError as exc:
        return Seen(address, down=exc.message)
    except DeadlineExceededError:
        return Seen(address, down=f"no answer within {STATUS_TIMEOUT_SECONDS:g}s")
    except AccordError as exc:
        return Seen(address, refused=exc)


async def _ask_all(addresses: list[str], token: str, top: int) -> list[Seen]:
    return list(await asyncio.gather(*(_ask(a, token, top) for a in addresses)))


def _health(status: ReplicaStatus) -> str:
    return replicas_pb2.Health.Name(status.health).removeprefix("HEALTH_")


def _leader(status: ReplicaStatus) -> str:
    etcd = status.etcd
    if not etcd.leader_id:
        return "none known"
    name = etcd.leader_endpoint or f"member {etcd.leader_id:x}"
    return f"{name} (term {etcd.raft_term})"


def _replica_row(seen: Seen) -> list[object]:
    s = seen.status
    if s is None:
        return [seen.address, "-", "DOWN", *["-"] * 7]
    c, g = s.connections, s.group_commit
    healthy = sum(e.healthy for e in s.etcd.endpoints)
    return [
        seen.address,
        s.replica,
        _health(s),
        s.version,
        duration(int(s.uptime_seconds)),
        f"{s.calls_in_flight} ({s.streams_open} streams)",
        f"{c.grpc} grpc ({c.grpc_peers} hosts), {c.websocket} ws",
        f"{healthy}/{len(s.etcd.endpoints)} up, leader {_leader(s)}",
        f"{g.recent_mean:.2f} / {g.recent_max}" if g.recent_batches else "-",
        f"{g.writes:,} in {g.batches:,}",
    ]


def _tables(seen: list[Seen]) -> Group:
    replicas = table_of(
        "replicas",
        [
            "address",
            "replica",
            "health",
            "version",
            "uptime",
            "calls in flight",
            "connections",
            "etcd",
            "batch mean / max (recent)",
            "writes in batches",
        ],
        [_replica_row(s) for s in seen],
    )
    down = [f"{s.address} is down: {s.down}" for s in seen if s.status is None]
    if down:
        replicas.caption, replicas.caption_justify = "\n".join(down), "left"
    endpoints = table_of(
        "etcd endpoints, as each replica sees them",
        ["replica", "endpoint", "health", "member", "leader", "term", "version", "latency"],
        [
            [
                s.address,
                e.endpoint,
                "healthy" if e.healthy else f"UNHEALTHY: {e.error}",
                f"{e.member_id:x}" if e.healthy else "-",
                ("yes" if e.member_id == s.status.etcd.leader_id else "no") if e.healthy else "-",
                e.raft_term if e.healthy else "-",
                e.version or "-",
                f"{e.latency_seconds * 1000:.1f} ms",
            ]
            for s in seen
            if s.status is not None
            for e in s.status.etcd.endpoints
        ],
    )
    window = next((s.status.window_seconds for s in seen if s.status is not None), 60)
    busiest = table_of(
        f"top namespaces by calls, last {window}s",
        ["replica", "namespace", "calls"],
        [
            [s.address, n.namespace, f"{n.calls:,}"]
            for s in seen
            if s.status is not None
            for n in s.status.top_namespaces
        ]
        + [
            [s.address, "(untracked)", f"{s.status.untracked_calls:,}"]
            for s in seen
            if s.status is not None and s.status.untracked_calls
        ],
    )
    return Group(replicas, "", endpoints, "", busiest)


def _json(seen: list[Seen]) -> list[dict[str, Any]]:
    return [
        {"address": s.address, "up": True, "status": as_dict(s.status)}
        if s.status is not None
        else {"address": s.address, "up": False, "error": s.down}
        for s in seen
    ]


def status(
    addresses: Annotated[
        list[str] | None,
        typer.Argument(help="replica addresses host:port (default: --addr)", show_default=False),
    ] = None,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    top: Annotated[int, typer.Option(help="namespaces to list per replica (1-100)")] = 10,
    token: TokenOpt = "",
) -> None:
    """Each replica's health, etcd, connections, load and busiest namespaces."""
    given = [a.strip() for item in (addresses or [addr]) for a in item.split(",") if a.strip()]
    if not given:
        fail("no replica address given", EXIT_USAGE)
    if not 1 <= top <= 100:
        fail("--top must be between 1 and 100", EXIT_USAGE)
    seen = asyncio.run(_ask_all(list(dict.fromkeys(given)), token, top))
    refused = next((s for s in seen if s.refused is not None), None)
    if refused is not None and refused.refused is not None:
        fail(f"{refused.address}: {refused.refused.message}", EXIT_ERROR)
    emit(output, _json(seen), _tables(seen))
    if any(s.status is None for s in seen):
        raise typer.Exit(EXIT_UNREACHABLE)
