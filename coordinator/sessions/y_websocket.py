"""The y-websocket endpoint: unmodified Yjs apps (npm yjs + y-websocket) join the same
sessions agents edit over gRPC.

URL: ``ws://HOST:PORT/{namespace}/{session}?agent=NAME``. A y-websocket client builds it
as ``serverUrl + '/' + room``, so ``new WebsocketProvider('ws://HOST:PORT/team-a', 'plan',
doc, {params: {agent: 'alice'}})`` joins session "plan" of namespace "team-a". The session
name is percent-decoded and may contain '/'; namespace and agent follow the gRPC metadata
rules (calls.identity_from_metadata); agent is optional, as over gRPC. The session is
created when missing.

Protocol (y-protocols): both sides send sync step 1 and answer the other's with sync
step 2; updates flow both ways as sync update messages; awareness messages carry presence.
Everything a socket sends goes through SessionStore like a gRPC call (validated, durable
in etcd before it reaches anyone else); everything it receives comes from a store
subscription, so sockets on different replicas see each other and the gRPC agents.

Presence: a socket's awareness states are stored with SessionStore.put_presence on a lease
the replica grants for the connection (PRESENCE_TTL_SECONDS, kept alive while the socket
is open, revoked when it closes; if the replica dies the lease expires), so they vanish
for everyone with the socket. Awareness clocks sent to Yjs apps are etcd revisions. An
app that reconnects (to any replica) with its client id takes that id over from its old
connection's lease, which a crashed replica leaves behind until it expires; only the same
agent may (not another one, nor an anonymous connection).

Traces (when exported, observability/tracing.py): a connection is one span, parented to
the W3C context of its URL's ``traceparent`` and ``tracestate`` parameters (y-websocket
sends ``params`` as query parameters); ignored when malformed or too long. Whether
exported or not, that context (and a ``baggage`` parameter) is recorded with each update
the socket pushes, so gRPC subscribers see it (observability/trace_context.py); updates
sent to a socket carry none (the Yjs sync protocol has no place for it).

With `--tls-cert` the endpoint serves wss:// with the gRPC port's certificate, so a
token in the URL never crosses the network in clear.

Credentials (auth required): the bearer token comes as ``?token=acc1....`` (browsers
cannot set headers; y-websocket sends ``params``) or as the WebSocket subprotocol
(``new WebSocket(url, [token])``: kept out of URLs and their logs). It must allow the
agent (``agent=``, default the token's principal) and READ in the namespace to connect; updates need
WRITE (a read-only socket's awareness is not stored, and an update from it closes it
with 4403), and so does creating a missing session. A socket ends when its token is
revoked or expires (4401) or its role is taken back (4403), like a gRPC stream. Browser
pages must come from an origin in ``--ws-allowed-origins`` (checked by the handshake: a
request with any other Origin header gets HTTP 403); clients that send no Origin
(agents, Node) are not browsers and are let through to the token check.

Close codes: 4400 for bad input (URL, identity, session name, a malformed message, an
update the store refuses), 4401 without a valid token, 4403 for a missing role or agent,
4404 when the session is deleted, and 4413 when an update would take the document past
`--session-max-bytes` (or the document is already too large to send, sizes.py):
y-websocket does not reconnect on 44xx. 1011 for
a transient failure (etcd unavailable, presence lease lost), 1001 when the replica
stops, 1013 at once when the session or the remote address already has as many sockets
on this replica as `--ws-sockets-per-session` / `--ws-sockets-per-address` allow
(quotas.sockets): the client reconnects. Bad input closes only its own socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Sequence
from dataclasses import replace
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

from pycrdt import (
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_update_message,
    write_message,
    write_var_uint,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

from accord.coordinator import logs
from accord.coordinator.auth import roles, tokens
from accord.coordinator.auth.cache import AuthCache
from accord.coordinator.auth.refusals import RefusalLog
from accord.coordinator.auth.streams import Revocation
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.observability import accord_metrics, trace_context, tracing
from accord.coordinator.quotas.sockets import TRY_AGAIN_LATER, SocketCounts
from accord.coordinator.sessions.catalog import SessionCatalog
from accord.coordinator.sessions.lib0 import Fault, Reader
from accord.coordinator.sessions.store import MAX_PRESENCE_BYTES, MAX_UPDATE_BYTES, SessionStore
from accord.coordinator.substrate import calls, strict_json
from accord.coordinator.substrate.errors import (
    AccordError,
    BadIdentity,
    ConditionFailed,
    InvalidArgument,
    LeaseNotFound,
    NotFound,
    PermissionDenied,
    SessionTooLarge,
    Unauthenticated,
)
from accord.v1 import records_pb2, sessions_pb2

_log = logs.get("accord.y_websocket")

PRESENCE_TTL_SECONDS = 10
# y-websocket's "send me every awareness state"; 2 (auth) only ever goes to clients.
QUERY_AWARENESS = 3
# A client's first message is its sync step 1 (y-websocket sends it on open); one silent
# this long gets the whole state unasked, which is just as correct.
HELLO_SECONDS = 1.0
MAX_AWARENESS_ENTRIES = 256
EMPTY_UPDATE = b"\x00\x00"
BAD_INPUT = 4400
UNAUTHENTICATED = 4401
FORBIDDEN = 4403
SESSION_GONE = 4404
SESSION_TOO_LARGE = 4413  # the document is over its size limit: reconnecting cannot help
# How the authorization table names a socket's connect and its writes (ws is no RPC).
WS_CONNECT = "y-websocket connect"
WS_WRITE = "y-websocket update"
TRY_AGAIN = 1011
GOING_AWAY = 1001
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes


class Refused(Exception):
    """End this connection with a close code and a reason the client can read."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _bad(reason: str) -> Refused:
    return Refused(BAD_INPUT, reason)


