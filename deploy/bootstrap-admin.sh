#!/usr/bin/env bash
# The first cluster admin of a deployment that runs with `--auth required`, made once.
#
#   deploy/bootstrap-admin.sh PYTHON ETCD ROOT TOKEN_FILE
#
# If TOKEN_FILE exists, nothing is done (its token is the admin's). Otherwise runs
# `accord auth bootstrap --principal admin` against etcd ETCD under key prefix ROOT (with
# PYTHON -m accord.coordinator) and keeps the secret in TOKEN_FILE, mode 0600; it is never
# printed. Used by deploy/serve.sh and deploy/local-cluster.sh.
#
# Error handling: exit 0 when TOKEN_FILE holds a token, or when etcd already has a cluster
# admin (then there is no token to keep: a warning says to ask that admin); exit 3 when
# etcd cannot be reached (callers waiting for etcd retry); any other failure exits 1 with
# accord's message.
set -euo pipefail

[[ $# -eq 4 ]] || { echo "usage: $0 PYTHON ETCD ROOT TOKEN_FILE" >&2; exit 2; }
python=$1 etcd=$2 root=$3 token_file=$4
readonly PRINCIPAL=admin

if [[ -s $token_file ]]; then
  echo "auth: cluster admin token in $token_file"
  exit 0
fi

err=$(mktemp)
trap 'rm -f "$err"' EXIT
rc=0
made=$("$python" -m accord.coordinator auth bootstrap --principal "$PRINCIPAL" \
  --etcd "$etcd" --root "$root" -o json 2>"$err") || rc=$?
if ((rc != 0)); then
  if grep -q "already has cluster admins" "$err"; then
    echo "auth: WARNING: etcd at $etcd already has a cluster admin and $token_file is" \
      "missing; ask that admin for a token (accord auth token create)" >&2
    exit 0
  fi
  ((rc == 3)) || cat "$err" >&2
  exit "$rc"
fi

# Written under umask 077 and renamed into place, so the secret is never world-readable.
(
  umask 077
  printf '%s' "$made" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["secret"])' \
    >"$token_file.tmp"
)
mv "$token_file.tmp" "$token_file"
echo "auth: bootstrapped cluster admin '$PRINCIPAL'; its token is in $token_file (mode 0600)"
echo "auth: use it with: accord auth whoami --token \"\$(cat $token_file)\""
