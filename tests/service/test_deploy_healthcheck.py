"""deploy/docker/healthcheck.py, the container image's health check (Docker HEALTHCHECK and
the Kubernetes exec probes), run as the image runs it against real replicas: SERVING is
exit 0; nothing listening is exit 1 with the reason; a replica that lost etcd fails the
readiness check but passes the liveness one (--alive); over mutual TLS it passes with the
CA and a client certificate and is refused by the handshake without one."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.certs import Issued, issue, make_ca
from tests.harness import (
    REPO,
    Coordinator,
    EtcdMember,
    free_port,
    start_coordinator,
    start_etcd,
)

SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_serving_replica_passes(replicas: list[Coordinator]) -> None:
    done = check({"ACCORD_LISTEN": f"0.0.0.0:{replicas[0].port}"})
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


def test_nothing_listening_fails_with_the_reason() -> None:
    done = check({"ACCORD_LISTEN": f"0.0.0.0:{free_port()}", "ACCORD_HEALTH_TIMEOUT": "2"})
    assert done.returncode == 1
    assert done.stderr.startswith("healthcheck: UNAVAILABLE"), done.stderr


def test_a_replica_without_etcd_is_alive_but_not_ready(workdir: Path) -> None:
    etcd = start_etcd(workdir, "healthcheck-etcd")
    replica = start_coordinator(workdir, "healthcheck-no-etcd", [etcd.endpoint], ws=False)
    try:
        env = {"ACCORD_LISTEN": f"0.0.0.0:{replica.port}", "ACCORD_HEALTH_TIMEOUT": "5"}
        assert check(env).returncode == 0
        etcd.kill()
        deadline = time.monotonic() + 60
        while (done := check(env)).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (done.returncode, done.stderr.strip()) == (1, "healthcheck: NOT_SERVING")
        alive = check(env, "--alive")
        assert (alive.returncode, alive.stdout.strip()) == (0, "NOT_SERVING"), alive.stderr
    finally:
        replica.terminate()
        etcd.kill()


@pytest.fixture(scope="module")
def mtls_replica(
    etcd: EtcdMember, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Coordinator, Issued, Issued, Issued]]:
    d = tmp_path_factory.mktemp("healthcheck-tls")
    ca = make_ca(d, "hc-ca")
    server, probe = issue(d, ca, "replica", server=True), issue(d, ca, "probe")
    replica = start_coordinator(
        workdir,
        "healthcheck-mtls",
        [etcd.endpoint],
        extra_args=[
            *("--auth", "required", "--root", "healthcheck-mtls"),
            *("--tls-cert", str(server.cert), "--tls-key", str(server.key)),
            *("--tls-client-ca", str(ca.cert)),
        ],
        ws=False,
        tls_client=(ca.cert, probe.cert, probe.key),
    )
    yield replica, ca, server, probe
    replica.terminate()


def test_mutual_tls_passes_with_a_client_certificate_only(
    mtls_replica: tuple[Coordinator, Issued, Issued, Issued],
) -> None:
    replica, ca, server, probe = mtls_replica
    env = {
        "ACCORD_LISTEN": f"0.0.0.0:{replica.port}",
        "ACCORD_TLS_CERT": str(server.cert),
        "ACCORD_TLS_KEY": str(server.key),
        "ACCORD_TLS_CA": str(ca.cert),
        "ACCORD_HEALTH_TIMEOUT": "5",
    }
    with_probe = {
        **env,
        "ACCORD_TLS_CLIENT_CA": str(ca.cert),
        "ACCORD_HEALTH_TLS_CERT": str(probe.cert),
        "ACCORD_HEALTH_TLS_KEY": str(probe.key),
    }
    done = check(with_probe)
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    # No client certificate: the replica's handshake refuses the probe.
    refused = check(env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("healthcheck: UNAVAILABLE"), refused.stderr
