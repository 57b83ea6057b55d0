#!/usr/bin/env bash
# Start Accord: installs what is missing (etcd included), then runs one coordinator
# replica. With no ACCORD_ETCD it starts a private etcd, keeping data in ./accord-data.
# Any `accord serve` flag may follow, e.g. deploy/serve.sh --listen 0.0.0.0:50051
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/deploy/setup.sh"
exec "$repo/.venv/bin/accord" serve "$@"
