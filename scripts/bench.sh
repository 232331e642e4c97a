#!/usr/bin/env bash
# The benchmark table of BENCHMARKS.md from one run (issue 14): builds tessera
# in release mode, starts a fresh `tessera server` (temporary data dir, port 0),
# stores STORED ServiceAccounts in it, then runs every row below with the same
# `tessera bench` settings against
#   - tessera,
#   - a second API server when COMPARE_KUBECONFIG is given (e.g. kube-apiserver
#     1.32 on etcd): a side-by-side column and the ratio,
#   - nginx answering a fixed JSON over HTTPS (Debian `nginx-light`, installed
#     by this script when missing and run as root): the machine's ceiling,
#     measured with the same client (`tessera bench https-ceiling`) and, when
#     Debian's `wrk` is there, with wrk too,
# while sampling the tessera server's VmRSS every 200 ms (peak per row, and
# idle after the whole run).
#
#   scripts/bench.sh                                   # the whole table
#   COMPARE_KUBECONFIG=~/kube.kubeconfig scripts/bench.sh
#   DURATION=1s WARMUP=0s STORED=0 ROWS="tokenreview get-sa" scripts/bench.sh   # a smoke run
#
# Knobs (environment): DURATION (10s), WARMUP (2s), CONCURRENCY (8), STORED
# (ServiceAccounts stored before the rows, 10000), TOKENS (tokens minted for
# tokenreview-uncached, 150000), WATCHERS (10), ROWS (all rows, below), NGINX
# (1; 0 skips the ceiling), COMPARE_KUBECONFIG, COMPARE_NAME (kube-apiserver),
# TESSERA_BIN (use this binary instead of building one), FEATURES (cargo
# features of the build, e.g. `mimalloc`), NO_DEFAULT_FEATURES (1: build
# without the default features, i.e. glibc malloc; FEATURES=etcd keeps etcd),
# SERVER_WRAPPER (a command the server runs under, e.g. `heaptrack -o FILE`),
# NS_WAIT (seconds, 120: after each row, wait until the row's namespace is
# gone before the next row starts, so a row does not pay for the previous
# row's deletion; 0 does not wait; needs kubectl), OUT (target/bench/<UTC time>).
# Results: $OUT/results.md (the tables), $OUT/<target>/<row>.json (the bench's
# summaries), $OUT/rss.tsv (every RSS and thread-count sample),
# $OUT/tessera/<row>.mem (the server's memory after each row: anonymous and
# file pages, threads; `after.mem` and `after.smaps` 5 s after the last row),
# $OUT/<target>/<row>.nswait (seconds until the row's namespace was gone, or
# `timeout`), $OUT/server.log.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-8}
STORED=${STORED:-10000}
TOKENS=${TOKENS:-150000}
WATCHERS=${WATCHERS:-10}
NGINX=${NGINX:-1}
export NS_WAIT=${NS_WAIT:-120}
COMPARE_NAME=${COMPARE_NAME:-kube-apiserver}
# A row is `scenario` or `scenario:objects`.
ROWS=${ROWS:-"tokenreview tokenreview-uncached sar tokenrequest get-sa:1000 list-sa:100 list-sa:1000 create-sa watch-fanout"}
OUT=${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v python3 >/dev/null || { echo "python3 is needed to tabulate the results" >&2; exit 1; }
if [ "$NS_WAIT" -gt 0 ] && ! command -v kubectl >/dev/null; then
  echo "no kubectl: rows will not wait for their namespace to be gone (NS_WAIT=0)" >&2
  NS_WAIT=0
fi

if [ -n "${TESSERA_BIN:-}" ]; then
  TESSERA=$TESSERA_BIN
else
  echo "building tessera (release)…" >&2
  cargo build --release -p tessera ${NO_DEFAULT_FEATURES:+--no-default-features} ${FEATURES:+--features "$FEATURES"} >&2
  TESSERA=$PWD/target/release/tessera
fi

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Where the server's memory is at this moment (BENCHMARKS.md "Memory"):
# resident anonymous vs file pages and threads from status, the rollup of smaps.
mem_snapshot() {
  { grep -E '^(VmRSS|RssAnon|RssFile|Threads):' "/proc/$SERVER_PID/status"
    grep -E '^(Anonymous|Private_Dirty|Private_Clean|Shared_Clean):' "/proc/$SERVER_PID/smaps_rollup"
  } >"$1" 2>/dev/null || true
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICKS=$(getconf CLK_TCK)

SERVER_PID=""
NGINX_PID=""
DATA=$(mktemp -d)
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "${WRAPPER_PID:-}" ]; then wait "$WRAPPER_PID" 2>/dev/null || true; fi
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

# --- tessera --------------------------------------------------------------
FIFO=$DATA/stdout
mkfifo "$FIFO"
start_ns=$(date +%s%N)
# SERVER_WRAPPER (e.g. `heaptrack -o FILE`) runs the server under a profiler;
# RSS is then sampled from the tessera process itself, not the wrapper.
# shellcheck disable=SC2086
TESSERA_LOG=warn ${SERVER_WRAPPER:-} "$TESSERA" server --bind 127.0.0.1:0 --data-dir "$DATA/data" >"$FIFO" 2>"$OUT/server.log" &
SERVER_PID=$!
WRAPPER_PID=""
TESSERA_KUBECONFIG=""
exec 3<"$FIFO"
while IFS= read -r line <&3; do
  echo "$line" >>"$OUT/server.stdout"
  case $line in kubeconfig:\ *) TESSERA_KUBECONFIG=${line#kubeconfig: }; break ;; esac
done
READY_MS=$(( ($(date +%s%N) - start_ns) / 1000000 ))
# Keep draining the server's stdout so it never blocks on a full pipe.
cat <&3 >>"$OUT/server.stdout" &
[ -n "$TESSERA_KUBECONFIG" ] || { echo "the server did not print its kubeconfig; see $OUT/server.log" >&2; exit 1; }
if [ -n "${SERVER_WRAPPER:-}" ]; then
  WRAPPER_PID=$SERVER_PID
  exe=$(readlink -f "$TESSERA")
  for pid in $(pgrep -f -- "--data-dir $DATA/data"); do
    [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] && SERVER_PID=$pid
  done
fi
sleep 2
IDLE_RSS=$(rss_kb "$SERVER_PID")
echo "tessera ready in ${READY_MS} ms, idle RSS ${IDLE_RSS} kB" >&2

# Samples the server's RSS (kB) and threads every 200 ms into rss.tsv until the file $1 is gone.
sample_rss() {
  local flag=$1 label=$2
  while [ -e "$flag" ]; do
    printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$label" "$(rss_kb "$SERVER_PID")" "$(threads "$SERVER_PID")" >>"$OUT/rss.tsv"
    sleep 0.2
  done
}

# bench TARGET KUBECONFIG NAME SCENARIO [ARGS…]: one run, summary in $OUT/TARGET/NAME.json.
bench() {
  local target=$1 kubeconfig=$2 name=$3 scenario=$4
  shift 4
  mkdir -p "$OUT/$target"
  echo "== $target: $name" >&2
  local timing=() cpu0 flag namespaces_before=""
  [ "$NS_WAIT" -gt 0 ] && namespaces_before=$(bench_namespaces "$kubeconfig")
  if [ -x /usr/bin/time ]; then timing=(/usr/bin/time -f '%e %U %S %M' -o "$OUT/$target/$name.time"); fi
  cpu0=$(cpu_ticks "$SERVER_PID")
  local sampler=""
  flag=$(mktemp)
  if [ "$target" = tessera ]; then sample_rss "$flag" "$name" & sampler=$!; fi
  "${timing[@]}" "$TESSERA" bench "$scenario" --kubeconfig "$kubeconfig" --concurrency "$CONCURRENCY" \
      --duration "$DURATION" --warmup "$WARMUP" --output json --no-progress "$@" \
      >"$OUT/$target/$name.json" 2>"$OUT/$target/$name.log" \
    || { echo "tessera bench $scenario against $target failed: see $OUT/$target/$name.log" >&2; tail -3 "$OUT/$target/$name.log" >&2; }
  rm -f "$flag"
  if [ -n "$sampler" ]; then wait "$sampler" 2>/dev/null || true; fi
  if [ "$target" = tessera ]; then
    local peak
    peak=$(awk -F'\t' -v n="$name" '$2 == n && $3 > p {p = $3} END {print p + 0}' "$OUT/rss.tsv")
    echo "$peak $(( $(cpu_ticks "$SERVER_PID") - cpu0 )) $TICKS" >"$OUT/$target/$name.server"
    mem_snapshot "$OUT/$target/$name.mem"
  fi
  if [ "$NS_WAIT" -gt 0 ] && [ "$scenario" != https-ceiling ]; then
    # RSS sampled while the row's namespace is deleted has its own label.
    flag=$(mktemp); sampler=""
    if [ "$target" = tessera ]; then sample_rss "$flag" "$name:deletion" & sampler=$!; fi
    wait_namespaces_gone "$kubeconfig" "$namespaces_before" >"$OUT/$target/$name.nswait"
    rm -f "$flag"
    if [ -n "$sampler" ]; then wait "$sampler" 2>/dev/null || true; fi
  fi
}

# The bench's namespaces (`tessera-bench-*`) that KUBECONFIG lists now, one a line.
bench_namespaces() {
  kubectl --kubeconfig "$1" get namespaces -o name 2>/dev/null | grep '^namespace/tessera-bench-' || true
}

# wait_namespaces_gone KUBECONFIG BEFORE: waits (at most NS_WAIT s) until no
# bench namespace exists beyond those in BEFORE (the row's is being deleted);
# prints the seconds waited, or `timeout`.
wait_namespaces_gone() {
  local start end extra
  start=$(date +%s%N)
  end=$(( start + NS_WAIT * 1000000000 ))
  while :; do
    extra=$(bench_namespaces "$1" | { grep -vxF -e "${2:-none}" || true; } | wc -l)
    if [ "$extra" -eq 0 ]; then
      awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN {printf "%.1f\n", ns / 1e9}'
      return
    fi
    if [ "$(date +%s%N)" -ge "$end" ]; then
      echo "namespace of the row still there after ${NS_WAIT} s: starting the next row anyway" >&2
      echo timeout
      return
    fi
    sleep 0.5
  done
}

# populate TARGET KUBECONFIG: STORED ServiceAccounts kept in a namespace of their own.
populate() {
  [ "$STORED" -gt 0 ] || return 0
  echo "== $1: storing $STORED ServiceAccounts" >&2
  "$TESSERA" bench create-sa --kubeconfig "$2" --concurrency "$CONCURRENCY" --requests "$STORED" \
      --warmup 0s --keep --output json --no-progress >"$OUT/$1-populate.json" 2>"$OUT/$1-populate.log"
}

# rows TARGET KUBECONFIG: every row of ROWS.
rows() {
  local target=$1 kubeconfig=$2 row scenario objects extra
  for row in $ROWS; do
    scenario=${row%%:*}
    objects=""
    [ "$scenario" != "$row" ] && objects=${row#*:}
    extra=()
    case $scenario in
      tokenreview-uncached) extra=(--tokens "$TOKENS") ;;
      list-sa | get-sa | lease-renew) extra=(--objects "${objects:-100}") ;;
      watch-fanout) extra=(--watchers "$WATCHERS") ;;
    esac
    bench "$target" "$kubeconfig" "$row" "$scenario" "${extra[@]}"
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
flag=$(mktemp); sample_rss "$flag" populate & sampler=$!
populate tessera "$TESSERA_KUBECONFIG"
rm -f "$flag"; wait "$sampler" 2>/dev/null || true
STORED_RSS=$(rss_kb "$SERVER_PID")
rows tessera "$TESSERA_KUBECONFIG"
sleep 5
AFTER_RSS=$(rss_kb "$SERVER_PID")
mem_snapshot "$OUT/tessera/after.mem"
cp "/proc/$SERVER_PID/smaps" "$OUT/tessera/after.smaps" 2>/dev/null || true
echo "idle $IDLE_RSS stored $STORED_RSS after $AFTER_RSS ready_ms $READY_MS" >"$OUT/server.rss"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the second API server ------------------------------------------------
if [ -n "${COMPARE_KUBECONFIG:-}" ]; then
  before_ns=$(kubectl --kubeconfig "$COMPARE_KUBECONFIG" get ns -o name 2>/dev/null || true)
  populate compare "$COMPARE_KUBECONFIG"
  rows compare "$COMPARE_KUBECONFIG"
  # Remove what populate kept there (only namespaces this run created).
  for ns in $(kubectl --kubeconfig "$COMPARE_KUBECONFIG" get ns -o name 2>/dev/null | grep '^namespace/tessera-bench-' || true); do
    grep -qx "$ns" <<<"$before_ns" || kubectl --kubeconfig "$COMPARE_KUBECONFIG" delete "$ns" --wait=false >&2 || true
  done
