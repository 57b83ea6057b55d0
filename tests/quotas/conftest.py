"""The quota tests use the auth suite's replicas (auth required) for what only a cluster
admin may do, and for rates per principal."""

from tests.auth.conftest import admin, auth_cluster, mint

__all__ = ["admin", "auth_cluster", "mint"]
