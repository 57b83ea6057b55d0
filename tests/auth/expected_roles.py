"""The role every RPC needs, written out by hand: what the authorization table
(coordinator/auth/roles.py) must say. Changing a method's role is a decision made here
too, not a side effect of editing the table."""

from __future__ import annotations

READ, WRITE, PROPOSE, ADMIN = "READ", "WRITE", "PROPOSE", "ADMIN"
CLUSTER_ADMIN, ANYONE = "CLUSTER_ADMIN", "AUTHENTICATED"

EXPECTED: dict[str, str] = {
    "/accord.v1.KV/Get": READ,
    "/accord.v1.KV/Batch": READ,
    "/accord.v1.KV/List": READ,
    "/accord.v1.KV/Watch": READ,
    "/accord.v1.KV/History": READ,
    "/accord.v1.KV/Put": WRITE,
    "/accord.v1.KV/Delete": WRITE,
    "/accord.v1.KV/Txn": WRITE,
    "/accord.v1.Leases/TimeToLive": READ,
    "/accord.v1.Leases/List": READ,
    "/accord.v1.Leases/Grant": WRITE,
    "/accord.v1.Leases/KeepAlive": WRITE,
    "/accord.v1.Leases/KeepAliveOnce": WRITE,
    "/accord.v1.Leases/Revoke": WRITE,
    "/accord.v1.Locks/Describe": READ,
    "/accord.v1.Locks/List": READ,
    "/accord.v1.Locks/WaitGraph": READ,
    "/accord.v1.Locks/ListDeadlocks": READ,
    "/accord.v1.Locks/Acquire": WRITE,
    "/accord.v1.Locks/AcquireMany": WRITE,
    "/accord.v1.Locks/Release": WRITE,
    "/accord.v1.Locks/Break": ADMIN,
    "/accord.v1.Sessions/List": READ,
    "/accord.v1.Sessions/Sync": READ,
    "/accord.v1.Sessions/Subscribe": READ,
    "/accord.v1.Sessions/Read": READ,
    "/accord.v1.Sessions/Open": WRITE,
    "/accord.v1.Sessions/Delete": WRITE,
    "/accord.v1.Sessions/Push": WRITE,
    "/accord.v1.Sessions/Apply": WRITE,
    "/accord.v1.Sessions/SetPresence": WRITE,
    "/accord.v1.Votes/Get": READ,
    "/accord.v1.Votes/List": READ,
    "/accord.v1.Votes/Watch": READ,
    "/accord.v1.Votes/Cast": WRITE,
    "/accord.v1.Votes/Propose": PROPOSE,
    "/accord.v1.Votes/Cancel": PROPOSE,
    "/accord.v1.Auth/WhoAmI": ANYONE,
    "/accord.v1.Auth/CreateToken": CLUSTER_ADMIN,
    "/accord.v1.Auth/RevokeToken": CLUSTER_ADMIN,
    "/accord.v1.Auth/ListPrincipals": CLUSTER_ADMIN,
    "/accord.v1.Auth/ListAudit": CLUSTER_ADMIN,
    "/accord.v1.Auth/GrantRole": ADMIN,
    "/accord.v1.Auth/RevokeRole": ADMIN,
    "/accord.v1.Auth/GrantLabel": ADMIN,
    "/accord.v1.Auth/RevokeLabel": ADMIN,
    "/accord.v1.Quotas/Get": READ,
    "/accord.v1.Quotas/Set": CLUSTER_ADMIN,
}
