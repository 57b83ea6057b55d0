#!/usr/bin/env bash
# Installs what Accord needs on a fresh Debian machine, only what is missing:
# etcd (Debian's etcd-server/etcd-client), a virtualenv in .venv with Accord and its
# Python dependencies, and with --dev the test tools (pgrep, ss), Node.js and the Node test
# packages.
# Sourced by deploy/serve.sh and deploy/test.sh; safe to run again.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev=${1:-}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "setup: installing etcd from Debian's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq etcd-server etcd-client >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x "$repo/.venv/bin/python" ]; then
  echo "setup: creating $repo/.venv" >&2
  "$python" -m venv "$repo/.venv"
fi
stamp="$repo/.venv/.accord-installed${dev:+-dev}"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  echo "setup: installing Python packages" >&2
  "$repo/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  if [ "$dev" = "--dev" ]; then
    "$repo/.venv/bin/python" -m pip install -q -e "$repo[dev]"
  else
    "$repo/.venv/bin/python" -m pip install -q -e "$repo"
  fi
  touch "$stamp"
fi

if [ "$dev" = "--dev" ]; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup: installing Node.js from Debian's packages" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
  fi
  # The tests find their processes and listening sockets with pgrep and ss.
  if ! command -v pgrep >/dev/null || ! command -v ss >/dev/null; then
    echo "setup: installing procps and iproute2 from Debian's packages" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq procps iproute2 >/dev/null
  fi
  # Installed again whenever package-lock.json differs from the one last installed.
  node_dir="$repo/tests/node"
  if ! cmp -s "$node_dir/package-lock.json" "$node_dir/node_modules/.accord-installed-lock"; then
    echo "setup: installing the Node test packages" >&2
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$node_dir/package-lock.json" "$node_dir/node_modules/.accord-installed-lock"
  fi
fi