fi

# --- the ceiling: nginx answering a fixed JSON over HTTPS -------------------
if [ "$NGINX" = 1 ]; then
  if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing nginx-light and wrk (Debian)…" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk >&2; } || true
    fi
  fi
  if command -v nginx >/dev/null; then
    N=$DATA/nginx
    mkdir -p "$N/logs"
    # A CA and a serving certificate for 127.0.0.1 (P-256, as tessera's).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=bench-ca \
      -keyout "$N/ca.key" -out "$N/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
      -keyout "$N/tls.key" -out "$N/tls.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$N/ext"
    openssl x509 -req -in "$N/tls.csr" -CA "$N/ca.crt" -CAkey "$N/ca.key" -CAcreateserial -days 1 \
      -extfile "$N/ext" -out "$N/tls.crt" 2>/dev/null
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Two workers: one per core, as tessera's runtime. It answers the
    # bench's namespace create (201) and delete like an API server.
    cat >"$N/nginx.conf" <<EOF
worker_processes 2;
pid $N/nginx.pid;
error_log $N/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $N/body;
  server {
    listen 127.0.0.1:$PORT ssl;
    ssl_certificate $N/tls.crt;
    ssl_certificate_key $N/tls.key;
    default_type application/json;
    location = /api/v1/namespaces { return 201 '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bench"}}'; }
    location / { return 200 '{"major":"1","minor":"32","gitVersion":"v1.32.0","platform":"linux/amd64"}'; }
  }
}
EOF
    nginx -p "$N" -c "$N/nginx.conf" -g 'daemon off;' 2>"$OUT/nginx.log" &
    NGINX_PID=$!
    python3 - "$PORT" <<'PY'