# y-protocols messages carry JavaScript numbers: at most 2^53, 8 lib0 bytes (9 allowed).
_MAX_INTEGER_BYTES = 9
_MESSAGES = {
    Fault.TRUNCATED: "truncated message",
    Fault.LONG_INTEGER: "malformed message: a number is too long",
    Fault.NOT_UTF8: "malformed message: a string is not UTF-8",
    Fault.TRAILING: "malformed message: trailing bytes",
}


def _reader(data: bytes) -> Reader:
    """A bounds-checked reader of one message (pycrdt's Decoder reads past a truncated one)
    that refuses bad bytes with 4400."""
    return Reader(data, lambda fault: _bad(_MESSAGES[fault]), max_integer_bytes=_MAX_INTEGER_BYTES)


def parse_path(path: str) -> tuple[str, str, str]:
    """(namespace, session, agent) from a request path, validated like gRPC metadata."""
    parts = urlsplit(path)
    namespace, _, session = parts.path.lstrip("/").partition("/")
    if not namespace or not session:
        raise _bad("connect to /{namespace}/{session}[?agent=NAME]")
    agent = _single(parse_qs(parts.query), "agent")
    try:
        namespace, agent = calls.identity_from_metadata(
            {calls.NAMESPACE_METADATA: namespace, calls.AGENT_METADATA: agent}
        )
    except BadIdentity as exc:  # worded for gRPC metadata: name the URL parts instead
        message = exc.message.replace("metadata ", "", 1)
        message = message.replace(calls.NAMESPACE_METADATA, "namespace")
        raise _bad(message.replace(calls.AGENT_METADATA, "agent")) from None
    return namespace, unquote(session), agent


def _single(query: dict[str, list[str]], name: str) -> str:
    """A query parameter given at most once (twice: which one counts would be a guess)."""
    values = query.get(name, [""])
    if len(values) > 1:
        raise _bad(f"the URL gives {name}= more than once")
    return values[0]


def parse_token(path: str, subprotocol: str | None = None) -> str:
    """The bearer token of a request path's ?token=, or the WebSocket subprotocol the
    handshake chose for it (a browser's `new WebSocket(url, [token])`), or
    Unauthenticated."""
    token = _single(parse_qs(urlsplit(path).query), "token")
    if token and subprotocol and token != subprotocol:
        raise _bad("the URL and Sec-WebSocket-Protocol name different tokens")
    token = token or subprotocol or ""
    if not token:
        raise Unauthenticated(
            "this endpoint requires a token: add ?token=<token> to the URL, or offer it as "
            "the WebSocket subprotocol"
        )
    return token


def has_token(path: str, subprotocol: str | None) -> bool:
    return bool(subprotocol) or "token" in parse_qs(urlsplit(path).query)


