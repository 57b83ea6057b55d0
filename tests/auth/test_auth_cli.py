"""`accord auth` and the other admin commands against replicas that require a token,
run as an operator runs them: mint a token, grant a role, list principals, use the
token with `--token`, revoke it."""

from __future__ import annotations

import json

from tests.auth.conftest import AuthCluster, accord_cli, unique


def test_an_operator_mints_grants_uses_and_revokes_a_token(
    auth_cluster: AuthCluster, namespace: str
) -> None:
    addr = ",".join(auth_cluster.addresses)
    as_admin = {"ACCORD_TOKEN": auth_cluster.admin_token}
    name = unique("ops")
    made = accord_cli("auth", "token", "create", name, "--addr", addr, "-o", "json", env=as_admin)
    assert made.returncode == 0, made.stderr
    minted = json.loads(made.stdout)
    secret, token_id = minted["secret"], minted["token"]["id"]
    assert secret.startswith("acc1.") and secret.split(".")[1] == token_id

    granted = accord_cli(
        "auth", "role", "grant", name, "read", "--addr", addr, "--namespace", namespace,
        env=as_admin,
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    listed = accord_cli("auth", "principals", "ls", "--addr", addr, "-o", "json", env=as_admin)
    mine = next(p for p in json.loads(listed.stdout) if p["name"] == name)
    assert mine["roles"][namespace]["roles"] == ["ROLE_READ"]
    assert [t["id"] for t in mine["tokens"]] == [token_id]
    assert secret not in listed.stdout

    # The token in --token, not the environment: reading works, breaking a lock does not.
    reads = accord_cli("locks", "ls", "--addr", addr, "--namespace", namespace, "--token", secret)
    assert reads.returncode == 0, reads.stderr
    breaks = accord_cli(
        "locks", "break", "doc", "--yes", "--addr", addr, "--namespace", namespace,
        "--token", secret,
    )  # fmt: skip
    assert breaks.returncode == 1
    assert "ADMIN" in breaks.stderr and namespace in breaks.stderr

    revoked = accord_cli("auth", "token", "revoke", token_id, "--addr", addr, env=as_admin)
    assert revoked.returncode == 0, revoked.stderr
    again = accord_cli("auth", "whoami", "--addr", addr, "--token", secret)
    assert again.returncode == 1 and "revoked" in again.stderr


def test_admin_commands_without_a_token_are_told_how_to_get_one(auth_cluster: AuthCluster) -> None:
    refused = accord_cli("auth", "whoami", "--addr", auth_cluster.addresses[0])
    assert refused.returncode == 1
    assert "Bearer" in refused.stderr and "ACCORD_TOKEN" in refused.stderr
