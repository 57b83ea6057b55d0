"""Principals, their roles and their tokens, in etcd under {root}/auth/.

Every write is a read followed by one etcd transaction guarded by the mod revision of
what was read (`mod_is`), so two admins changing one principal at once cannot lose
either change: the loser reads again and re-applies (a few times, then reports the
conflict). A token is written with its principal in one transaction; only the SHA-256
of its secret is stored, and the secret is returned once.

These are administrative writes, rare and small: they go straight to etcd rather than
through group commit, each with its audit entry (substrate.audit) in the same
transaction. CreateToken is not idempotent (a retry mints a second token; the
first one's secret was never seen, so it is harmless, and it can be revoked).

Error handling: bad input is InvalidArgument naming the field; an unknown principal or
token is NotFound; a principal that exists with other agents than asked is
ConditionFailed with the agents it has; a label weight that is not finite, > 0 and at
most MAX_WEIGHT is InvalidArgument (nothing written); granting or revoking ADMIN or
cluster admin without being a cluster admin is PermissionDenied; `bootstrap` refuses
(ConditionFailed) when a cluster admin exists, unless forced.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accord.coordinator.auth import roles, tokens
from accord.coordinator.substrate import audit
from accord.coordinator.substrate.errors import (
    ConditionFailed,
    FieldViolation,
    NotFound,
    PermissionDenied,
    invalid,
    require,
)
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.limits import require_counts
from accord.coordinator.substrate.txn import (
    Txn,
    absent,
    delete,
    get_prefix,
    mod_is,
    none_changed_since,
    put,
    read,
    txn,
)
from accord.coordinator.votes.spec import MAX_WEIGHT
from accord.v1 import auth_pb2, records_pb2

NAME_RE = re.compile(r"[\x21-\x7e]{1,128}")  # as an agent id
MAX_AGENTS = 256
MAX_LABEL_BYTES = 256  # as a lease label
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
CONFLICT_RETRIES = 5
BOOTSTRAP = "bootstrap"  # created_by of what `accord auth bootstrap` writes


@dataclass(frozen=True, slots=True)
class NewToken:
    info: auth_pb2.TokenInfo
    secret: str
    revision: int


def token_info(token_id: str, record: records_pb2.TokenRecord) -> auth_pb2.TokenInfo:
    info = auth_pb2.TokenInfo(
        id=token_id,
        principal=record.principal,
        created_at=record.created_at,
        created_by=record.created_by,
    )
    if record.HasField("expires_at"):
        info.expires_at.CopyFrom(record.expires_at)
    return info


def principal_view(
    record: records_pb2.PrincipalRecord, tokens_of: list[auth_pb2.TokenInfo] | None = None
) -> auth_pb2.Principal:
    view = auth_pb2.Principal(
        name=record.name, agents=list(record.agents), cluster_admin=record.cluster_admin
    )
    for namespace, held in record.roles.items():
        view.roles[namespace].roles.extend(held.roles)
    for namespace, granted in record.labels.items():
        view.labels[namespace].CopyFrom(granted)
    view.tokens.extend(tokens_of or [])
    return view


def _check_name(field: str, name: str) -> FieldViolation | None:
    if not NAME_RE.fullmatch(name):
        return FieldViolation(field, "must be 1-128 printable ASCII characters without spaces")
    return None


class AuthStore:
    def __init__(self, writes: Writes, etcd: Etcd, keys: Keyspace) -> None:
        self._writes = writes
        self._etcd = etcd
        self._keys = keys

    @property
    def etcd(self) -> Etcd:
        return self._etcd

    @property
    def keys(self) -> Keyspace:
        return self._keys

    async def _commit(self, changes: Txn, logged: auth_pb2.AuditEntry) -> Any:
        """changes, with the audit entry that logs them, in one etcd transaction (the
        entry on the retention lease); etcd's TxnResponse."""
        when, then = list(changes.compare), list(changes.success)

        def build(lease: int) -> Txn:
            return txn(when=when, then=[*then, audit.write(self._keys, logged, lease)])

        committed = await self._writes.commit(build, retained=True, batched=False)
        return committed.response

    # --- reading -----------------------------------------------------------------------

    async def _principal(self, name: str) -> tuple[records_pb2.PrincipalRecord | None, int]:
        """The principal's record (None: absent) and its mod revision (0: absent)."""
        found = await self._etcd.range(read(self._keys.principal(name)))
        if not found.kvs:
            return None, 0
        return records_pb2.PrincipalRecord.FromString(found.kvs[0].value), found.kvs[0].mod_revision

    async def list_principals(self) -> tuple[list[auth_pb2.Principal], int]:
        """Every principal with its tokens, read at one revision."""
        found = await self._etcd.txn(
            txn(
                then=[
                    get_prefix(self._keys.principals_prefix),
                    get_prefix(self._keys.tokens_prefix),
                ]
            ),
            retry=True,
        )
        principals_kvs = found.responses[0].response_range.kvs
        token_kvs = found.responses[1].response_range.kvs
        by_principal: dict[str, list[auth_pb2.TokenInfo]] = {}
        for kv in token_kvs:
            record = records_pb2.TokenRecord.FromString(kv.value)
            token_id = kv.key[len(self._keys.tokens_prefix) :].decode()
            by_principal.setdefault(record.principal, []).append(token_info(token_id, record))
        views = []
        for kv in principals_kvs:
            principal = records_pb2.PrincipalRecord.FromString(kv.value)
            views.append(principal_view(principal, by_principal.get(principal.name, [])))
        return views, found.header.revision

    # --- tokens --------------------------------------------------------------------------

    async def create_token(
        self, principal: str, agents: list[str], ttl_seconds: int, created_by: str
    ) -> NewToken:
        """A new token for principal, creating the principal (with agents) if missing."""
        require_counts(("agents", len(agents), MAX_AGENTS))
        require(
            [
                v
                for v in [
                    _check_name("principal", principal),
                    *(_check_name(f"agents[{i}]", a) for i, a in enumerate(agents)),
                ]
                if v is not None
            ]
            + (
                [FieldViolation("agents", f"at most {MAX_AGENTS}")]
                if len(agents) > MAX_AGENTS
                else []
            )
            + (
                [FieldViolation("ttl_seconds", f"must be 0 (no expiry) to {MAX_TTL_SECONDS}")]
                if not 0 <= ttl_seconds <= MAX_TTL_SECONDS
                else []
            )
        )
        token = tokens.new()
        record = records_pb2.TokenRecord(
            secret_sha256=token.digest, principal=principal, created_by=created_by
        )
        record.created_at.GetCurrentTime()
        if ttl_seconds:
            record.expires_at.FromSeconds(int(time.time()) + ttl_seconds)
        for _ in range(CONFLICT_RETRIES):
            current, revision = await self._principal(principal)
            writes = [put(self._keys.token(token.id), record.SerializeToString())]
            if current is None:
                current = records_pb2.PrincipalRecord(name=principal, agents=agents)
                current.created_at.GetCurrentTime()
                writes.append(put(self._keys.principal(principal), current.SerializeToString()))
            elif agents and list(current.agents) != agents:
                raise ConditionFailed(
                    f"principal {principal!r} exists and may act as "
                    f"{', '.join(roles.agents_of(current))}; a token cannot change that "
                    "(leave agents empty to create a token for it as it is)",
                    metadata={"principal": principal, "agents": ",".join(current.agents)},
                )
            done = await self._commit(
                txn(
                    when=[
                        mod_is(self._keys.principal(principal), revision),  # unchanged
                        absent(self._keys.token(token.id)),  # a fresh id
                    ],
                    then=writes,
                ),
                audit.entry("CreateToken", principal, f"token {token.id}, ttl {ttl_seconds}s"),
            )
            if done.succeeded:
                return NewToken(token_info(token.id, record), str(token), done.header.revision)
        raise ConditionFailed(f"principal {principal!r} kept changing; try again")

    async def revoke_token(self, token_id: str) -> tuple[auth_pb2.TokenInfo, int]:
        key = self._keys.token(token_id)
        for _ in range(CONFLICT_RETRIES):
            found = await self._etcd.range(read(key))
            if not found.kvs:
                raise NotFound(
                    f"there is no token {token_id!r} (already revoked, or never created)",
                    metadata={"token_id": token_id},
                )
            kv = found.kvs[0]
            record = records_pb2.TokenRecord.FromString(kv.value)
            done = await self._commit(
                txn(when=[mod_is(key, kv.mod_revision)], then=[delete(key)]),
                audit.entry("RevokeToken", record.principal, f"token {token_id}"),
            )
            if done.succeeded:
                return token_info(token_id, record), done.header.revision
        raise ConditionFailed(f"token {token_id!r} kept changing; try again")

    # --- roles ---------------------------------------------------------------------------

    async def set_role(
        self,
        principal: str,
        *,
        namespace: str,
        role: roles.Role,
        cluster_admin: bool,
        grant: bool,
        caller_is_cluster_admin: bool,
    ) -> tuple[auth_pb2.Principal, int]:
        """Grant (or take back) role in namespace, or cluster admin. Granting creates the
        principal if missing."""
        bad = _check_name("principal", principal)
        if bad is not None:
            require([bad])
        if cluster_admin and role != auth_pb2.ROLE_UNSPECIFIED:
            raise invalid("role", "leave role unset when granting or revoking cluster admin")
        if not cluster_admin and role not in roles.ROLES:
            raise invalid("role", "must be one of READ, WRITE, PROPOSE, ADMIN")
        if (cluster_admin or role == auth_pb2.ROLE_ADMIN) and not caller_is_cluster_admin:
            what = "cluster admin" if cluster_admin else f"ADMIN in namespace {namespace!r}"
            raise PermissionDenied(
                f"only a cluster admin may grant or revoke {what}",
                metadata={"role": "CLUSTER_ADMIN", "namespace": namespace},
            )

        def change(record: records_pb2.PrincipalRecord) -> None:
            if cluster_admin:
                record.cluster_admin = grant
                return
            held = set(record.roles[namespace].roles) if namespace in record.roles else set()
            held = held | {role} if grant else held - {role}
            if held:
                record.roles[namespace].ClearField("roles")
                record.roles[namespace].roles.extend(sorted(held))
            elif namespace in record.roles:
                del record.roles[namespace]

        what = "cluster admin" if cluster_admin else f"{roles.role_name(role)} in {namespace}"
        logged = audit.entry("GrantRole" if grant else "RevokeRole", principal, what)
        return await self._update(principal, change, logged, create=grant)

    async def set_label(
        self,
        principal: str,
        *,
        namespace: str,
        key: str,
        value: str | None,
        weight: float | None = None,
    ) -> tuple[auth_pb2.Principal, int]:
        """Grant the lease label key=value in namespace (value None: take key back), with
        the voter weight it carries in a label electorate (None: the default, 1). Granting
        creates the principal if missing, and replaces an earlier grant of key."""
        violations = [v for v in [_check_name("principal", principal)] if v is not None]
        if not key or len((key + (value or "")).encode()) > MAX_LABEL_BYTES:
            violations.append(
                FieldViolation("key", f"needs a key, and at most {MAX_LABEL_BYTES} bytes")
            )
        if weight is not None and not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
            violations.append(FieldViolation("weight", f"must be > 0 (and <= {MAX_WEIGHT:g})"))
        require(violations)

        def change(record: records_pb2.PrincipalRecord) -> None:
            if value is not None:
                granted = record.labels[namespace]
                granted.labels[key] = value
                granted.weights.pop(key, None)
                if weight is not None:
                    granted.weights[key] = weight
            elif namespace in record.labels:
                record.labels[namespace].labels.pop(key, None)
                record.labels[namespace].weights.pop(key, None)
                if not record.labels[namespace].labels:
                    del record.labels[namespace]

        what = f"{key}={value} in {namespace}" if value is not None else f"{key} in {namespace}"
        if weight is not None and value is not None:
            what += f" with weight {weight:g}"
        logged = audit.entry("GrantLabel" if value is not None else "RevokeLabel", principal, what)
        return await self._update(principal, change, logged, create=value is not None)

    async def _update(
        self,
        principal: str,
        change: Callable[[records_pb2.PrincipalRecord], None],
        logged: auth_pb2.AuditEntry,
        *,
        create: bool,
    ) -> tuple[auth_pb2.Principal, int]:
        key = self._keys.principal(principal)
        for _ in range(CONFLICT_RETRIES):
            current, revision = await self._principal(principal)
            if current is None:
                if not create:
                    raise NotFound(
                        f"there is no principal {principal!r}", metadata={"principal": principal}
                    )
                current = records_pb2.PrincipalRecord(name=principal)
                current.created_at.GetCurrentTime()
            change(current)
            done = await self._commit(
                txn(
                    when=[mod_is(key, revision)],  # nobody changed it since we read it
                    then=[put(key, current.SerializeToString())],
                ),
                logged,
            )
            if done.succeeded:
                return principal_view(current), done.header.revision
        raise ConditionFailed(f"principal {principal!r} kept changing; try again")

    # --- the first cluster admin -----------------------------------------------------------

    async def bootstrap(self, principal: str, *, force: bool) -> NewToken:
        """Make principal a cluster admin and give it a token, straight in etcd. Refused
        when some principal is a cluster admin already, unless force."""
        bad = _check_name("principal", principal)
        if bad is not None:
            require([bad])
        prefix = self._keys.principals_prefix
        found = await self._etcd.range(read(prefix, prefix=True))
        admins = [
            record.name
            for record in (records_pb2.PrincipalRecord.FromString(kv.value) for kv in found.kvs)
            if record.cluster_admin
        ]
        if admins and not force:
            raise ConditionFailed(
                f"this cluster already has cluster admins ({', '.join(sorted(admins))}); "
                "have one of them create tokens, or pass --force",
                metadata={"admins": ",".join(sorted(admins))},
            )
        current = next(
            (
                records_pb2.PrincipalRecord.FromString(kv.value)
                for kv in found.kvs
                if kv.key == self._keys.principal(principal)
            ),
            None,
        )
        if current is None:
            current = records_pb2.PrincipalRecord(name=principal)
            current.created_at.GetCurrentTime()
        current.cluster_admin = True
        token = tokens.new()
        record = records_pb2.TokenRecord(
            secret_sha256=token.digest, principal=principal, created_by=BOOTSTRAP
        )
        record.created_at.GetCurrentTime()
        done = await self._commit(
            txn(
                # No principal changed since we looked for admins.
                when=[none_changed_since(prefix, found.header.revision)],
                then=[
                    put(self._keys.principal(principal), current.SerializeToString()),
                    put(self._keys.token(token.id), record.SerializeToString()),
                ],
            ),
            audit.entry(
                "Bootstrap", principal, f"cluster admin, token {token.id}", principal=BOOTSTRAP
            ),
        )
        if not done.succeeded:
            raise ConditionFailed("principals changed while bootstrapping; run it again")
        return NewToken(token_info(token.id, record), str(token), done.header.revision)
