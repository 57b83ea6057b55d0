"""The `accord` command: `accord serve` runs a coordinator replica; the admin commands
(common.py, locks.py, votes.py, effects.py, auth.py, quotas.py, status.py) are client
programs that call a running service (except `accord auth bootstrap`, which writes the
first admin into etcd); `accord mcp` (mcp.py) serves the service as MCP tools to agent
hosts."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from accord.coordinator.cli.auth import audit_app, auth_app
from accord.coordinator.cli.effects import effects_app, runs_app
from accord.coordinator.cli.locks import deadlocks_app, leases_app, locks_app
from accord.coordinator.cli.mcp import mcp
from accord.coordinator.cli.quotas import QUOTA_NAMES, parse_quotas, quota_app
from accord.coordinator.cli.status import status
from accord.coordinator.cli.votes import votes_app
from accord.coordinator.settings import ConnectionLimits, ServerTls, Settings
from accord.coordinator.substrate.embedded_etcd import EtcdNotInstalled
from accord.coordinator.substrate.etcd import TlsFiles
from accord.coordinator.substrate.limits import DEFAULT_MAX_VALUE_BYTES, Limits

_CONNECTIONS = ConnectionLimits()  # the defaults the flags show


class AuthMode(StrEnum):
    required = "required"
    off = "off"


app = typer.Typer(
    help="Accord: a coordination service for fleets of LLM agents.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Accord: a coordination service for fleets of LLM agents."""


app.add_typer(locks_app, name="locks")
app.add_typer(leases_app, name="leases")
app.add_typer(deadlocks_app, name="deadlocks")
app.add_typer(votes_app, name="votes")
app.add_typer(effects_app, name="effects")
app.add_typer(runs_app, name="runs")
app.add_typer(auth_app, name="auth")
app.add_typer(audit_app, name="audit")
app.add_typer(quota_app, name="quota")
app.command("status")(status)
app.command("mcp")(mcp)


