#!/usr/bin/env bash
# Start Accord: installs what is missing (etcd included), then runs one coordinator
# replica. With no ACCORD_ETCD it starts a private etcd, keeping data in ./accord-data.
# Any `accord serve` flag may follow, e.g. deploy/serve.sh --listen 0.0.0.0:50051, or
# --workers 2 for two replica processes on the same ports (one private etcd for both).
#
# Auth is off by default (loopback only, with a loud warning). With `--auth required`
# (or ACCORD_AUTH=required) the first start also bootstraps a cluster admin
# (deploy/bootstrap-admin.sh) and keeps its token in DATA_DIR/admin.token, mode 0600.
#
# Error handling: setup or bootstrap failing stops the script (and the replica it
# started) with a non-zero exit; otherwise it exits with the replica's status.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/deploy/setup.sh"
python="$repo/.venv/bin/python"
serve=("$repo/.venv/bin/accord" serve "$@")

# The `accord serve` settings this script needs: from the flags, else their variables.
auth=${ACCORD_AUTH:-off} data_dir=${ACCORD_DATA_DIR:-accord-data}
etcd=${ACCORD_ETCD:-} root=${ACCORD_ROOT:-accord}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  flag=${args[i]}
  case $flag in
    --auth | --data-dir | --etcd | --root) value=${args[i + 1]:-} && ((++i)) ;;
    --auth=* | --data-dir=* | --etcd=* | --root=*) value=${flag#*=} flag=${flag%%=*} ;;
    *) continue ;;
  esac
  case $flag in
    --auth) auth=$value ;;
    --data-dir) data_dir=$value ;;
    --etcd) etcd=$value ;;
    --root) root=$value ;;
  esac
done

if [[ $auth != required ]]; then # accord serve refuses a mode it does not know
  [[ $auth != off ]] || echo "serve: WARNING: auth is off, so any local process may act as" \
    "any agent; to require tokens: $0 --auth required" >&2
  exec "${serve[@]}"
fi

token_file="$data_dir/admin.token"
bootstrap() { bash "$repo/deploy/bootstrap-admin.sh" "$python" "$1" "$root" "$token_file"; }

if [[ -n $etcd ]]; then # an existing etcd: bootstrap first, then serve
  mkdir -p "$data_dir"
  bootstrap "$etcd"
  exec "${serve[@]}"
fi

# The private etcd starts with the replica: serve, and bootstrap once etcd answers.
"${serve[@]}" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
ports="$data_dir/etcd-ports.json"
etcd_port() {
  "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["client"])' "$ports"
}
deadline=$((SECONDS + 60))
until [[ -f $ports ]] && port=$(etcd_port) \
  && timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null \
  && { rc=0 && bootstrap "127.0.0.1:$port" || rc=$?; ((rc != 3)); }; do
  kill -0 "$pid" 2>/dev/null || { wait "$pid" || exit $?; exit 1; } # the replica gave up
  if ((SECONDS >= deadline)); then
    echo "serve: the private etcd did not answer within 60s; see $data_dir/etcd.log" >&2
    rc=1
    break
  fi
  sleep 0.5
done
if ((rc != 0)); then
  kill -TERM "$pid"
  wait "$pid" || true
  exit "$rc"
fi

# Until the replica exits; a signal to this script is passed on to it (trap above).
status=0
while :; do
  wait "$pid" && status=0 || status=$?
  kill -0 "$pid" 2>/dev/null || break
done
exit "$status"
