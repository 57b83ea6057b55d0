#!/usr/bin/env bash
# A throwaway Accord deployment on loopback: a 3-member etcd cluster and two
# coordinator replicas, for tests and experiments.
#
#   deploy/local-cluster.sh up DIR      start everything, wait until it serves
#   deploy/local-cluster.sh status DIR  show what runs (exit 0 only if all of it does)
#   deploy/local-cluster.sh down DIR    stop everything (data under DIR is kept)
#
# Ports: etcd member i (0..2) serves clients on BASE+10*i and peers on BASE+10*i+1;
# coordinator j (0..1) listens on BASE+100+j (gRPC) and BASE+110+j (y-websocket).
# BASE is ACCORD_BASE_PORT (default 23790).
# `up` writes DIR/endpoints.env (ACCORD_ETCD=..., ACCORD_ADDR=...) once all is ready.
#
# Auth: off by default (loopback only, with a loud warning). ACCORD_AUTH=required runs
# the replicas with `--auth required`; the first `up` bootstraps a cluster admin
# (deploy/bootstrap-admin.sh) and keeps its token in DIR/admin.token (mode 0600), and
# endpoints.env then also names ACCORD_AUTH and ACCORD_ADMIN_TOKEN_FILE.
#
# TLS: ACCORD_TLS=on serves gRPC and y-websocket (wss://) over TLS with a certificate
# for 127.0.0.1 signed by a CA made once in DIR/tls (openssl); endpoints.env then names
# ACCORD_TLS_CA, which clients and the admin commands trust.
#
# Environment: ACCORD_BASE_PORT, ACCORD_AUTH (off|required), ACCORD_TLS (off|on),
# ACCORD_PYTHON (default python3), ETCD_BIN / ETCDCTL_BIN (default: found on PATH).
set -euo pipefail

readonly MEMBERS=(0 1 2)
readonly REPLICAS=(0 1)
readonly READY_TIMEOUT=30   # seconds to wait for etcd health, and again for the coordinators
readonly STOP_TIMEOUT=15    # seconds a process gets after SIGTERM before SIGKILL

die() {
  echo "local-cluster: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 up|down|status DIR" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
readonly ACTION=$1
[[ -n $2 ]] || usage
# Absolute, so pid checks and etcd data dirs do not depend on the caller's cwd.
DIR=$(realpath -m -- "$2")
readonly DIR

BASE=${ACCORD_BASE_PORT:-23790}
[[ $BASE =~ ^[0-9]+$ ]] && ((BASE >= 1024 && BASE + 111 <= 65535)) \
  || die "ACCORD_BASE_PORT=$BASE: need an integer so that 1024 <= BASE and BASE+111 <= 65535"
readonly BASE

AUTH=${ACCORD_AUTH:-off}
[[ $AUTH == off || $AUTH == required ]] || die "ACCORD_AUTH=$AUTH: need off or required"
readonly AUTH
readonly TOKEN_FILE="$DIR/admin.token"
TLS=${ACCORD_TLS:-off}
[[ $TLS == off || $TLS == on ]] || die "ACCORD_TLS=$TLS: need off or on"
readonly TLS TLS_DIR="$DIR/tls"
readonly HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

client_port() { echo $((BASE + 10 * $1)); }
peer_port() { echo $((BASE + 10 * $1 + 1)); }
coordinator_port() { echo $((BASE + 100 + $1)); }
ws_port() { echo $((BASE + 110 + $1)); }

etcd_endpoints() {
  local i out=()
  for i in "${MEMBERS[@]}"; do out+=("127.0.0.1:$(client_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}

coordinator_addrs() {
  local j out=()
  for j in "${REPLICAS[@]}"; do out+=("127.0.0.1:$(coordinator_port "$j")"); done
  (IFS=,; echo "${out[*]}")
}

initial_cluster() {
  local i out=()
  for i in "${MEMBERS[@]}"; do out+=("etcd-$i=http://127.0.0.1:$(peer_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}

# The string a live process of this deployment must have on its command line; it
# guards against signalling an unrelated process that reused a stale pid.
signature() {
  case $1 in
    etcd-*) echo "$DIR/$1" ;;
    coordinator-*) echo "--replica $1" ;;
  esac
}

# Prints the pid of component $1 if it is running, nothing otherwise.
live_pid() {
  local name=$1 file="$DIR/$1.pid" pid cmdline
  [[ -f $file ]] || return 0
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
  if [[ $cmdline == *"$(signature "$name")"* ]]; then echo "$pid"; fi
}

components() {
  local i j
  for j in "${REPLICAS[@]}"; do echo "coordinator-$j"; done
  for i in "${MEMBERS[@]}"; do echo "etcd-$i"; done
}

port_of() {
  case $1 in
    etcd-*) client_port "${1#etcd-}" ;;
    coordinator-*) coordinator_port "${1#coordinator-}" ;;
  esac
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bounded by timeout).
accepts() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when nothing listens on port $1 on loopback or the wildcard address.
# SO_REUSEADDR, as etcd and gRPC use, so TIME_WAIT leftovers of a previous run don't count.
port_free() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
EOF
}

