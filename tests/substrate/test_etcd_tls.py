"""The coordinator reaches an etcd that demands mutual TLS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from aetcd.rpc import rpc_pb2 as rpc
from aetcd.rpc import rpc_pb2_grpc as rpc_grpc

from tests.harness import ETCD, Coordinator, Process, free_port, make_client, wait_for_port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d: Path) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )


async def test_mutual_tls_to_etcd(tmp_path: Path, namespace: str) -> None:
    _make_certs(tmp_path)
    client_port, peer_port = free_port(), free_port()
    etcd = Process(name="tls-etcd", log=tmp_path / "etcd.log")
    url = f"https://127.0.0.1:{client_port}"
    etcd._spawn(
        [
            ETCD,
            "--name",
            "tls",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"tls=http://127.0.0.1:{peer_port}",
            "--cert-file",
            str(tmp_path / "server.pem"),
            "--key-file",
            str(tmp_path / "server.key"),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(tmp_path / "ca.pem"),
        ]
    )
    wait_for_port(client_port, 30, etcd.popen)
    replica = Coordinator(
        name="tls-replica",
        log=tmp_path / "replica.log",
        port=free_port(),
        etcd_endpoints=[f"127.0.0.1:{client_port}"],
        extra_args=[
            "--etcd-ca",
            str(tmp_path / "ca.pem"),
            "--etcd-cert",
            str(tmp_path / "client.pem"),
            "--etcd-key",
            str(tmp_path / "client.key"),
        ],
    )
    # Without a client certificate etcd refuses the connection: the TLS setup is load-bearing.
    ca = (tmp_path / "ca.pem").read_bytes()
    channel = grpc.aio.secure_channel(f"127.0.0.1:{client_port}", grpc.ssl_channel_credentials(ca))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rpc_grpc.KVStub(channel).Range(rpc.RangeRequest(key=b"k"), timeout=5)
        assert refused.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
    finally:
        await channel.close()
    try:
        replica.start()
        async with make_client([replica.address], namespace) as c:
            written = await c.kv.put("secret", b"over tls")
            kv = await c.kv.get("secret")
            assert kv is not None and kv.value == b"over tls"
            assert kv.mod_revision == written.revision
    finally:
        if replica.running():
            replica.terminate()
        etcd.kill()
