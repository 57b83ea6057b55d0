"""Authorization's table covers the whole contract, and refuses what it does not know."""

from __future__ import annotations

import pytest

from accord.coordinator.auth import roles
from accord.coordinator.substrate.errors import PermissionDenied
from accord.v1 import auth_pb2, records_pb2
from tests.auth.expected_roles import EXPECTED


def every_method() -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for module, name in roles.SERVICES
        for service in [module.DESCRIPTOR.services_by_name[name]]
        for method in service.methods
    }


def test_every_method_of_every_service_is_in_the_table() -> None:
    missing = every_method() - set(roles.REQUIRED)
    assert not missing, f"methods with no authorization rule (they would be refused): {missing}"
    assert set(roles.REQUIRED) <= every_method()


def test_every_service_the_server_registers_is_covered() -> None:
    from accord.coordinator.server import SERVICES

    assert {f"{m.DESCRIPTOR.package}.{n}" for m, n in roles.SERVICES} == set(SERVICES)


def need_name(need: roles.Need) -> str:
    if need is roles.Need.CLUSTER_ADMIN:
        return "CLUSTER_ADMIN"
    if need is roles.Need.AUTHENTICATED:
        return "AUTHENTICATED"
    return roles.role_name(need.value)


def test_the_table_says_what_was_decided_for_each_method() -> None:
    assert {m: need_name(n) for m, n in roles.REQUIRED.items()} == EXPECTED


def reader(namespace: str = "team") -> records_pb2.PrincipalRecord:
    record = records_pb2.PrincipalRecord(name="rita")
    record.roles[namespace].roles.append(auth_pb2.ROLE_READ)
    return record


def test_a_method_missing_from_the_table_is_refused() -> None:
    admin = records_pb2.PrincipalRecord(name="root", cluster_admin=True)
    method = "/accord.v1.KV/Unknown"
    with pytest.raises(PermissionDenied) as refused:
        roles.authorize(admin, method, roles.REQUIRED.get(method), "team")
    assert refused.value.metadata["method"] == method


def test_roles_include_what_they_should() -> None:
    assert roles.granted(reader(), "team") == {auth_pb2.ROLE_READ}
    assert roles.granted(reader(), "other") == frozenset()
    admin = records_pb2.PrincipalRecord(name="a")
    admin.roles["team"].roles.append(auth_pb2.ROLE_ADMIN)
    assert roles.granted(admin, "team") == set(roles.ROLES)
    assert roles.granted(records_pb2.PrincipalRecord(cluster_admin=True), "any") == set(roles.ROLES)


def test_a_missing_role_names_role_and_namespace() -> None:
    with pytest.raises(PermissionDenied) as refused:
        roles.authorize(reader(), "/accord.v1.KV/Put", roles.Need.WRITE, "team")
    assert refused.value.metadata["role"] == "WRITE"
    assert refused.value.metadata["namespace"] == "team"
    roles.authorize(reader(), "/accord.v1.KV/Get", roles.Need.READ, "team")


def test_agents_a_principal_may_act_as() -> None:
    roles.check_agent(reader(), "rita")
    with pytest.raises(PermissionDenied) as refused:
        roles.check_agent(reader(), "bob")
    assert refused.value.metadata["agents"] == "rita"
    runtime = records_pb2.PrincipalRecord(name="runtime", agents=["a1", "a2"])
    roles.check_agent(runtime, "a2")
    with pytest.raises(PermissionDenied):
        roles.check_agent(runtime, "runtime")