find_tools() {
  ETCD=${ETCD_BIN:-$(command -v etcd || true)}
  ETCDCTL=${ETCDCTL_BIN:-$(command -v etcdctl || true)}
  PYTHON=$(command -v "${ACCORD_PYTHON:-python3}" || true)
  [[ -n $ETCD && -x $ETCD ]] \
    || die "etcd not found${ETCD_BIN:+ at $ETCD_BIN}: install it (Debian: apt-get install etcd-server) or set ETCD_BIN"
  [[ -n $ETCDCTL && -x $ETCDCTL ]] \
    || die "etcdctl not found${ETCDCTL_BIN:+ at $ETCDCTL_BIN}: install it (Debian: apt-get install etcd-client) or set ETCDCTL_BIN"
  [[ -n $PYTHON ]] || die "python not found: ${ACCORD_PYTHON:-python3} (set ACCORD_PYTHON)"
  "$PYTHON" -c 'import accord.coordinator' 2>/dev/null \
    || die "$PYTHON cannot import accord.coordinator: install the package (pip install -e .) or set ACCORD_PYTHON"
}

# Starts "$@" detached from this script (own session, no terminal), logging to
# DIR/$name.log, and records its pid. setsid and nohup exec, so $! is the real pid.
spawn() {
  local name=$1
  shift
  setsid nohup "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# Fails with the log tail if component $1 is no longer running.
check_alive() {
  if [[ -z $(live_pid "$1") ]]; then
    echo "local-cluster: $1 exited; last lines of $DIR/$1.log:" >&2
    tail -n 20 "$DIR/$1.log" >&2 || true
    return 1
  fi
}

etcdctl_all() {
  ETCDCTL_API=3 "$ETCDCTL" --endpoints="$(etcd_endpoints)" --dial-timeout=2s --command-timeout=3s "$@"
}

# SIGTERM, then SIGKILL after STOP_TIMEOUT; every component of this deployment.
stop_all() {
  local name pid
  # Coordinators first, so they drain calls while etcd still answers.
  for name in $(components); do
    pid=$(live_pid "$name")
    if [[ -n $pid ]]; then
      echo "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + STOP_TIMEOUT))
      while [[ -n $(live_pid "$name") ]] && ((SECONDS < deadline)); do sleep 0.2; done
      if [[ -n $(live_pid "$name") ]]; then
        echo "local-cluster: $name did not stop within ${STOP_TIMEOUT}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
      fi
    fi
    rm -f "$DIR/$name.pid"
  done
  rm -f "$DIR/endpoints.env"
}

cmd_up() {
  find_tools

  local name
  for name in $(components); do
    [[ -z $(live_pid "$name") ]] || die "$name already runs from $DIR (pid $(live_pid "$name")); run: $0 down $DIR"
    rm -f "$DIR/$name.pid"
  done
  rm -f "$DIR/endpoints.env"

  # Refuse to start at all if any port is taken, rather than half a cluster.
  local i j port taken=()
  for i in "${MEMBERS[@]}"; do
    for port in "$(client_port "$i")" "$(peer_port "$i")"; do
      port_free "$port" || taken+=("$port")
    done
  done
  for j in "${REPLICAS[@]}"; do
    for port in "$(coordinator_port "$j")" "$(ws_port "$j")"; do
      port_free "$port" || taken+=("$port")
    done
  done
  ((${#taken[@]} == 0)) \
    || die "port(s) already in use on 127.0.0.1: ${taken[*]} (choose another ACCORD_BASE_PORT)"
  mkdir -p "$DIR"

  # From here on, a failure stops whatever was started.
  trap 'echo "local-cluster: up failed; stopping what was started" >&2; stop_all >&2' ERR
  trap 'echo "local-cluster: interrupted; stopping what was started" >&2; stop_all >&2; exit 130' INT TERM
  set -E

  local cluster token
  cluster=$(initial_cluster)
  # One token per DIR keeps members of different local clusters from joining each other.
  token="accord-local-$(echo "$DIR" | cksum | cut -d' ' -f1)"
  for i in "${MEMBERS[@]}"; do
    local client="http://127.0.0.1:$(client_port "$i")" peer="http://127.0.0.1:$(peer_port "$i")"
    # initial-cluster* only matter on first start; a restart reuses the data dir's membership.
    spawn "etcd-$i" "$ETCD" \
      --name "etcd-$i" \
      --data-dir "$DIR/etcd-$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-token "$token" \
      --initial-cluster-state new \
      --logger zap
  done

  echo "waiting for etcd at $(etcd_endpoints) ..."
  local deadline=$((SECONDS + READY_TIMEOUT))
  until etcdctl_all endpoint health >/dev/null 2>&1; do
    for i in "${MEMBERS[@]}"; do check_alive "etcd-$i"; done
    if ((SECONDS >= deadline)); then
      etcdctl_all endpoint health >&2 || true
      echo "local-cluster: etcd cluster not healthy within ${READY_TIMEOUT}s; logs in $DIR" >&2
      false
    fi
    sleep 0.5
  done

  if [[ $AUTH == required ]]; then
    bash "$HERE/bootstrap-admin.sh" "$PYTHON" "$(etcd_endpoints)" accord "$TOKEN_FILE"
  else
    echo "local-cluster: WARNING: auth is off, so any local process may act as any agent;" \
      "to require tokens: ACCORD_AUTH=required $0 up DIR" >&2
  fi

  local tls_args=()
  if [[ $TLS == on ]]; then
    make_certificates
    tls_args=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key")
  fi
  for j in "${REPLICAS[@]}"; do
    spawn "coordinator-$j" "$PYTHON" -m accord.coordinator serve \
      --listen "127.0.0.1:$(coordinator_port "$j")" \
      --ws-listen "127.0.0.1:$(ws_port "$j")" \
      --etcd "$(etcd_endpoints)" \
      --replica "coordinator-$j" \
      --auth "$AUTH" "${tls_args[@]}"
  done

  echo "waiting for coordinators at $(coordinator_addrs) ..."
  deadline=$((SECONDS + READY_TIMEOUT))
  for j in "${REPLICAS[@]}"; do
    until accepts "$(coordinator_port "$j")"; do
      check_alive "coordinator-$j"
      if ((SECONDS >= deadline)); then
        echo "local-cluster: coordinator-$j not listening within ${READY_TIMEOUT}s; see $DIR/coordinator-$j.log" >&2
        false
      fi
      sleep 0.3
    done
  done

  # Written last, atomically: its presence means the deployment is ready.
  {
    printf 'ACCORD_ETCD=%s\nACCORD_ADDR=%s\n' "$(etcd_endpoints)" "$(coordinator_addrs)"
    if [[ $AUTH == required ]]; then
      printf 'ACCORD_AUTH=required\nACCORD_ADMIN_TOKEN_FILE=%s\n' "$TOKEN_FILE"
    fi
    if [[ $TLS == on ]]; then
      printf 'ACCORD_TLS_CA=%s\n' "$TLS_DIR/ca.pem"
    fi
  } >"$DIR/endpoints.env.tmp"
  mv "$DIR/endpoints.env.tmp" "$DIR/endpoints.env"
  trap - ERR INT TERM
  echo "up: etcd $(etcd_endpoints); coordinators $(coordinator_addrs); env in $DIR/endpoints.env"
}

# A CA and a server certificate for 127.0.0.1/localhost, made once (kept across `up`).
make_certificates() {
  [[ -f $TLS_DIR/server.pem ]] && return 0
  command -v openssl >/dev/null || die "ACCORD_TLS=on needs openssl"
  mkdir -p "$TLS_DIR" && chmod 700 "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=accord-local-ca" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
      -extfile server.ext -out server.pem 2>/dev/null
    rm -f server.csr server.ext
  )
}

cmd_down() {
  [[ -d $DIR ]] || { echo "nothing to stop: $DIR does not exist"; return 0; }
  stop_all
  echo "down: stopped; data and logs remain in $DIR"
}

cmd_status() {
  local name pid port all=0 any=0
  printf '%-14s %-8s %-8s %s\n' COMPONENT PID STATE ADDRESS
  for name in $(components); do
    pid=$(live_pid "$name")
    port=$(port_of "$name")
    if [[ -n $pid ]]; then
      any=1
      local state=running
      accepts "$port" || state=starting
      printf '%-14s %-8s %-8s %s\n' "$name" "$pid" "$state" "127.0.0.1:$port"
    else
      all=1
      printf '%-14s %-8s %-8s %s\n' "$name" - stopped "127.0.0.1:$port"
    fi
  done
  if ((any)) && ETCDCTL=${ETCDCTL_BIN:-$(command -v etcdctl || true)} && [[ -n $ETCDCTL ]]; then
    echo
    etcdctl_all endpoint status --write-out=table 2>&1 || true
  fi
  if [[ -f $DIR/endpoints.env ]]; then
    echo
    cat "$DIR/endpoints.env"
  fi
  # LSB convention: 0 when everything runs, 3 otherwise.
  ((all == 0)) || return 3
}

case $ACTION in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
