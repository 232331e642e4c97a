# Shared by scripts/bench-proxy.sh and scripts/bench-policy.sh (sourced, not
# run): the tools, the tessera binary, the temporary data dir and its cleanup,
# the wait helpers, the control plane (a real `tessera server` and `tessera
# identity` with namespace `bench` and the client/server service accounts) and
# the nginx backend answering a fixed 2-byte body. Expects `set -euo pipefail`,
# the repository root as the working directory and $OUT to exist.

# bench_tools "TOOL:DEBIAN_PACKAGE ..." "NEEDED_TOOL ...": installs the missing
# packages (Debian, needs root), then fails unless every needed tool is there.
bench_tools() {
  local tool missing=()
  for tool in $1; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian)…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
  fi
  for tool in $2; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
  done
}

# bench_tessera: sets TESSERA to $TESSERA_BIN, else to a fresh release build.
bench_tessera() {
  if [ -n "${TESSERA_BIN:-}" ]; then
    TESSERA=$TESSERA_BIN
  else
    echo "building tessera (release)…" >&2
    CARGO_INCREMENTAL=0 cargo build --release -p tessera >&2
    TESSERA=$PWD/target/release/tessera
  fi
}

# bench_data: sets DATA (a temporary dir) and PIDS; on exit every pid in PIDS
# is stopped and DATA removed.
bench_data() {
  DATA=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# cpu_ticks PID...: user + system CPU time of the pids, in clock ticks.
cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

# wait_line FILE PREFIX: waits (10 s) for a line starting with PREFIX in FILE; prints the rest.
wait_line() {
  local file=$1 prefix=$2 i line
  for i in $(seq 200); do
    line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
    if [ -n "$line" ]; then echo "${line#"$prefix"}"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for '$prefix' in $file" >&2
  return 1
}

# wait_http URL: waits (WAIT_HTTP_SECONDS, 15 s) for a 200 from URL.
wait_http() {
  local i
  for i in $(seq $((${WAIT_HTTP_SECONDS:-15} * 10))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    sleep 0.1
  done
  echo "no 200 from $1" >&2
  return 1
}

# bench_control_plane: starts `tessera server` and `tessera identity` (bootstrap
# anchors); sets KUBECONFIG (exported), API, PKI, IDENTITY and writes
# $DATA/api-ca.crt, $DATA/{client,server}.identity-token (audience
# identity.l5d.io) and $DATA/client.api-token for namespace bench.
bench_control_plane() {
  local sa
  TESSERA_LOG=warn "$TESSERA" server --bind 127.0.0.1:0 --data-dir "$DATA/server" >"$OUT/server.out" 2>"$OUT/server.log" &
  PIDS+=($!)
  KUBECONFIG=$(wait_line "$OUT/server.out" "kubeconfig: ")
  export KUBECONFIG
  API=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$DATA/api-ca.crt"

  PKI=$DATA/pki
  "$TESSERA" identity bootstrap --out "$PKI" >/dev/null
  TESSERA_LOG=warn "$TESSERA" identity --addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --kubeconfig "$KUBECONFIG" \
    --trust-anchors "$PKI/ca.crt" --issuer-dir "$PKI" >"$OUT/identity.out" 2>"$OUT/identity.log" &
  PIDS+=($!)
  IDENTITY=$(wait_line "$OUT/identity.out" "tessera identity listening on ")

  kubectl create namespace bench >/dev/null
  kubectl create serviceaccount client -n bench >/dev/null
  kubectl create serviceaccount server -n bench >/dev/null
  for sa in client server; do
    kubectl create token "$sa" -n bench --audience identity.l5d.io --duration 1h >"$DATA/$sa.identity-token"
  done
  kubectl create token client -n bench --duration 1h >"$DATA/client.api-token"
}

# bench_backend: starts nginx (2 workers, access log off) answering 200 'ok' on
# 127.0.0.1:BACKEND_PORT (set here).
bench_backend() {
  BACKEND_PORT=$(free_port)
  local n=$DATA/nginx
  mkdir -p "$n/logs"
  cat >"$n/nginx.conf" <<EOF
worker_processes 2;
pid $n/nginx.pid;
error_log $n/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $n/body;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    default_type text/plain;
    location / { return 200 'ok'; }
  }
}
EOF
  nginx -p "$n" -c "$n/nginx.conf" -g 'daemon off;' 2>"$OUT/nginx.log" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$BACKEND_PORT/"
}

