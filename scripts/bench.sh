#!/usr/bin/env bash
# Reproduces the tables of BENCHMARKS.md: builds tessera in release mode, starts
# a fresh `tessera server` (temporary data dir, port 0), runs every `tessera
# bench` scenario against it, and records throughput, latency, errors, server
# CPU and memory (VmRSS idle, peak under load, idle again afterwards).
#
#   scripts/bench.sh                       # every scenario, 10 s each, concurrency 8
#   DURATION=30s SCENARIOS="tokenreview sar" scripts/bench.sh
#   BENCH_KUBECONFIG=~/.kube/config scripts/bench.sh   # measure another API server
#                                                      # (e.g. kube-apiserver) instead
#
# Knobs (environment): DURATION (10s), WARMUP (2s), CONCURRENCY (8), SCENARIOS
# (all), TOKENS (tokens minted for tokenreview-uncached, 150000), OBJECTS
# (list-sa, lease-renew: 100), WATCHERS (watch-fanout, 10), OUT (target/bench/<UTC time>).
# Results: $OUT/<scenario>.json (the bench's summaries), $OUT/results.md (the
# table), $OUT/server.log. The load generator and the server share this
# machine's cores: the table says how much CPU each used.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-8}
TOKENS=${TOKENS:-150000}
OBJECTS=${OBJECTS:-100}
WATCHERS=${WATCHERS:-10}
SCENARIOS=${SCENARIOS:-"tokenreview tokenreview-uncached tokenreview-bad-audience tokenrequest sar create-sa list-sa lease-renew watch-fanout"}
OUT=${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "building tessera (release)…" >&2
cargo build --release -p tessera >&2
TESSERA=$PWD/target/release/tessera
command -v python3 >/dev/null || { echo "python3 is needed to tabulate the results" >&2; exit 1; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICKS=$(getconf CLK_TCK)

SERVER_PID=""
DATA=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$DATA" ]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT

if [ -n "${BENCH_KUBECONFIG:-}" ]; then
  KUBECONFIG_FILE=$BENCH_KUBECONFIG
  TARGET="the API server of $BENCH_KUBECONFIG"
else
  DATA=$(mktemp -d)
  FIFO=$DATA/stdout
  mkfifo "$FIFO"
  start_ns=$(date +%s%N)
  TESSERA_LOG=warn "$TESSERA" server --bind 127.0.0.1:0 --data-dir "$DATA/data" >"$FIFO" 2>"$OUT/server.log" &
  SERVER_PID=$!
  KUBECONFIG_FILE=""
  exec 3<"$FIFO"
  while IFS= read -r line <&3; do
    echo "$line" >>"$OUT/server.stdout"
    case $line in kubeconfig:\ *) KUBECONFIG_FILE=${line#kubeconfig: }; break ;; esac
  done
  ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  # Keep draining the server's stdout so it never blocks on a full pipe.
  cat <&3 >>"$OUT/server.stdout" &
  [ -n "$KUBECONFIG_FILE" ] || { echo "the server did not print its kubeconfig; see $OUT/server.log" >&2; exit 1; }
  TARGET="tessera (pid $SERVER_PID), fresh data dir, ready in ${ready_ms} ms"
  sleep 2
  IDLE_RSS=$(rss_kb "$SERVER_PID")
  echo "server ready in ${ready_ms} ms, idle RSS ${IDLE_RSS} kB" >&2
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for scenario in $SCENARIOS; do
  echo "== $scenario" >&2
  extra=()
  case $scenario in
    tokenreview-uncached) extra=(--tokens "$TOKENS") ;;
    list-sa | lease-renew) extra=(--objects "$OBJECTS") ;;
    watch-fanout) extra=(--watchers "$WATCHERS") ;;
  esac
  timing=()
  if [ -x /usr/bin/time ]; then timing=(/usr/bin/time -f '%e %U %S %M' -o "$OUT/$scenario.time"); fi
  peak=0
  cpu0=0
  if [ -n "$SERVER_PID" ]; then cpu0=$(cpu_ticks "$SERVER_PID"); fi
  "${timing[@]}" "$TESSERA" bench "$scenario" --kubeconfig "$KUBECONFIG_FILE" \
      --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --output json "${extra[@]}" \
      >"$OUT/$scenario.json" 2>"$OUT/$scenario.log" &
  bench_pid=$!
  while kill -0 "$bench_pid" 2>/dev/null; do
    if [ -n "$SERVER_PID" ]; then
      rss=$(rss_kb "$SERVER_PID"); [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    fi
    sleep 0.2
  done
  wait "$bench_pid" || { echo "tessera bench $scenario failed: see $OUT/$scenario.log" >&2; cat "$OUT/$scenario.log" >&2; }
  if [ -n "$SERVER_PID" ]; then
    echo "$peak $(( $(cpu_ticks "$SERVER_PID") - cpu0 )) $TICKS" >"$OUT/$scenario.server"
  fi
done

if [ -n "$SERVER_PID" ]; then
  sleep 2
  AFTER_RSS=$(rss_kb "$SERVER_PID")
  echo "idle ${IDLE_RSS} after ${AFTER_RSS}" >"$OUT/server.rss"
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
TARGET="$TARGET; load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}"
python3 - "$OUT" "$TARGET" "$CONCURRENCY" "$DURATION" $SCENARIOS >"$OUT/results.md" <<'PY'
import json, os, sys
out, target, concurrency, duration, scenarios = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def read(name):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read().split()
    except OSError:
        return None
print(f"Target: {target}; concurrency {concurrency}, {duration} per scenario, closed loop.\n")
print("CPU columns: average cores used over the whole `tessera bench` command (preparation and warm-up included).\n")
print("| scenario | requests | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | server CPU | bench CPU | server peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
notes = []
for s in scenarios:
    try:
        with open(os.path.join(out, s + ".json")) as f:
            r = json.load(f)
    except (OSError, ValueError):
        print(f"| {s} | failed: see {s}.log | | | | | | | | | | |")
        continue
    l = r["latency_ms"]
    errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
    server = read(s + ".server")
    timing = read(s + ".time")
    wall = r["elapsed_seconds"]
    # CPU over the whole command (prepare + warm-up + measure), in cores.
    server_cpu = bench_cpu = ""
    if timing:
        e, u, sy, _ = (float(x) for x in timing[-4:])
        bench_cpu = f"{(u + sy) / e:.2f} cores" if e > 0 else ""
        if server:
            server_cpu = f"{int(server[1]) / int(server[2]) / e:.2f} cores" if e > 0 else ""
    rss = f"{int(server[0]) / 1024:.1f} MB" if server else ""
    print(f"| {s} | {r['count']} | {r['requests_per_second']:,.0f} | {l['p50']:.3f} | {l['p90']:.3f} | {l['p99']:.3f} | {l['p999']:.3f} | {l['max']:.3f} | {errors} | {server_cpu} | {bench_cpu} | {rss} |")
    if r.get("stopped_early"):
        notes.append(f"- {s}: stopped early after {wall:.1f} s: {r['stopped_early']}")
    for k, v in r.get("error_samples", {}).items():
        notes.append(f"- {s}: error `{k}`, e.g. {v[:200]}")
rss = read("server.rss")
if rss:
    print(f"\nServer RSS: idle after start {int(rss[1]) / 1024:.1f} MB, idle after the runs {int(rss[3]) / 1024:.1f} MB (peaks per scenario above).")
if notes:
    print("\nNotes:\n" + "\n".join(notes))
PY
cat "$OUT/results.md"
echo "results in $OUT" >&2
