"""The gRPC health check of the replica in this container, for Docker's HEALTHCHECK and
Kubernetes exec probes (the kubelet's native `grpc:` probe speaks plaintext only, so it
cannot check a replica that serves TLS).

Asks grpc.health.v1.Health/Check (service "") at 127.0.0.1 on the port of ACCORD_LISTEN
(default 50051). The replica reports SERVING while it reaches etcd, whatever its load,
and answers health without a token, so the check needs no credentials beyond TLS's:

- ACCORD_TLS_CERT set: the replica serves TLS. The check trusts ACCORD_TLS_CA (else the
  replica's own certificate, for a self-signed one) and expects the certificate to name
  127.0.0.1 (ACCORD_HEALTH_TLS_NAME: another name it carries, e.g. localhost).
- ACCORD_TLS_CLIENT_CA set as well (mutual TLS): the check presents ACCORD_HEALTH_TLS_CERT
  and ACCORD_HEALTH_TLS_KEY, by default the replica's own certificate and key (issue it
  for clientAuth as well as serverAuth).

With `--alive` any answer passes, NOT_SERVING included: the liveness check. A replica
that cannot reach etcd says NOT_SERVING (not ready), but restarting it would not bring
etcd back; one that does not answer at all is stuck.

Error handling: exit 0 when the replica says SERVING (with --alive: answers at all);
otherwise exit 1 with one line on stderr: NOT_SERVING, unreachable, refused by the TLS
handshake, or no answer within ACCORD_HEALTH_TIMEOUT seconds (default 3).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(env: dict[str, str]) -> grpc.Channel:
    port = env.get("ACCORD_LISTEN", "127.0.0.1:50051").rsplit(":", 1)[-1]
    target = f"127.0.0.1:{port}"
    cert = env.get("ACCORD_TLS_CERT", "")
    if not cert:
        return grpc.insecure_channel(target)
    ca = Path(env.get("ACCORD_TLS_CA", "") or cert).read_bytes()
    key_pair: tuple[bytes | None, bytes | None] = (None, None)
    if env.get("ACCORD_TLS_CLIENT_CA"):
        key_pair = (
            Path(env.get("ACCORD_HEALTH_TLS_KEY", "") or env["ACCORD_TLS_KEY"]).read_bytes(),
            Path(env.get("ACCORD_HEALTH_TLS_CERT", "") or cert).read_bytes(),
        )
    options = []
    if name := env.get("ACCORD_HEALTH_TLS_NAME", ""):
        options.append(("grpc.ssl_target_name_override", name))
    credentials = grpc.ssl_channel_credentials(ca, *key_pair)
    return grpc.secure_channel(target, credentials, options=options)


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    timeout = float(env.get("ACCORD_HEALTH_TIMEOUT", "3"))
    try:
        with channel(env) as opened:
            stub = health_pb2_grpc.HealthStub(opened)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except (OSError, KeyError) as exc:
        print(f"healthcheck: cannot read the TLS files: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"healthcheck: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if answer.status != health_pb2.HealthCheckResponse.SERVING and "--alive" not in argv:
        print(f"healthcheck: {status}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