def _certificate_name(socket: ServerConnection) -> str | None:
    """The CN of the client certificate the TLS handshake verified (wss:// with a client
    CA: certificates are optional there, since browsers present none)."""
    cert = socket.transport.get_extra_info("peercert")
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _peer(socket: ServerConnection) -> str:
    """The socket's address, written as gRPC writes a peer's."""
    host, port = socket.remote_address[:2]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def token_subprotocol(_: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Choose the offered subprotocol that is an Accord token (the handshake echoes it,
    as browsers require), if any; a client that offers none is not asked for one."""
    return next((p for p in offered if p.startswith(tokens.PREFIX + ".")), None)


def sync_message(step: YSyncMessageType, payload: bytes) -> bytes:
    return bytes([YMessageType.SYNC, step]) + write_message(payload)


def awareness_update(entries: list[tuple[int, int, str]]) -> bytes:
    """A y-protocols awareness update: (client id, clock, JSON state or "null") each."""
    out = [write_var_uint(len(entries))]
    for client_id, clock, state in entries:
        out += [write_var_uint(client_id), write_var_uint(clock), write_message(state.encode())]
    return b"".join(out)


class YWebsocketServer:
    """Serves y-websocket connections for one replica; owns its listening socket."""

    def __init__(
        self,
        catalog: SessionCatalog,
        sessions: SessionStore,
        leases: LeaseStore,
        *,
        auth: AuthCache | None = None,
        allowed_origins: tuple[str, ...] = (),
        refusals: RefusalLog | None = None,
        sockets: SocketCounts | None = None,
    ) -> None:
        """auth: the credentials every socket must present (None: auth off);
        allowed_origins: the browser origins that may connect (none: no browser page);
        refusals: where sockets refused on authorization grounds are logged;
        sockets: the limits on sockets per session and per address (None: none)."""
        self._catalog = catalog
        self._sessions = sessions
        self._leases = leases
        self._auth = auth
        self._origins = allowed_origins
        self._refusals = refusals
        self._server: Server | None = None
        self._sockets = sockets

    async def start(
        self, listen: str, tls: ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        """Listen on host:port (port 0: any free one), over TLS (wss://) with tls, sharing
        the port with other processes that listen with reuse_port (SO_REUSEPORT: workers);
        returns the bound port."""
        host, _, port = listen.rpartition(":")
        self._server = await serve(
            self._serve,
            host.strip("[]") or None,
            int(port),
            ssl=tls,
            select_subprotocol=token_subprotocol,
            max_size=MAX_UPDATE_BYTES + 1024,
            # No Origin: not a browser. A browser page only from an allowed origin, so a
            # page the user happens to open cannot read or rewrite sessions.
            origins=[None, *(Origin(o) for o in self._origins)],
            compression=None,  # small binary updates: deflate costs CPU and latency for little
            reuse_port=reuse_port,
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Close every socket (1001: clients reconnect, maybe elsewhere) and wait for their
        handlers, which revoke their presence leases."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, socket: ServerConnection) -> None:
        counted, refused = self._count_in(socket)
        if refused is not None:  # over a socket limit: come back later
            await socket.close(TRY_AGAIN_LATER, refused[:_MAX_REASON_BYTES])
            return
        connection = _Connection(
            socket, self._catalog, self._sessions, self._leases, self._auth, self._refusals
        )
        try:
            with accord_metrics.Open(accord_metrics.Y_WEBSOCKET):
                if tracing.STATE.tracer is None or socket.request is None:
                    await connection.run()
                else:  # a span parented to the URL's traceparent, if any
                    path = socket.request.path
                    with tracing.connection_span(path, parse_qsl(urlsplit(path).query)):
                        await connection.run()
        finally:
            if counted is not None and self._sockets is not None:
                self._sockets.leave(*counted)

    def _count_in(self, socket: ServerConnection) -> tuple[tuple[str, str] | None, str | None]:
        """The (session, address) the socket is counted under (None: not counted: no
        limits, or a bad path its connection refuses), or the reason it is refused."""
        if self._sockets is None or socket.request is None:
            return None, None
        try:
            namespace, name, _ = parse_path(socket.request.path)
        except Exception:
            return None, None
        counted = f"{namespace}/{name}", str(socket.remote_address[0])
        refused = self._sockets.enter(*counted)
        return (None, refused) if refused is not None else (counted, None)


class _Connection:
    def __init__(
        self,
        socket: ServerConnection,
        catalog: SessionCatalog,
        sessions: SessionStore,
        leases: LeaseStore,
        auth: AuthCache | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.socket = socket
        self.auth = auth
        self.refusals = refusals
        self.may_write = True  # auth off, or a principal with WRITE in the namespace
        self.revocation: Revocation | None = None
        self.ending: asyncio.Task[None] | None = None  # closes the socket on revocation
        self.catalog = catalog
        self.sessions = sessions
        self.leases = leases
        self.name = ""
        self.agent = ""
        self.lease_id = 0
        self.keepalive: asyncio.Task[None] | None = None
        # Awareness client ids this socket speaks for, and those we told it about (a
        # y-websocket client sends the states it received back: those are not its own).
        self.owned: set[int] = set()
        self.relayed: set[int] = set()
        self.awareness_seen = False
        # Updates this socket pushed, so the subscription does not echo them back.
        self.pushed: deque[bytes] = deque(maxlen=64)

    async def run(self) -> None:
        relay: asyncio.Task[None] | None = None
        try:
            assert self.socket.request is not None
            namespace, self.name, self.agent = parse_path(self.socket.request.path)
            query = dict(parse_qsl(urlsplit(self.socket.request.path).query))
            call = calls.Call(
                namespace=namespace,
                agent_id=self.agent,
                trace_id=f"ws-{uuid.uuid4().hex[:12]}",
                deadline=None,
                # The URL's W3C context: recorded with every update the socket pushes.
                trace_context=trace_context.from_metadata(query),
            )
            calls.current.set(call)
            if self.auth is not None:
                call = replace(call, peer=_peer(self.socket))
                calls.current.set(call)  # a refusal is audited with the socket's address
                await self._admit(call)
            await self.catalog.open(self.name, must_exist=not self.may_write, roots={})
            state_vector = await self._hello()
            relay = asyncio.create_task(self._guarded(self._relay(state_vector)))
            while True:
                await self._handle(await self._recv())
        except Exception as exc:
            await self._end(exc)
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(BaseException):
                    await relay
            if self.ending is not None:
                self.ending.cancel()
            if self.auth is not None and self.revocation is not None:
                self.auth.forget(self.revocation)
            await self._release_lease()

    async def _admit(self, call: calls.Call) -> None:
        """Check the socket's token (or, without one, its verified client certificate),
        agent and role as the interceptor does a call's, and keep following them: the
        socket ends when they stop allowing it."""
        assert self.auth is not None and self.socket.request is not None
        certified = _certificate_name(self.socket)
        path, offered = self.socket.request.path, self.socket.subprotocol
        if certified is not None and not has_token(path, offered):
            verified = await self.auth.verify_certificate(certified)
        else:
            verified = await self.auth.verify(tokens.parse(parse_token(path, offered)))
        principal = verified.principal
        self.agent = self.agent or roles.default_agent(principal)
        call = replace(
            call, agent_id=self.agent, principal=principal.name, token_id=verified.token_id
        )
        calls.current.set(call)

        def recheck(now: records_pb2.PrincipalRecord) -> None:
            roles.check_agent(now, call.agent_id)
            roles.authorize(now, WS_CONNECT, roles.Need.READ, call.namespace)

        recheck(principal)
        self.may_write = roles.WRITE in roles.granted(principal, call.namespace)
        self.revocation = self.auth.follow(verified, recheck)
        self.ending = asyncio.create_task(self._end_when(self.revocation, verified.expires_at))

    async def _end_when(self, revocation: Revocation, expires_at: float | None) -> None:
        """Close the socket when its credential is revoked, refused or expired."""
        left = None if expires_at is None else max(0.0, expires_at - time.time())
        try:
            error = await asyncio.wait_for(asyncio.shield(revocation.ended), left)
        except TimeoutError:
            error = Unauthenticated("the socket's token expired")
        await self._end(error)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:
            await self._end(exc)

    async def _end(self, exc: Exception) -> None:
        """Close the socket with the code and reason that fit why it ends."""
        if isinstance(exc, ConnectionClosed):
            return
        if self.refusals is not None and isinstance(exc, Unauthenticated | PermissionDenied):
            self.refusals.note(calls.current.get(), WS_CONNECT, exc)
        if isinstance(exc, Refused):
            code, reason = exc.code, exc.reason
        elif isinstance(exc, Unauthenticated):
            code, reason = UNAUTHENTICATED, exc.message
        elif isinstance(exc, PermissionDenied):
            code, reason = FORBIDDEN, exc.message
        elif isinstance(exc, InvalidArgument | BadIdentity):
            code, reason = BAD_INPUT, exc.message
        elif isinstance(exc, NotFound):
            code, reason = SESSION_GONE, exc.message
        elif isinstance(exc, SessionTooLarge):
            code, reason = SESSION_TOO_LARGE, exc.message
        elif isinstance(exc, AccordError):
            code, reason = TRY_AGAIN, exc.message
        else:  # a bug: end this socket only, and say so in the log
            _log.error("y-websocket connection failed", session=self.name, exc_info=exc)
            code, reason = TRY_AGAIN, "internal error"
        _log.info("y-websocket connection closed", session=self.name, code=code, reason=reason)
        await self.socket.close(code, reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore"))

    async def _recv(self) -> bytes:
        data = await self.socket.recv()
        if isinstance(data, str):
            raise _bad("send binary y-protocols messages, not text")
        return data

    async def _hello(self) -> bytes:
        """Answer the client's sync step 1 (or, without one, send everything), send ours,
        and return the state vector the subscription starts from: nothing slips between."""
        first: bytes | None = None
        client_vector = b""
        try:
            first = await asyncio.wait_for(self._recv(), HELLO_SECONDS)
        except TimeoutError:
            pass
        else:
            reader = _reader(first)
            if reader.uint() == YMessageType.SYNC and reader.uint() == YSyncMessageType.SYNC_STEP1:
                client_vector = reader.blob()
                reader.end()
                first = None
        _, diff, server_vector = await self.sessions.sync(self.name, client_vector)
        await self.socket.send(sync_message(YSyncMessageType.SYNC_STEP2, diff))
        await self.socket.send(sync_message(YSyncMessageType.SYNC_STEP1, server_vector))
        if first is not None:
            await self._handle(first)
        return server_vector

    async def _handle(self, data: bytes) -> None:
        reader = _reader(data)
        kind = reader.uint()
        if kind == YMessageType.SYNC:
            step = reader.uint()
            payload = reader.blob()
            reader.end()
            if step == YSyncMessageType.SYNC_STEP1:
                _, diff, _ = await self.sessions.sync(self.name, payload)
                await self.socket.send(sync_message(YSyncMessageType.SYNC_STEP2, diff))
            elif step in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
                await self._push(payload)
            else:
                raise _bad(f"unknown sync message type {step}")
        elif kind == YMessageType.AWARENESS:
            payload = reader.blob()
            reader.end()
            if await self._awareness(payload):
                # Echoed unchanged (a no-op for the client), as y-websocket servers do: the
                # client counts it as a sign of life and reconnects after 30 s without one
                # (it renews its own state every 15 s). A message carrying only states we
                # relayed (a y-websocket client sends back every change it learns) is not:
                # that would double the messages each presence change costs.
                await self.socket.send(data)
        elif kind == QUERY_AWARENESS:
            reader.end()
            states = [
                p for p in self.sessions.presence_of(self.name) if p.client_id not in self.owned
            ]
            if states:
                await self.socket.send(self._awareness_message(states, []))
        else:
            raise _bad(f"unknown message type {kind}")

    async def _push(self, update: bytes) -> None:
        if update == EMPTY_UPDATE:
            return
        if not self.may_write:
            call = calls.current.get()
            raise PermissionDenied(
                f"this socket's principal {call.principal!r} may only read namespace "
                f"{call.namespace!r}: updates need WRITE",
                metadata={"role": "WRITE", "namespace": call.namespace},
            )
        self.pushed.append(update)
        try:
            await self.sessions.push(self.name, update, request_id="", fence=None)
        except BaseException:
            with contextlib.suppress(ValueError):
                self.pushed.remove(update)
            raise

    async def _relay(self, state_vector: bytes) -> None:
        """Send every later update and presence change; a slow socket only makes the
        subscription merge what is pending, never blocks the session."""
        # A generator: closed here, so the subscription ends with the socket, not at GC.
        events = cast(
            AsyncGenerator[Any, None], self.sessions.subscribe(self.name, state_vector, True)
        )
        async with contextlib.aclosing(events):
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "update":
                    if event.update == EMPTY_UPDATE:
                        continue
                    if event.update in self.pushed:
                        self.pushed.remove(event.update)
                        continue
                    await self.socket.send(create_update_message(event.update))
                elif kind == "presence" and event.presence.client_id not in self.owned:
                    await self.socket.send(self._awareness_message([event.presence], []))
                elif kind == "presence_gone" and event.presence_gone.client_id not in self.owned:
                    await self.socket.send(self._awareness_message([], [event.presence_gone]))
        raise Refused(GOING_AWAY, "the replica unloaded the session; reconnect")

    def _awareness_message(
        self, present: list[sessions_pb2.Presence], gone: list[sessions_pb2.PresenceGone]
    ) -> bytes:
        entries = [(p.client_id, p.clock, p.state_json) for p in present]
        entries += [(g.client_id, g.clock, "null") for g in gone]
        self.relayed.update(client_id for client_id, _, _ in entries)
        return create_awareness_message(awareness_update(entries))

    async def _awareness(self, payload: bytes) -> bool:
        """Store the states this socket speaks for; whether there were any."""
        reader = _reader(payload)
        count = reader.uint()
        if count > MAX_AWARENESS_ENTRIES:
            raise _bad(f"an awareness update of {count} states; at most {MAX_AWARENESS_ENTRIES}")
        entries = []
        for _ in range(count):
            client_id, _clock, state = reader.uint(), reader.uint(), reader.text()
            if client_id >= 2**32:
                raise _bad(f"awareness client id {client_id} does not fit in 32 bits")
            entries.append((client_id, _check_state(state)))
        reader.end()
        first, self.awareness_seen = not self.awareness_seen, True
        own = False
        for client_id, state in entries:
            # The client's first awareness message is its own state; later, ids we relayed
            # to it are echoes of other participants and not its to change.
            if first or client_id in self.owned or client_id not in self.relayed:
                self.owned.add(client_id)
                own = True
                await self._put_presence(client_id, state)
        return own or not entries

    async def _put_presence(self, client_id: int, state: str) -> None:
        if not self.may_write:
            return  # a reader's presence is not shown (y-websocket always sends one)
        if state and not self.lease_id:
            info = await self.leases.grant(PRESENCE_TTL_SECONDS, {"via": "y-websocket"})
            self.lease_id = info.id
            self.keepalive = asyncio.create_task(self._keep_alive())
        if not self.lease_id:
            return
        # An id on another lease of this agent is an earlier connection's (its replica may
        # have died, leaving its lease until it expires): this one takes the id over.
        # Another agent's id is refused; the state is simply not shown.
        with contextlib.suppress(ConditionFailed):
            await self.sessions.put_presence(
                self.name, self.lease_id, client_id, state, agent_id=self.agent, take_over=True
            )

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_TTL_SECONDS / 3)
            try:
                await self.leases.keepalive(self.lease_id)
            except LeaseNotFound:
                await self._end(Refused(TRY_AGAIN, "the presence lease ended; reconnect"))
                return
            except AccordError as exc:
                _log.info("presence lease keep-alive failed; retrying", error=exc.message)

    async def _release_lease(self) -> None:
        """Presence goes with the socket: revoking the lease deletes its keys in etcd."""
        if self.keepalive is not None:
            self.keepalive.cancel()
        if self.lease_id:
            with contextlib.suppress(AccordError):
                await asyncio.shield(self.leases.revoke(self.lease_id))


def _check_state(state: str) -> str:
    """An awareness state as put_presence takes it: a JSON object, or "" for removed."""
    if len(state.encode()) > MAX_PRESENCE_BYTES:
        raise _bad(f"an awareness state exceeds {MAX_PRESENCE_BYTES} bytes")
    try:
        value = strict_json.loads(state)
    except ValueError as exc:
        raise _bad(f"an awareness state is not JSON: {exc}") from None
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise _bad("an awareness state must be a JSON object or null")
    return state