import socket, sys, time
deadline = time.time() + 10
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("nginx did not start")
PY
    cat >"$N/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nginx
  cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$N/ca.crt"}
users:
- name: nginx
  user: {token: ceiling}
contexts:
- name: nginx
  context: {cluster: nginx, user: nginx}
current-context: nginx
EOF
    bench nginx "$N/kubeconfig" https-ceiling https-ceiling
    if command -v wrk >/dev/null; then
      echo "== nginx: wrk" >&2
      wrk -t2 -c"$CONCURRENCY" -d"$DURATION" "https://127.0.0.1:$PORT/version" >"$OUT/nginx/wrk.txt" 2>&1 || true
    fi
  else
    echo "no nginx (run as root on Debian to have it installed): no ceiling row" >&2
  fi
fi

# --- the table ------------------------------------------------------------
python3 - "$OUT" "$COMPARE_NAME" "$CONCURRENCY" "$DURATION" "$STORED" "$LOAD_BEFORE" "$LOAD_AFTER" $ROWS >"$OUT/results.md" <<'PY'
import json, os, re, sys
out, compare_name, concurrency, duration, stored, load_before, load_after, rows = (
    sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8:])

def summary(target, name):
    try:
        with open(os.path.join(out, target, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def words(path):
    try:
        with open(os.path.join(out, path)) as f:
            return f.read().split()
    except OSError:
        return None

def rps(s):
    return s["requests_per_second"] if s and s["count"] and not s["errors"] else None

def cell(s):
    if s is None:
        return "failed | "
    errors = sum(s["errors"].values())
    note = f" ({errors} errors)" if errors else ""
    return f"{s['requests_per_second']:,.0f}{note} | {s['latency_ms']['p99']:.2f}"

def label(row):
    scenario, _, objects = row.partition(":")
    if scenario == "list-sa":
        return f"list-sa ({objects or 100} objects)"
    if scenario == "get-sa":
        return f"get-sa (of {objects or 100})"
    return scenario

ceiling = summary("nginx", "https-ceiling")
wrk = None
try:
    with open(os.path.join(out, "nginx", "wrk.txt")) as f:
        m = re.search(r"Requests/sec:\s*([\d.]+)", f.read())
        wrk = float(m.group(1)) if m else None
except OSError:
    pass
has_compare = os.path.isdir(os.path.join(out, "compare"))

head = "| row | tessera req/s | p99 ms |"
rule = "|---|---:|---:|"
if has_compare:
    head += f" {compare_name} req/s | p99 ms | tessera ÷ {compare_name} |"
    rule += "---:|---:|---:|"
if ceiling:
    head += " % of ceiling |"
    rule += "---:|"
head += " server peak RSS |"
rule += "---:|"
waited = any(words(os.path.join("tessera", row + ".nswait")) for row in rows)
if waited:
    head += " namespace deleted in | peak RSS meanwhile |"
    rule += "---:|---:|"
print(f"Concurrency {concurrency}, {duration} measured per row after the warm-up, closed loop; "
      f"{stored:,} ServiceAccounts stored before the rows; load average before {load_before}, after {load_after}.\n")
print(head)
print(rule)
for row in rows:
    t = summary("tessera", row)
    line = f"| {label(row)} | {cell(t)} |"
    if has_compare:
        c = summary("compare", row)
        ratio = f"{rps(t) / rps(c):.1f}×" if rps(t) and rps(c) else ""
        line += f" {cell(c)} | {ratio} |"
    if ceiling:
        line += f" {100 * rps(t) / rps(ceiling):.0f} % |" if rps(t) and rps(ceiling) else " |"
    server = words(os.path.join("tessera", row + ".server"))
    line += f" {int(server[0]) / 1024:.1f} MB |" if server else " |"
    if waited:
        nswait = words(os.path.join("tessera", row + ".nswait"))
        line += f" {nswait[0]} s |" if nswait and nswait[0] != "timeout" else f" > {os.environ.get('NS_WAIT', '120')} s |" if nswait else " |"
        peak = max((int(l.split("\t")[2]) for l in open(os.path.join(out, "rss.tsv")) if l.split("\t")[1] == row + ":deletion"), default=0)
        line += f" {peak / 1024:.1f} MB |" if peak else " |"
    print(line)
if ceiling:
    print(f"| **ceiling**: nginx, fixed JSON, same client | {cell(ceiling)} |" + " |" * (3 if has_compare else 0) + " 100 % | |" + " | |" * waited)
if wrk:
    print(f"\nThe same nginx under wrk (`wrk -t2 -c{concurrency} -d{duration}`): {wrk:,.0f} req/s (a lighter client than `tessera bench`).")
rss = words("server.rss")
if rss:
    d = dict(zip(rss[::2], rss[1::2]))
    print(f"\ntessera: ready in {d['ready_ms']} ms; VmRSS idle after start {int(d['idle']) / 1024:.1f} MB, "
          f"with the {stored:,} ServiceAccounts stored {int(d['stored']) / 1024:.1f} MB, "
          f"idle 5 s after the last row {int(d['after']) / 1024:.1f} MB; peak of the whole run "
          f"{max([int(d['after'])] + [int(l.split()[2]) for l in open(os.path.join(out, 'rss.tsv'))]) / 1024:.1f} MB.")
notes = []
for target in ("tessera", "compare", "nginx"):
    for row in rows + ["https-ceiling"]:
        s = summary(target, row)
        if not s:
            continue
        if s.get("stopped_early"):
            notes.append(f"- {target} {row}: stopped early after {s['elapsed_seconds']:.1f} s: {s['stopped_early']}")
        for k, v in s.get("error_samples", {}).items():
            notes.append(f"- {target} {row}: error `{k}`, e.g. {v[:200]}")
if notes:
    print("\nNotes:\n" + "\n".join(notes))
PY
cat "$OUT/results.md"
echo "results in $OUT" >&2
