"""gRPC servicer for accord.v1.Auth: unpack, call the auth store, pack.

The interceptor has already authenticated the caller and checked the role its method
needs (auth.roles); this module adds only what depends on the request (granting ADMIN
or cluster admin takes a cluster admin, in the store).

Error handling: with auth off every call but WhoAmI is refused with ConditionFailed
(FAILED_PRECONDITION): an open replica must not mint credentials that would work once
auth is turned on. Store errors pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import grpc

from accord.coordinator.auth.cache import AuthCache
from accord.coordinator.auth.store import AuthStore, principal_view
from accord.coordinator.substrate import audit, calls
from accord.coordinator.substrate.errors import ConditionFailed
from accord.v1 import auth_pb2, auth_pb2_grpc, common_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class AuthService(auth_pb2_grpc.AuthServicer):
    def __init__(self, store: AuthStore, cache: AuthCache | None, replica: str) -> None:
        """cache: None when auth is off on this replica."""
        self._store = store
        self._etcd = store.etcd
        self._keys = store.keys
        self._cache = cache
        self._replica = replica

    def _header(self, revision: int = 0) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=revision, replica=self._replica)

    def _required(self) -> AuthCache:
        if self._cache is None:
            raise ConditionFailed(
                "auth is off on this replica (accord serve --auth off), so it manages no "
                "credentials; run `accord auth bootstrap` against etcd and serve with "
                "--auth required",
                metadata={"auth": "off"},
            )
        return self._cache

    def _caller_is_cluster_admin(self) -> bool:
        found = self._required().principal(calls.current.get().principal)
        return found is not None and found.cluster_admin

    async def WhoAmI(
        self, request: auth_pb2.WhoAmIRequest, context: Context
    ) -> auth_pb2.WhoAmIResponse:
        call = calls.current.get()
        answer = auth_pb2.WhoAmIResponse(
            header=self._header(),
            auth_required=self._cache is not None,
            agent_id=call.agent_id,
            namespace=call.namespace,
            token_id=call.token_id,
        )
        found = self._cache.principal(call.principal) if self._cache is not None else None
        if found is not None:
            answer.principal.CopyFrom(principal_view(found))
        return answer

    async def CreateToken(
        self, request: auth_pb2.CreateTokenRequest, context: Context
    ) -> auth_pb2.CreateTokenResponse:
        self._required()
        made = await self._store.create_token(
            request.principal,
            list(request.agents),
            request.ttl_seconds,
            created_by=calls.current.get().principal,
        )
        return auth_pb2.CreateTokenResponse(
            header=self._header(made.revision), token=made.info, secret=made.secret
        )

    async def RevokeToken(
        self, request: auth_pb2.RevokeTokenRequest, context: Context
    ) -> auth_pb2.RevokeTokenResponse:
        self._required()
        info, revision = await self._store.revoke_token(request.token_id)
        return auth_pb2.RevokeTokenResponse(header=self._header(revision), token=info)

    async def ListPrincipals(
        self, request: auth_pb2.ListPrincipalsRequest, context: Context
    ) -> auth_pb2.ListPrincipalsResponse:
        self._required()
        principals, revision = await self._store.list_principals()
        return auth_pb2.ListPrincipalsResponse(header=self._header(revision), principals=principals)

    async def GrantRole(
        self, request: auth_pb2.GrantRoleRequest, context: Context
    ) -> auth_pb2.GrantRoleResponse:
        principal, revision = await self._store.set_role(
            request.principal,
            namespace=calls.current.get().namespace,
            role=request.role,
            cluster_admin=request.cluster_admin,
            grant=True,
            caller_is_cluster_admin=self._caller_is_cluster_admin(),
        )
        return auth_pb2.GrantRoleResponse(header=self._header(revision), principal=principal)

    async def RevokeRole(
        self, request: auth_pb2.RevokeRoleRequest, context: Context
    ) -> auth_pb2.RevokeRoleResponse:
        principal, revision = await self._store.set_role(
            request.principal,
            namespace=calls.current.get().namespace,
            role=request.role,
            cluster_admin=request.cluster_admin,
            grant=False,
            caller_is_cluster_admin=self._caller_is_cluster_admin(),
        )
        return auth_pb2.RevokeRoleResponse(header=self._header(revision), principal=principal)

    async def ListAudit(
        self, request: auth_pb2.ListAuditRequest, context: Context
    ) -> auth_pb2.ListAuditResponse:
        self._required()
        entries, next_token, revision = await audit.page(
            self._etcd, self._keys, request.limit, request.page_token
        )
        return auth_pb2.ListAuditResponse(
            header=self._header(revision), entries=entries, next_page_token=next_token
        )

    async def GrantLabel(
        self, request: auth_pb2.GrantLabelRequest, context: Context
    ) -> auth_pb2.GrantLabelResponse:
        self._required()
        principal, revision = await self._store.set_label(
            request.principal,
            namespace=calls.current.get().namespace,
            key=request.key,
            value=request.value,
            weight=request.weight if request.HasField("weight") else None,
        )
        return auth_pb2.GrantLabelResponse(header=self._header(revision), principal=principal)

    async def RevokeLabel(
        self, request: auth_pb2.RevokeLabelRequest, context: Context
    ) -> auth_pb2.RevokeLabelResponse:
        self._required()
        principal, revision = await self._store.set_label(
            request.principal, namespace=calls.current.get().namespace, key=request.key, value=None
        )
        return auth_pb2.RevokeLabelResponse(header=self._header(revision), principal=principal)