@app.command()
def serve(
    listen: Annotated[
        str, typer.Option(envvar="ACCORD_LISTEN", help="host:port to serve gRPC on")
    ] = "127.0.0.1:50051",
    ws_listen: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_WS_LISTEN",
            help="host:port to serve the y-websocket endpoint on (Yjs apps); empty: off",
        ),
    ] = "127.0.0.1:50052",
    etcd: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_ETCD",
            help="etcd endpoints host:port[,host:port...]; none: a private etcd in --data-dir",
        ),
    ] = "",
    data_dir: Annotated[
        Path, typer.Option(envvar="ACCORD_DATA_DIR", help="where the private etcd keeps its data")
    ] = Path("accord-data"),
    root: Annotated[
        str, typer.Option(envvar="ACCORD_ROOT", help="prefix of every etcd key Accord writes")
    ] = "accord",
    replica: Annotated[
        str, typer.Option(envvar="ACCORD_REPLICA", help="this replica's name in responses and logs")
    ] = "",
    log_level: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_LOG_LEVEL",
            help="debug logs every call; info logs failures and slow calls",
        ),
    ] = "info",
    max_value_bytes: Annotated[
        int, typer.Option(envvar="ACCORD_MAX_VALUE_BYTES")
    ] = DEFAULT_MAX_VALUE_BYTES,
    etcd_ca: Annotated[
        str, typer.Option(envvar="ACCORD_ETCD_CA", help="CA bundle: talk TLS to etcd")
    ] = "",
    etcd_cert: Annotated[str, typer.Option(envvar="ACCORD_ETCD_CERT")] = "",
    etcd_key: Annotated[str, typer.Option(envvar="ACCORD_ETCD_KEY")] = "",
    idempotency_ttl: Annotated[
        int,
        typer.Option(envvar="ACCORD_IDEMPOTENCY_TTL", help="seconds a request_id is remembered"),
    ] = 24 * 3600,
    effects_ttl: Annotated[
        int,
        typer.Option(
            envvar="ACCORD_EFFECTS_TTL",
            help="seconds effects, runs and journals are kept after their last change",
        ),
    ] = 7 * 24 * 3600,
    effects_max_per_run: Annotated[
        int,
        typer.Option(envvar="ACCORD_EFFECTS_MAX_PER_RUN", help="effects one run may hold"),
    ] = 10_000,
    session_idle: Annotated[
        float,
        typer.Option(
            envvar="ACCORD_SESSION_IDLE",
            help="seconds before an unused session is unloaded from memory",
        ),
    ] = 30.0,
    session_max_bytes: Annotated[
        int,
        typer.Option(
            envvar="ACCORD_SESSION_MAX_BYTES",
            help="bytes of encoded Yjs state one session may hold (0: no limit)",
        ),
    ] = 3 * 1024 * 1024,
    vote_admin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="ACCORD_VOTE_ADMINS",
            help="agent id that may cancel any vote (repeatable; default: admin)",
        ),
    ] = None,
    auth: Annotated[
        AuthMode,
        typer.Option(
            envvar="ACCORD_AUTH",
            help="required: every call needs a bearer token (see `accord auth bootstrap`); "
            "off: identity is whatever the caller claims (loopback only)",
        ),
    ] = AuthMode.off,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="ACCORD_INSECURE",
            help="with auth off, serve on a non-loopback address anyway",
        ),
    ] = False,
    tls_cert: Annotated[
        str, typer.Option(envvar="ACCORD_TLS_CERT", help="serve gRPC over TLS: certificate")
    ] = "",
    tls_key: Annotated[str, typer.Option(envvar="ACCORD_TLS_KEY", help="its private key")] = "",
    tls_client_ca: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_TLS_CLIENT_CA",
            help="require client certificates signed by this CA (mutual TLS); a verified "
            "certificate's CN names the caller's principal when it sends no token",
        ),
    ] = "",
    ws_allowed_origins: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_WS_ALLOWED_ORIGINS",
            help="browser origins whose pages may use the y-websocket endpoint, e.g. "
            "http://localhost:5173[,https://app.example.com]; none: no browser page "
            "(clients that send no Origin, such as agents and Node apps, need none)",
        ),
    ] = "",
    quota: Annotated[
        list[str] | None,
        typer.Option(
            envvar="ACCORD_QUOTAS",
            help="a default quota of every namespace, NAME=VALUE (repeatable; names: "
            f"{', '.join(QUOTA_NAMES)}); `accord quota set` overrides per namespace",
        ),
    ] = None,
    quotas: Annotated[
        bool,
        typer.Option(envvar="ACCORD_QUOTAS_ON", help="enforce namespace quotas and rates"),
    ] = True,
    rate_refusal_hold: Annotated[
        float,
        typer.Option(
            envvar="ACCORD_RATE_REFUSAL_HOLD",
            help="seconds a rate refusal may be held before it is answered, so a caller "
            "that ignores RetryInfo is paced by the replica (0: answer at once)",
        ),
    ] = 1.0,
    max_concurrent_rpcs: Annotated[
        int,
        typer.Option(
            envvar="ACCORD_MAX_CONCURRENT_RPCS",
            help="calls in progress on this replica beyond which gRPC refuses at once",
        ),
    ] = _CONNECTIONS.max_concurrent_rpcs,
    max_streams_per_connection: Annotated[
        int, typer.Option(envvar="ACCORD_MAX_STREAMS_PER_CONNECTION")
    ] = _CONNECTIONS.max_streams_per_connection,
    idle_connection_timeout: Annotated[
        float,
        typer.Option(
            envvar="ACCORD_IDLE_CONNECTION_TIMEOUT",
            help="seconds without a call before a connection is closed",
        ),
    ] = _CONNECTIONS.idle_connection_seconds,
    ws_sockets_per_session: Annotated[
        int, typer.Option(envvar="ACCORD_WS_SOCKETS_PER_SESSION")
    ] = _CONNECTIONS.ws_sockets_per_session,
    ws_sockets_per_address: Annotated[
        int, typer.Option(envvar="ACCORD_WS_SOCKETS_PER_ADDRESS")
    ] = _CONNECTIONS.ws_sockets_per_address,
    workers: Annotated[
        int,
        typer.Option(
            envvar="ACCORD_WORKERS",
            help="replica processes serving the same ports (SO_REUSEPORT), one per core to "
            "use; each is a replica of its own, named REPLICA-wI; without --etcd they share "
            "one private etcd",
        ),
    ] = 1,
    metrics_listen: Annotated[
        str,
        typer.Option(
            envvar="ACCORD_METRICS_LISTEN",
            help="host:port to serve Prometheus /metrics on (no authentication: its labels "
            "name namespaces, so loopback or a private interface); empty: off, and no "
            "metric is kept; with --workers N, worker i serves on port+i",
        ),
    ] = "",
    metrics_max_namespaces: Annotated[
        int,
        typer.Option(
            envvar="ACCORD_METRICS_MAX_NAMESPACES",
            help="namespaces labelled by name in metrics; the rest are counted as _other",
        ),
    ] = 100,
    error_details_budget: Annotated[
        int,
        typer.Option(
            envvar="ACCORD_ERROR_DETAILS_BUDGET",
            help="bytes an error may take in gRPC trailers (standard clients refuse more "
            "than 8 KiB): longer details are cut, saying what was cut and where to read it",
        ),
    ] = 8 * 1024,
) -> None:
    """Run a coordinator replica (or --workers of them) until SIGTERM or SIGINT."""
    from accord.coordinator.server import run_loop
    from accord.coordinator.server import serve as run
    from accord.coordinator.workers import PortInUse, supervise

    if not 2048 <= error_details_budget <= 1024 * 1024:
        raise typer.BadParameter(
            "must be between 2048 and 1048576", param_hint="--error-details-budget"
        )
    if not 0 <= rate_refusal_hold <= 10:
        raise typer.BadParameter("must be between 0 and 10", param_hint="--rate-refusal-hold")
    if not 1 <= metrics_max_namespaces <= 10_000:
        raise typer.BadParameter(
            "must be between 1 and 10000", param_hint="--metrics-max-namespaces"
        )
    if metrics_listen and not _is_address(metrics_listen):
        raise typer.BadParameter("must be host:port", param_hint="--metrics-listen")
    if not 1 <= workers <= 64:
        raise typer.BadParameter("must be between 1 and 64", param_hint="--workers")
    if effects_ttl < 60:
        raise typer.BadParameter("must be at least 60 seconds", param_hint="--effects-ttl")
    if effects_max_per_run < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--effects-max-per-run")
    if not 0 < max_value_bytes <= 1024 * 1024:
        raise typer.BadParameter("must be between 1 and 1048576", param_hint="--max-value-bytes")
    settings = Settings(
        listen=listen,
        ws_listen=ws_listen,
        etcd_endpoints=tuple(e.strip() for e in etcd.split(",") if e.strip()),
        etcd_tls=TlsFiles(etcd_ca, etcd_cert or None, etcd_key or None) if etcd_ca else None,
        data_dir=data_dir,
        root=root,
        replica=replica,
        log_level=log_level,
        limits=Limits(max_value_bytes=max_value_bytes),
        idempotency_ttl_seconds=idempotency_ttl,
        effects_ttl_seconds=effects_ttl,
        effects_max_per_run=effects_max_per_run,
        session_idle_seconds=session_idle,
        session_max_bytes=session_max_bytes,
        vote_admins=tuple(vote_admin) if vote_admin else ("admin",),
        auth_required=auth is AuthMode.required,
        insecure=insecure,
        ws_allowed_origins=tuple(o.strip() for o in ws_allowed_origins.split(",") if o.strip()),
        error_details_budget=error_details_budget,
        workers=workers,
        metrics_listen=metrics_listen,
        metrics_max_namespaces=metrics_max_namespaces,
        tls=ServerTls(Path(tls_cert), Path(tls_key), Path(tls_client_ca) if tls_client_ca else None)
        if tls_cert
        else None,
        quotas=parse_quotas(quota or []) if quotas else None,
        rate_refusal_hold_seconds=rate_refusal_hold,
        connections=ConnectionLimits(
            max_concurrent_rpcs=max_concurrent_rpcs,
            max_streams_per_connection=max_streams_per_connection,
            idle_connection_seconds=idle_connection_timeout,
            ws_sockets_per_session=ws_sockets_per_session,
            ws_sockets_per_address=ws_sockets_per_address,
        ),
    )
    if bool(tls_cert) != bool(tls_key) or (tls_client_ca and not tls_cert):
        typer.echo(
            "accord: --tls-cert and --tls-key go together (and --tls-client-ca needs them)",
            err=True,
        )
        raise typer.Exit(2)
    problem = settings.exposure_problem()
    if problem is not None:
        typer.echo(f"accord: {problem}", err=True)
        raise typer.Exit(2)
    try:
        if workers == 1:
            run_loop(run(settings))
        else:
            raise typer.Exit(run_loop(supervise(settings)))
    except (EtcdNotInstalled, PortInUse) as exc:
        typer.echo(f"accord: {exc}", err=True)
        raise typer.Exit(2) from exc


def _is_address(address: str) -> bool:
    """Whether address reads host:port with a port number."""
    port = address.rpartition(":")[2]
    return ":" in address and port.isdigit() and int(port) <= 65535
