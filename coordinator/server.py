"""Assemble and run one coordinator replica.

A replica holds no state of its own: everything lives in etcd, so any number of replicas
over one etcd cluster behave as one service, and any of them may die at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from accord.coordinator import logs
from accord.coordinator.auth.cache import AuthCache
from accord.coordinator.auth.refusals import RefusalLog
from accord.coordinator.auth.service import AuthService
from accord.coordinator.auth.store import AuthStore
from accord.coordinator.batch_gate import OpGate
from accord.coordinator.effects.compensation import Compensations
from accord.coordinator.effects.ledger import Ledger
from accord.coordinator.effects.outcomes import Outcomes
from accord.coordinator.effects.runs import Runs
from accord.coordinator.effects.service import EffectsService
from accord.coordinator.effects.store import EffectStore
from accord.coordinator.interceptor import CallInterceptor
from accord.coordinator.kv.service import KVService
from accord.coordinator.kv.store import KVStore
from accord.coordinator.leases.service import LeasesService
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.admin import LockAdmin
from accord.coordinator.locks.deadlocks import DeadlockDetector
from accord.coordinator.locks.fencing import Fencing
from accord.coordinator.locks.service import LocksService
from accord.coordinator.locks.store import LockStore
from accord.coordinator.observability import accord_metrics, metrics, tracing
from accord.coordinator.observability.metrics_http import MetricsServer
from accord.coordinator.observability.status import CallLoad, StatusSources
from accord.coordinator.observability.status_service import ReplicasService
from accord.coordinator.quotas import Admission, QuotaLimits, QuotaStore, UsageBook
from accord.coordinator.quotas.service import QuotasService
from accord.coordinator.quotas.sockets import SocketCounts
from accord.coordinator.sessions.catalog import SessionCatalog
from accord.coordinator.sessions.service import SessionsService
from accord.coordinator.sessions.store import SessionStore
from accord.coordinator.sessions.y_websocket import YWebsocketServer
from accord.coordinator.settings import ServerTls, Settings
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.embedded_etcd import EmbeddedEtcd
from accord.coordinator.substrate.errors import AccordError, set_trailer_budget
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.votes.feeds import VoteFeeds
from accord.coordinator.votes.service import VotesService
from accord.coordinator.votes.store import VoteStore
from accord.coordinator.votes.timers import VoteTimers
from accord.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    effects_pb2,
    effects_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    locks_pb2,
    locks_pb2_grpc,
    quotas_pb2,
    quotas_pb2_grpc,
    replicas_pb2,
    replicas_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
    votes_pb2,
    votes_pb2_grpc,
)

_log = logs.get("accord.server")
SERVICES = [
    kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name,
    leases_pb2.DESCRIPTOR.services_by_name["Leases"].full_name,
    locks_pb2.DESCRIPTOR.services_by_name["Locks"].full_name,
    sessions_pb2.DESCRIPTOR.services_by_name["Sessions"].full_name,
    votes_pb2.DESCRIPTOR.services_by_name["Votes"].full_name,
    effects_pb2.DESCRIPTOR.services_by_name["Effects"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name,
    quotas_pb2.DESCRIPTOR.services_by_name["Quotas"].full_name,
    replicas_pb2.DESCRIPTOR.services_by_name["Replicas"].full_name,
]
HEALTH_INTERVAL_SECONDS = 2.0
GC_THRESHOLDS = (10_000, 10, 10)
HEALTH_PROBE_SECONDS = 5.0
# Probes in a row that find no leader before NOT_SERVING: an election takes about one.
LEADERLESS_PROBES = 2
T = TypeVar("T")


class Replica:
    """One running coordinator: its gRPC server and the etcd session it serves from."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedEtcd | None = None
        self.server: grpc.aio.Server | None = None
        self.etcd: Etcd | None = None
        self.substrate: Substrate | None = None
        self.sessions: SessionStore | None = None
        self.vote_feeds: VoteFeeds | None = None
        self.vote_timers: VoteTimers | None = None
        self.auth: AuthCache | None = None
        self.refusals: RefusalLog | None = None
        self.usage: UsageBook | None = None
        self.admission: Admission | None = None
        self.port = 0
        self.ws: YWebsocketServer | None = None
        self.ws_port = 0  # the y-websocket endpoint's bound port (0: not serving it)
        self._health = HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None
        # What `accord status` reads: calls counted by the interceptor, the y-websocket
        # sockets, and the health loop's last verdict (None: not probed yet).
        self.load = CallLoad()
        self.sockets = SocketCounts(
            settings.connections.ws_sockets_per_session,
            settings.connections.ws_sockets_per_address,
        )
        self.serving: bool | None = None
        self.started_at = (time.time(), time.monotonic())

    async def start(self) -> None:
        settings = self.settings
        problem = settings.exposure_problem()
        if problem is not None:
            raise RuntimeError(problem)
        endpoints = settings.etcd_endpoints
        if not endpoints:
            self.embedded = EmbeddedEtcd(settings.data_dir)
            endpoints = (await self.embedded.start(),)
        self.etcd = Etcd(endpoints, tls=settings.etcd_tls)
        await self._wait_for_etcd()
        # substrate -> stores -> services: every store stands on the one substrate.
        self.substrate = substrate = Substrate.over(
            self.etcd,
            root=settings.root,
            limits=settings.limits,
            retention_ttl=settings.idempotency_ttl_seconds,
            group_commit_in_flight=settings.group_commit_in_flight,
        )
        await self._start_auth()  # before the stores: votes read granted labels from it
        leases = LeaseStore(substrate)
        locks = LockStore(substrate, leases)
        lock_admin = LockAdmin(substrate, locks)
        deadlocks = DeadlockDetector(substrate, locks)
        locks.deadlocks = deadlocks
        fencing = Fencing(substrate)
        store = KVStore(substrate, leases, fencing)
        catalog = SessionCatalog(substrate)
        self.sessions = SessionStore(
            substrate,
            leases,
            fencing,
            idle_seconds=settings.session_idle_seconds,
            max_bytes=settings.session_max_bytes,
        )
        votes = VoteStore(
            substrate,
            leases,
            fencing,
            admin_agents=settings.vote_admins,
            granted_labels=self.auth.labels_of if self.auth else None,
        )
        self.vote_feeds = VoteFeeds(substrate, votes.decisions)
        self.vote_timers = VoteTimers(substrate, votes.decisions)
        # Each call, and each operation of a batch, is admitted by the quotas (or not).
        gate = OpGate(await self._start_quotas(), self.refusals)

        self.server = grpc.aio.server(
            interceptors=[
                CallInterceptor(
                    self.auth,
                    client_certificates=settings.tls is not None
                    and settings.tls.client_ca is not None,
                    refusals=self.refusals,
                    admission=gate.admission,
                    load=self.load,
                )
            ],
            options=[
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                # Keepalive enforcement: a client pinging more often than this is sent
                # GOAWAY (too_many_pings) after a couple of strikes.
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.http2.max_ping_strikes", 2),
                ("grpc.max_concurrent_streams", settings.connections.max_streams_per_connection),
                (
                    "grpc.max_connection_idle_ms",
                    int(settings.connections.idle_connection_seconds * 1000),
                ),
                # gRPC's default on Linux, said for the workers, whose ports are shared.
                *([("grpc.so_reuseport", 1)] if settings.workers > 1 else []),
            ],
            # Beyond this many calls in progress, gRPC refuses at once (RESOURCE_EXHAUSTED).
            maximum_concurrent_rpcs=settings.connections.max_concurrent_rpcs,
        )
        if settings.tls is None:
            self.port = self.server.add_insecure_port(settings.listen)
        else:
            self.port = self.server.add_secure_port(settings.listen, _credentials(settings.tls))
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {settings.listen}")
        replica = settings.replica or f"{socket.gethostname()}:{self.port}"
        self.settings = replace(settings, replica=replica)
        tracing.configure(replica)  # when OTEL_* asks for traces: before the first call
        kv_pb2_grpc.add_KVServicer_to_server(KVService(store, replica, gate), self.server)
        leases_pb2_grpc.add_LeasesServicer_to_server(
            LeasesService(leases, lock_admin, replica), self.server
        )
        locks_pb2_grpc.add_LocksServicer_to_server(
            LocksService(locks, lock_admin, deadlocks, replica), self.server
        )
        sessions_pb2_grpc.add_SessionsServicer_to_server(
            SessionsService(catalog, self.sessions, replica), self.server
        )
        votes_pb2_grpc.add_VotesServicer_to_server(
            VotesService(votes, self.vote_feeds, replica, gate), self.server
        )
        self._add_effects(fencing, replica, gate)
        self._add_admin_services(replica)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            [
                *SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        await self.server.start()
        if settings.ws_listen:
            await self._start_ws(catalog, leases)
        self.vote_timers.start()
        self._health_task = asyncio.create_task(self._watch_health())
        _log.info(
            "coordinator serving",
            listen=f"{settings.listen.rpartition(':')[0]}:{self.port}",
            ws_listen=f"{settings.ws_listen.rpartition(':')[0]}:{self.ws_port}"
            if self.ws
            else "off",
            replica=replica,
            auth="required" if self.auth else "off",
            tls="mutual"
            if settings.tls and settings.tls.client_ca
            else "on"
            if settings.tls
            else "off",
            etcd=list(endpoints),
            embedded_etcd=self.embedded is not None,
        )

    def serve_metrics(self) -> None:
        """Serve /metrics (--metrics-listen), from a thread of its own; before start(), so
        a scrape sees a replica still waiting for etcd."""
        if self.settings.metrics_listen:
            self.metrics = MetricsServer(self.settings.metrics_listen)
            self.metrics.start()
            _log.info("metrics serving", metrics=f"http://{self.metrics.address}/metrics")

    def _add_effects(self, fencing: Fencing, replica: str, gate: OpGate) -> None:
        """The effect ledger, on a retention lease of its own (--effects-ttl)."""
        assert self.server is not None and self.substrate is not None
        settings = self.settings
        ledger = Ledger.over(
            self.substrate,
            ttl=settings.effects_ttl_seconds,
            max_per_run=settings.effects_max_per_run,
        )
        runs = Runs(ledger)
        quotas = self.admission if settings.quotas is not None else None
        service = EffectsService(
            EffectStore(ledger, fencing, quotas),
            Outcomes(ledger, fencing),
            runs,
            Compensations(ledger, runs),
            replica,
            gate,
        )
        effects_pb2_grpc.add_EffectsServicer_to_server(service, self.server)

    def _add_admin_services(self, replica: str) -> None:
        """Auth and Quotas: administrative writes, straight to etcd with their audit;
        Replicas: this replica's status."""
        assert self.server is not None and self.etcd is not None
        assert self.substrate is not None and self.admission is not None
        writes, keys = self.substrate.writes, self.substrate.keys
        auth_pb2_grpc.add_AuthServicer_to_server(
            AuthService(AuthStore(writes, self.etcd, keys), self.auth, replica), self.server
        )
        quotas_pb2_grpc.add_QuotasServicer_to_server(
            QuotasService(QuotaStore(writes, self.etcd, keys), self.admission), self.server
        )
        sources = StatusSources(
            replica=replica,
            etcd=self.etcd,
            committer=self.substrate.committer,
            load=self.load,
            sockets=self.sockets,
            serving=lambda: self.serving,
            started_at=self.started_at[0],
            started_monotonic=self.started_at[1],
        )
        replicas_pb2_grpc.add_ReplicasServicer_to_server(ReplicasService(sources), self.server)
        self.load.start()  # its minute of calls per namespace turns from now

    async def _start_quotas(self) -> Admission | None:
        """Count every namespace's usage from etcd before serving, so the first calls are
        checked; then follow it. Returns the admission calls go through (None: quotas
        off)."""
        assert self.etcd is not None and self.substrate is not None
        # With quotas off nothing reads the counts but Quotas.Get, which then reads etcd:
        # no replica follows every write in every namespace for nothing.
        self.usage = UsageBook(
            self.etcd,
            self.substrate.keys,
            self.settings.quotas or QuotaLimits(),
            counting=self.settings.quotas is not None,
        )
        await self.usage.start()
        self.admission = Admission(
            self.usage,
            by_principal=self.auth is not None,
            hold=self.settings.rate_refusal_hold_seconds,
        )
        return self.admission if self.settings.quotas is not None else None

    async def _start_auth(self) -> None:
        """Load the credentials (auth required), or say loudly that there are none."""
        assert self.etcd is not None and self.substrate is not None
        if self.settings.auth_required:
            self.auth = AuthCache(self.etcd, self.substrate.keys)
            await self.auth.start()
            self.refusals = RefusalLog(self.substrate.writes, self.substrate.keys)
            self.refusals.start()
            return
        _log.warning(
            "AUTH IS OFF: every caller can act as any agent in any namespace; serve "
            "with --auth required (see `accord auth bootstrap`) for anything but a "
            "single-user machine",
            listen=self.settings.listen,
            insecure=self.settings.insecure,
        )

    async def _wait_for_etcd(self, timeout: float = 30.0) -> None:
        """Start serving only once etcd answers a real request, not merely accepts TCP."""
        assert self.etcd is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while True:
            try:
                await asyncio.wait_for(self.etcd.status(), 2.0)
                return
            except (AccordError, TimeoutError) as exc:
                if loop.time() + delay > deadline:
                    raise RuntimeError(
                        f"etcd at {', '.join(self.etcd.endpoints)} did not answer within "
                        f"{timeout:.0f}s: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _watch_health(self) -> None:
        """Report SERVING while etcd is reachable; load balancers and clients can steer
        away from a replica that cannot serve. Never from load: etcd is probed from a
        thread, over connections of its own (Etcd.leader_seen), so a replica whose event
        loop is busy with a storm of calls still sees etcd answer and stays SERVING (its
        callers get answers late, or pushback). NOT_SERVING when etcd refuses, is unreachable or
        does not answer within HEALTH_PROBE_SECONDS, when no member that answers knows a
        leader twice in a row (etcd lost its quorum: nothing can be written; once is an
        election), and while shutting down (stop()). The same probe feeds accord_etcd_up
        and accord_etcd_leader_changes_total (a leader named that differs from the last
        one named)."""
        assert self.etcd is not None
        serving: bool | None = None
        leader = 0
        leaderless = 0
        while True:
            seen = await asyncio.to_thread(self.etcd.leader_seen, HEALTH_PROBE_SECONDS)
            leaderless = leaderless + 1 if seen == 0 else 0
            ok = seen is not None and leaderless < LEADERLESS_PROBES
            changed = bool(seen) and bool(leader) and seen != leader
            leader = seen or leader
            accord_metrics.etcd_health(ok, changed)
            if ok != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ["", *SERVICES]:
                    await self._health.set(name, status)
                _log.info("health changed", serving=ok)
                serving = self.serving = ok
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)

    async def _start_ws(self, catalog: SessionCatalog, leases: LeaseStore) -> None:
        settings = self.settings
        assert self.sessions is not None
        self.ws = YWebsocketServer(
            catalog,
            self.sessions,
            leases,
            auth=self.auth,
            allowed_origins=settings.ws_allowed_origins,
            refusals=self.refusals,
            sockets=self.sockets,
        )
        self.ws_port = await self.ws.start(
            settings.ws_listen, _ws_tls(settings.tls), reuse_port=settings.workers > 1
        )

    async def stop(self) -> None:
        self.load.stop()
        if self._health_task:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.ws:  # first: closing sockets revokes their presence leases, through etcd
            await self.ws.stop()
        if self.server:
            await self._health.enter_graceful_shutdown()
            if self.sessions:  # long-lived streams would hold up the drain
                self.sessions.end_streams()
            if self.vote_feeds:
                self.vote_feeds.end_streams()
            await self.server.stop(self.settings.shutdown_grace_seconds)
        if self.sessions:
            await self.sessions.close()
        if self.vote_timers:
            await self.vote_timers.close()
        if self.auth:
            await self.auth.close()
        if self.refusals:
            await self.refusals.close()
        if self.usage:
            await self.usage.close()
        if self.substrate:
            committer = self.substrate.committer
            _log.info("group commit totals", batches=committer.batches, writes=committer.writes)
            await self.substrate.close()
        if self.etcd:
            await self.etcd.close()
        if self.embedded:
            await self.embedded.stop()
        if self.metrics:
            await asyncio.to_thread(self.metrics.stop)  # waits for its thread's next poll
        await asyncio.to_thread(tracing.shutdown)  # the spans still queued are exported
        _log.info("coordinator stopped", replica=self.settings.replica)


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """TLS with this replica's certificate; with a client CA, client certificates signed
    by it are required (a handshake without one fails before any call)."""
    client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _ws_tls(tls: ServerTls | None) -> ssl.SSLContext | None:
    """wss:// for the y-websocket endpoint, with the gRPC port's certificate. With a client
    CA, a client certificate it signed identifies a socket that brings no token; it is
    optional there (browsers present none and authenticate with their token), and one
    from another CA fails the handshake."""
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop where it is installed (a measured ~10% less CPU per call), asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def serve(settings: Settings, ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and stop; ready() is
    called once the replica serves (a worker tells its supervisor so)."""
    logs.configure(settings.log_level)
    set_trailer_budget(settings.error_details_budget)  # every error of this process
    metrics.configure(
        enabled=bool(settings.metrics_listen), max_namespaces=settings.metrics_max_namespaces
    )
    replica = Replica(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        replica.serve_metrics()
        await replica.start()
        # Long-lived objects (modules, stubs, descriptors) leave the collector's view.
        # Thresholds count Python objects, not bytes: a refused request's megabytes sit in
        # a few objects, so no setting bounds memory kept by a cycle (those are cut where
        # they form: interceptor._abort). These bound how long other cyclic garbage lives:
        # a full collection is considered every ~1M net allocations (it was ~20M), at no
        # measurable CPU cost per call (README, "Memory and garbage collection").
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if ready is not None:
            ready()
        await stop.wait()
        _log.info("shutting down", replica=replica.settings.replica)
    finally:
        await replica.stop()
