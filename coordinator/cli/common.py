"""What every admin command of `accord` shares: its options, one way to call the service,
one way to print.

With a token (`--token` or ACCORD_TOKEN) every call carries it, for a service that
runs with auth required. ACCORD_TLS_CA (and ACCORD_TLS_CERT, ACCORD_TLS_KEY for mutual
TLS) make the commands talk TLS to replicas that serve it.

Each command makes one or two calls with the async client under a short deadline and
prints a table (`-o table`, the default) or JSON (`-o json`: proto messages in their
standard JSON mapping with proto field names, so int64 values such as lease ids and
tokens are strings). Exit codes: 0 done, 1 an Accord error, 2 bad usage or a refused
break, 3 the service could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from google.protobuf import timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich import box
from rich.console import Console, RenderableType
from rich.table import Column, Table
from rich.text import Text

from accord.client import (
    AccordError,
    AsyncClient,
    DeadlineExceededError,
    RetryPolicy,
    UnavailableError,
    tls_credentials,
)

T = TypeVar("T")

CALL_TIMEOUT_SECONDS = 5.0
_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5)
EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
# Piped table output is not cut to 80 columns.
_PIPE_WIDTH = 1000


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
AddrOpt = Annotated[
    str, typer.Option(envvar="ACCORD_ADDR", help="coordinator host:port[,host:port...]")
]
NamespaceOpt = Annotated[str, typer.Option(envvar="ACCORD_NAMESPACE", help="namespace")]
AgentOpt = Annotated[
    str,
    typer.Option(
        envvar="ACCORD_AGENT_ID",
        help="agent id to call as (with a token, the default is the token's principal)",
    ),
]
TokenOpt = Annotated[
    str,
    typer.Option(
        envvar="ACCORD_TOKEN",
        help="bearer token, for a service with auth required (`accord auth token create`)",
        show_default=False,
    ),
]
ADDR, NAMESPACE, AGENT = "127.0.0.1:50051", "default", "accord-cli"


# --- the two helpers: run calls, print results ------------------------------------


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"accord: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def call(
    addr: str,
    namespace: str,
    agent: str,
    work: Callable[[AsyncClient], Awaitable[T]],
    token: str | None = None,
) -> T:
    """Run work with a client to addr; Accord errors become one line on stderr and an
    exit code. token: None reads ACCORD_TOKEN. With a token, the default agent id gives
    way to the token's principal (a token names who calls)."""
    token = os.environ.get("ACCORD_TOKEN", "") if token is None else token
    if token and agent == AGENT:
        agent = ""
    addresses = [a.strip() for a in addr.split(",") if a.strip()]
    if not addresses:
        fail("--addr names no coordinator address", EXIT_USAGE)

    async def main() -> T:
        ca = os.environ.get("ACCORD_TLS_CA", "")
        async with AsyncClient(
            addresses,
            agent_id=agent,
            namespace=namespace,
            timeout=CALL_TIMEOUT_SECONDS,
            retry=_RETRY,
            token=token,
            credentials=tls_credentials(
                ca, os.environ.get("ACCORD_TLS_CERT"), os.environ.get("ACCORD_TLS_KEY")
            )
            if ca
            else None,
        ) as client:
            return await work(client)

    unreachable = f"cannot reach the Accord service at {addr}"
    try:
        return asyncio.run(main())
    except UnavailableError as exc:
        if exc.reason:  # a replica answered, but its etcd did not
            fail(f"the Accord service at {addr} is unavailable: {exc.message}", EXIT_UNREACHABLE)
        fail(f"{unreachable}: {exc.message}", EXIT_UNREACHABLE)
    except DeadlineExceededError as exc:
        if exc.reason:  # the service itself gave up
            fail(exc.message, EXIT_ERROR)
        fail(f"{unreachable}: no answer within {CALL_TIMEOUT_SECONDS:g}s", EXIT_UNREACHABLE)
    except AccordError as exc:
        fail(exc.message, EXIT_ERROR)


def emit(output: Output, data: Any, table: RenderableType) -> None:
    """data as JSON, or table, on stdout."""
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2))
    else:
        console = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
        with console.capture() as captured:
            console.print(table)
        typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


# --- formatting ---------------------------------------------------------------------


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


def table_of(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    columns = [Column(h, overflow="fold") for h in headers]  # ids are folded, never cut
    table = Table(*columns, title=title, title_justify="left", box=box.SIMPLE, show_edge=False)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))  # Text: names are not markup
    if not table.row_count:
        table.caption, table.caption_justify = "none", "left"
    return table


def fields_table(title: str, pairs: Sequence[tuple[str, object]]) -> Table:
    """One record as a two-column table: a name, its value (folded, never cut)."""
    table = Table(
        Column(style="bold"),
        Column(overflow="fold"),
        title=title,
        title_justify="left",
        box=box.SIMPLE,
        show_edge=False,
        show_header=False,
    )
    for name, value in pairs:
        table.add_row(Text(name), Text(str(value)))
    return table


def duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def ago(ts: timestamp_pb2.Timestamp) -> str:
    return f"{duration(max(0, int(time.time()) - ts.seconds))} ago" if ts.seconds else "-"


def when(ts: timestamp_pb2.Timestamp) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))
    return f"{at} ({ago(ts)})" if ts.seconds else "-"
