"""How etcd endpoints become gRPC targets: IP literals share one channel (gRPC fails
over inside it), host names get one channel each (DNS and TLS host names kept)."""

from __future__ import annotations

from accord.coordinator.substrate.etcd import _grpc_targets


def test_endpoint_targets_keep_failover_and_host_names() -> None:
    assert _grpc_targets(["127.0.0.1:1", "127.0.0.2:2"]) == ["ipv4:127.0.0.1:1,127.0.0.2:2"]
    assert _grpc_targets(["[::1]:1", "[::2]:2"]) == ["ipv6:[::1]:1,[::2]:2"]
    assert _grpc_targets(["[::1]:1", "10.0.0.2:2"]) == ["[::1]:1", "10.0.0.2:2"]
    assert _grpc_targets(["etcd-a:2379", "10.0.0.2:2379"]) == [
        "dns:///etcd-a:2379",
        "dns:///10.0.0.2:2379",
    ]
