#!/usr/bin/env bash
# Scaling figures for BENCHMARKS.md: for each store size N (ServiceAccounts
# kept in one namespace, created through the API by `tessera bench create-sa
# --keep`), a fresh server is populated, then measured: TokenReview and
# SubjectAccessReview throughput, list p99 of a 100-object namespace, server
# RSS, and the time from start to ready when the server restarts on that store.
#
#   scripts/bench-scale.sh                  # SIZES="1000 10000 100000"
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"1000 10000 100000"}
DURATION=${DURATION:-10s}
cargo build --release -p tessera >&2
T=$PWD/target/release/tessera
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_server() { # data dir → sets PID, KC and READY_MS (start to ready)
  local data=$1 fifo start_ns end_ns line
  fifo=$(mktemp -u); mkfifo "$fifo"
  start_ns=$(date +%s%N)
  TESSERA_LOG=warn "$T" server --bind 127.0.0.1:0 --data-dir "$data" >"$fifo" 2>>"$data.log" &
  PID=$!
  exec 4<"$fifo"
  while read -r line <&4; do
    case "$line" in kubeconfig:*) KC=${line#kubeconfig: }; break ;; esac
  done
  end_ns=$(date +%s%N)
  # Keep draining the server's stdout.
  cat <&4 >/dev/null &
  rm -f "$fifo"
  READY_MS=$(( (end_ns - start_ns) / 1000000 ))
}

bench() { "$T" bench "$@" --kubeconfig "$KC" --concurrency 8 --no-progress --output json; }
# rps_p99: "<req/s> | <p99 ms>" of a JSON summary; p99: the p99 alone; rps: req/s alone.
summary() { python3 -c 'import json,sys; d=json.load(sys.stdin); r=round(d["requests_per_second"]); p=d["latency_ms"]["p99"]; print({"rps": f"{r}", "p99": f"{p:.2f}", "rps_p99": f"{r} | {p:.2f}"}[sys.argv[1]])' "$1"; }

echo "| store size (ServiceAccounts) | populate (creates/s) | TokenReview req/s | p99 ms | SAR req/s | p99 ms | list 100 SAs p99 ms | RSS after populate | RSS after runs | restart to ready |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $SIZES; do
  dir=$(mktemp -d)
  start_server "$dir/data"
  populate=$(bench create-sa --requests "$n" --warmup 0s --keep | summary rps)
  rss_pop=$(rss_kb "$PID")
  tr=$(bench tokenreview --duration "$DURATION" --warmup 2s | summary rps_p99)
  sar=$(bench sar --duration "$DURATION" --warmup 2s | summary rps_p99)
  list=$(bench list-sa --duration "$DURATION" --warmup 2s --objects 100 | summary p99)
  rss_end=$(rss_kb "$PID")
  kill "$PID"; wait "$PID" 2>/dev/null || true
  start_server "$dir/data"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  echo "| $n | $populate | $tr | $sar | $list | $((rss_pop / 1024)) MB | $((rss_end / 1024)) MB | ${READY_MS} ms |"
  rm -rf "$dir"
done
