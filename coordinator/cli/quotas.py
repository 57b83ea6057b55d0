"""Admin commands for namespace quotas: `accord quota show` and `accord quota set`.

`show` prints each quota of the namespace with its usage (as the answering replica
counts it from etcd), its limit in force, and whether that limit is the replicas'
default or the namespace's override. `set` stores overrides (a cluster admin, with auth
required): `accord quota set --namespace team-a keys=500000 requests_per_second=300`;
`--clear` drops every override first. `parse_quotas` also reads `accord serve --quota`.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer

from accord.client import QuotaLimits as QuotaLimitsMessage
from accord.coordinator.cli.common import (
    ADDR,
    EXIT_USAGE,
    NAMESPACE,
    AddrOpt,
    AgentOpt,
    NamespaceOpt,
    Output,
    OutputOpt,
    TokenOpt,
    as_dict,
    call,
    emit,
    fail,
    table_of,
)
from accord.coordinator.quotas.limits import Limit, QuotaLimits

quota_app = typer.Typer(help="Namespace quotas: usage against each limit; overrides.")
# Every limit a namespace has, as `serve --quota` and `quota set` name them.
QUOTA_NAMES = (*(limit.value for limit in Limit), "burst_seconds")
_FLOATS = frozenset({"requests_per_second", "agent_requests_per_second", "burst_seconds"})


def _pairs(items: list[str]) -> dict[str, float]:
    """NAME=VALUE items as numbers; a bad one is a usage error naming it."""
    found: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in QUOTA_NAMES:
            fail(
                f"accord: {item!r}: expected NAME=VALUE, NAME one of {', '.join(QUOTA_NAMES)}",
                EXIT_USAGE,
            )
        try:
            value = float(text) if name in _FLOATS else int(text)
        except ValueError:
            fail(f"accord: {item!r}: {text!r} is not a number", EXIT_USAGE)
        if not math.isfinite(value) or value < 0:
            fail(f"accord: {item!r}: must be a finite number >= 0", EXIT_USAGE)
        found[name] = value
    return found


def _message(given: dict[str, float]) -> QuotaLimitsMessage:
    message = QuotaLimitsMessage()
    for name, value in given.items():
        setattr(message, name, value)
    return message


def parse_quotas(items: list[str]) -> QuotaLimits:
    """The default limits with NAME=VALUE items replacing some (`accord serve --quota`)."""
    return QuotaLimits().merged(_message(_pairs(items)))


@quota_app.command("show")
def show(
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Usage against each quota of the namespace."""
    status = call(addr, namespace, agent, lambda c: c.quotas.get(), token)
    overridden = {f.name for f, _ in status.overrides.ListFields()}
    rows = []
    for name in QUOTA_NAMES:
        limit = getattr(status.limits, name)
        used = getattr(status.usage, name, None)
        rows.append(
            (
                name,
                "-" if used is None else f"{used:,}",
                f"{limit:,g}" if isinstance(limit, float) else f"{limit:,}",
                "override" if name in overridden else "default",
            )
        )
    title = f"quotas of {status.namespace} (usage at revision {status.usage.revision})"
    emit(output, as_dict(status), table_of(title, ["quota", "used", "limit", "from"], rows))


@quota_app.command("set")
def set_quota(
    limits: Annotated[
        list[str] | None,
        typer.Argument(help=f"NAME=VALUE pairs; NAME one of {', '.join(QUOTA_NAMES)}"),
    ] = None,
    clear: Annotated[bool, typer.Option(help="drop every override first")] = False,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Override quotas of the namespace (needs a cluster admin with auth required)."""
    given = _pairs(limits or [])
    if not given and not clear:
        fail("accord: nothing to set: give NAME=VALUE pairs, or --clear", EXIT_USAGE)
    message = _message(given)
    stored = call(
        addr, namespace, agent, lambda c: c.quotas.set_limits(message, clear=clear), token
    )
    rows = [(f.name, f"{v:,g}") for f, v in stored.ListFields()]
    emit(
        output,
        as_dict(stored),
        table_of(f"quota overrides of {namespace}", ["quota", "limit"], rows),
    )