# proxy_program BIN: what runs a meshed pod's proxy from the tessera binary BIN,
# as `tessera agent run --mesh` picks it: `tessera-proxy` beside BIN when cargo
# built it there, else BIN itself (`BIN proxy`). A BIN that is already
# `tessera-proxy` is itself.
proxy_program() {
  local sidecar
  sidecar="$(dirname "$1")/tessera-proxy"
  if [ "$(basename "$1")" != tessera-proxy ] && [ -x "$sidecar" ]; then echo "$sidecar"; else echo "$1"; fi
}

# bench_pair NAME BIN POD_IP [INBOUND_FLAG...] -- [OUTBOUND_FLAG...]: a tessera
# proxy pair from BIN for the meshed pod at POD_IP:POD_PORT (registered by the
# caller): the inbound (identity server.bench, to the backend, admin
# POD_IP:4191) and the outbound (identity client.bench, resolving through the
# destination API, `--outbound-tcp` on a free port), each with its extra flags,
# both ready. Sets IN_PID, OUT_PID, TCP_PORT and OUTBOUND (the forward proxy's
# address).
bench_pair() {
  local name=$1 bin=$2 pod_ip=$3 in_flags=() out_admin proxy=("$2")
  shift 3
  [ "$(basename "$bin")" = tessera-proxy ] || proxy+=(proxy)
  while [ $# -gt 0 ] && [ "$1" != -- ]; do in_flags+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  TESSERA_LOG=warn "${proxy[@]}" --identity-addr "$IDENTITY" \
    --identity server.bench.serviceaccount.identity.linkerd.cluster.local \
    --token-file "$DATA/server.identity-token" --trust-anchors "$PKI/ca.crt" \
    --inbound "$pod_ip:$POD_PORT=127.0.0.1:$BACKEND_PORT" --admin-addr "$pod_ip:4191" "${in_flags[@]}" \
    >"$OUT/$name-inbound.out" 2>"$OUT/$name-inbound.log" &
  IN_PID=$!
  PIDS+=($IN_PID)
  wait_line "$OUT/$name-inbound.out" "tessera proxy inbound on " >/dev/null
  # /ready is 503 until the proxy has its certificate (and, with --policy on, its first policy).
  wait_http "http://$pod_ip:4191/ready"
  TCP_PORT=$(free_port)
  TESSERA_LOG=warn "${proxy[@]}" --identity-addr "$IDENTITY" \
    --identity client.bench.serviceaccount.identity.linkerd.cluster.local \
    --token-file "$DATA/client.identity-token" --trust-anchors "$PKI/ca.crt" \
    --outbound-addr 127.0.0.1:0 --outbound-tcp "127.0.0.1:$TCP_PORT=$pod_ip:$POD_PORT" \
    --admin-addr 127.0.0.1:0 --api-server "$API" --api-token-file "$DATA/client.api-token" --api-ca "$DATA/api-ca.crt" "$@" \
    >"$OUT/$name-outbound.out" 2>"$OUT/$name-outbound.log" &
  OUT_PID=$!
  PIDS+=($OUT_PID)
  OUTBOUND=$(wait_line "$OUT/$name-outbound.out" "tessera proxy outbound on ")
  out_admin=$(wait_line "$OUT/$name-outbound.out" "tessera proxy admin on ")
  wait_http "$out_admin/ready"
}
