#!/usr/bin/env bash
# The proxy benchmark of BENCHMARKS.md (issue 15): one run measures, with the
# same load tool (Debian `wrk`, 2 threads, CONNECTIONS connections, closed loop)
# against the same tiny HTTP backend (nginx answering a fixed 2-byte body,
# 2 workers, access log off):
#   direct        wrk → backend (loopback);
#   tessera-tcp   wrk → outbound proxy `--outbound-tcp` port → mTLS (TLS 1.3,
#                 client cert) → inbound proxy → backend;
#   tessera-http  wrk → outbound proxy as HTTP forward proxy (origin-form +
#                 Host, as an HTTP_PROXY client sends for plain http) → HTTP/2
#                 over mTLS → inbound proxy → HTTP/1.1 → backend;
#   haproxy       wrk → HAProxy 1 (plain in, TLS 1.3 + client cert out,
#                 verifies the server name) → HAProxy 2 (TLS in, client cert
#                 required from the same CA) → backend: the tunnel a user
#                 would build by hand (mode tcp, one TLS connection per client
#                 connection, as tessera-tcp).
# The tessera proxies get their certificates from a real `tessera identity`
# (bootstrap anchors) with identity.l5d.io tokens from a real `tessera server`;
# the outbound proxy resolves the inbound pod's address through the server's
# destination API (a meshed Pod object registered at that address).
# While wrk runs, VmRSS of every proxy process is sampled from /proc every
# 200 ms (peak reported), and each process's CPU time is split by thread (how
# evenly `--runtime per-thread`'s SO_REUSEPORT groups spread the connections).
#
#   scripts/bench-proxy.sh
#   DURATION=3s scripts/bench-proxy.sh       # a smoke run
#
# Knobs: DURATION (10s), WARMUP (2s, unmeasured wrk run before each row),
# CONNECTIONS (8), TESSERA_BIN (use this binary instead of building one),
# PROXY_BIN (run the proxies from this binary; default: `tessera-proxy` beside
# TESSERA_BIN when it is there, as the agent runs it, else `TESSERA_BIN proxy`;
# the control plane stays TESSERA_BIN), TESSERA_BASE_BIN (a second pair from
# this binary, or the `tessera-proxy` beside it: the code before a change,
# measured in the same run), EXTRA_PAIRS
# ("NAME=FLAGS;…": more pairs of PROXY_BIN with these proxy flags), OUT
# (target/bench-proxy/<UTC time>). Needs root on Debian to install `wrk`,
# `haproxy` and `nginx-light` when they are missing.
# Results: $OUT/results.md (the table), $OUT/<row>.wrk (wrk's output),
# $OUT/*.log (process logs).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-8}
OUT=${OUT:-target/bench-proxy/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# shellcheck source=scripts/lib/bench-common.sh
. scripts/lib/bench-common.sh
bench_tools "wrk:wrk haproxy:haproxy nginx:nginx-light" "wrk haproxy nginx openssl python3 curl kubectl"
bench_tessera
bench_data

# --- control plane: tessera server and tessera identity -----------------------
bench_control_plane

# --- the backend: nginx, fixed response ---------------------------------------
bench_backend

# --- the tessera proxy pairs --------------------------------------------------------
# One pair per variant: the binary under test, TESSERA_BASE_BIN (the code before
# a change, measured in the same run) and EXTRA_PAIRS ("NAME=ARGS;…", proxy flags
# such as --worker-threads 1). Each pair's server pod is meshed and registered
# at its own loopback address (as the agent does), port 8080.
POD_PORT=8080
PROXY=${PROXY_BIN:-$(proxy_program "$TESSERA")}
PAIRS=("tessera|$PROXY|")
[ -n "${TESSERA_BASE_BIN:-}" ] && PAIRS+=("base|$(proxy_program "$TESSERA_BASE_BIN")|")
IFS=';' read -r -a extra_pairs <<<"${EXTRA_PAIRS:-}"
for p in "${extra_pairs[@]}"; do [ -n "$p" ] && PAIRS+=("tessera-${p%%=*}|$PROXY|${p#*=}"); done

: >"$OUT/pairs.txt"
: >"$OUT/programs.txt"
i=0
for entry in "${PAIRS[@]}"; do
  IFS='|' read -r name bin extra <<<"$entry"
  pod_ip=127.1.0.$((10 + i))
  i=$((i + 1))
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: backend-$i, namespace: bench, annotations: {linkerd.io/inject: enabled}}
spec:
  serviceAccountName: server
  containers: [{name: app, image: nginx, ports: [{name: http, containerPort: $POD_PORT}]}]
EOF
  kubectl patch pod "backend-$i" -n bench --subresource=status --type=merge -p \
    "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$pod_ip\",\"podIPs\":[{\"ip\":\"$pod_ip\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}" >/dev/null
  # $extra: proxy flags, split into words on purpose, for both proxies.
  # shellcheck disable=SC2086
  bench_pair "$name" "$bin" "$pod_ip" $extra -- $extra
  in_pid=$IN_PID out_pid=$OUT_PID tcp_port=$TCP_PORT outbound=$OUTBOUND
  # name pod_ip tcp_port outbound out_pid in_pid idle_out_kb idle_in_kb extra…
  echo "$name $pod_ip $tcp_port $outbound $out_pid $in_pid $(rss_kb "$out_pid") $(rss_kb "$in_pid") $extra" >>"$OUT/pairs.txt"
  echo "$name $bin" >>"$OUT/programs.txt"
done

# --- the HAProxy pair -----------------------------------------------------------
# Its own CA, P-256 keys and the same names as the tessera identities.
H=$DATA/haproxy
mkdir -p "$H"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$H/ca.key" -out "$H/ca.crt" 2>/dev/null
for who in client server; do
  name=$who.bench.serviceaccount.identity.linkerd.cluster.local
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$name" \
    -keyout "$H/$who.key" -out "$H/$who.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' "$name" >"$H/$who.ext"
  openssl x509 -req -in "$H/$who.csr" -CA "$H/ca.crt" -CAkey "$H/ca.key" -CAcreateserial -days 1 \
    -extfile "$H/$who.ext" -out "$H/$who.crt" 2>/dev/null
  cat "$H/$who.crt" "$H/$who.key" >"$H/$who.pem"
done
HA1_PORT=$(free_port)
HA2_IP=127.1.0.3
HA2_PORT=8080
SERVER_NAME=server.bench.serviceaccount.identity.linkerd.cluster.local
cat >"$H/client-side.cfg" <<EOF
global
  ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend plain_in
  bind 127.0.0.1:$HA1_PORT
  default_backend mtls_out
backend mtls_out
  server peer $HA2_IP:$HA2_PORT ssl ssl-min-ver TLSv1.3 crt $H/client.pem ca-file $H/ca.crt verify required sni str($SERVER_NAME) verifyhost $SERVER_NAME
EOF
cat >"$H/server-side.cfg" <<EOF
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend mtls_in
  bind $HA2_IP:$HA2_PORT ssl crt $H/server.pem ca-file $H/ca.crt verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:$BACKEND_PORT
EOF
haproxy -db -f "$H/server-side.cfg" >"$OUT/haproxy-server.log" 2>&1 &
HA2_PID=$!
PIDS+=($HA2_PID)
haproxy -db -f "$H/client-side.cfg" >"$OUT/haproxy-client.log" 2>&1 &
HA1_PID=$!
PIDS+=($HA1_PID)
wait_http "http://127.0.0.1:$HA1_PORT/"
IDLE_HA1=$(rss_kb "$HA1_PID")
IDLE_HA2=$(rss_kb "$HA2_PID")

# Every path answers before measuring (the first tessera connection resolves the destination).
while read -r name pod_ip tcp_port outbound _; do
  curl -sf -o /dev/null "http://127.0.0.1:$tcp_port/"
  curl -sf -o /dev/null -x "http://$outbound" "http://$pod_ip:$POD_PORT/"
done <"$OUT/pairs.txt"
POD_IP=$(awk 'NR == 1 {print $2}' "$OUT/pairs.txt")

# Both server sides refuse a TLS client without a certificate (curl -k: no
# server check, no client certificate): the pairs really are mTLS.
: >"$OUT/refusals.txt"
for target in "tessera inbound:$POD_IP:$POD_PORT" "HAProxy 2:$HA2_IP:$HA2_PORT"; do
  if curl -sfk -o /dev/null --max-time 5 "https://${target#*:}/"; then
    echo "${target%%:*} accepted a TLS client without a certificate" >&2; exit 1
  fi
  echo "${target%%:*} refuses a TLS client without a certificate" >>"$OUT/refusals.txt"
done

# --- the runs ---------------------------------------------------------------------
# sample PIDFILE... : peak VmRSS (kB) of each pid while $OUT/sampling exists, into $OUT/<row>.rss
sample() {
  local row=$1
  shift
  local peaks=() i pid v
  for pid in "$@"; do peaks+=(0); done
  while [ -e "$OUT/sampling" ]; do
    i=0
    for pid in "$@"; do
      v=$(rss_kb "$pid")
      [ "$v" -gt "${peaks[$i]}" ] && peaks[$i]=$v
      i=$((i + 1))
    done
    sleep 0.2
  done
  echo "${peaks[*]}" >"$OUT/$row.rss"
}

# thread_ticks PID: "TID:TICKS …", user + system CPU time of each thread.
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    # Fields after "PID (COMM) ": state is $1, utime $12, stime $13.
    awk -v tid="${t##*/}" '{ sub(/^.*\) /, ""); printf "%s:%d ", tid, $12 + $13 }' "$t/stat" 2>/dev/null || true
  done
}

# run ROW URL [HOST_HEADER] -- PIDS...
run() {
  local row=$1 url=$2 host=$3
  shift 4
  local hdr=()
  [ -n "$host" ] && hdr=(-H "Host: $host")
  echo "== $row" >&2
  wrk -t2 -c"$CONNECTIONS" -d"$WARMUP" "${hdr[@]}" "$url" >/dev/null
  touch "$OUT/sampling"
  local sampler=""
  if [ $# -gt 0 ]; then sample "$row" "$@" & sampler=$!; fi
  cat /proc/loadavg >"$OUT/$row.load"
  local pid before=() threads_before=()
  for pid in "$@"; do before+=("$(cpu_ticks "$pid")"); threads_before+=("$(thread_ticks "$pid")"); done
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "${hdr[@]}" "$url" >"$OUT/$row.wrk"
  # CPU time each process spent on the measured run (ticks of 1/CLK_TCK s).
  local i=0 cpu=()
  for pid in "$@"; do cpu+=($(($(cpu_ticks "$pid") - before[i]))); i=$((i + 1)); done
  echo "$(getconf CLK_TCK) ${cpu[*]}" >"$OUT/$row.cpu"
  # One line per process: its threads' ticks before | after the run.
  i=0
  : >"$OUT/$row.threads"
  for pid in "$@"; do echo "${threads_before[i]}|$(thread_ticks "$pid")" >>"$OUT/$row.threads"; i=$((i + 1)); done
  rm -f "$OUT/sampling"
  [ -n "$sampler" ] && wait "$sampler"
  cat /proc/loadavg >>"$OUT/$row.load"
}

LOAD_START=$(cat /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
run direct "http://127.0.0.1:$BACKEND_PORT/" "" --
# Pairs interleaved (tcp of each, then http of each) so slow drift in the
# machine's load spreads over the variants rather than favouring one.
while read -r name _ tcp_port _ out_pid in_pid _; do
  run "$name-tcp" "http://127.0.0.1:$tcp_port/" "" -- "$out_pid" "$in_pid" </dev/null
done <"$OUT/pairs.txt"
while read -r name pod_ip _ outbound out_pid in_pid _; do
  run "$name-http" "http://$outbound/" "$pod_ip:$POD_PORT" -- "$out_pid" "$in_pid" </dev/null
done <"$OUT/pairs.txt"
run haproxy "http://127.0.0.1:$HA1_PORT/" "" -- "$HA1_PID" "$HA2_PID"
LOAD_END=$(cat /proc/loadavg)
END=$(date -u +%Y-%m-%dT%H:%M:%SZ)
grep -h "^request_total\|^response_total\|^tcp_open_total" <(curl -s "http://$POD_IP:4191/metrics") >"$OUT/inbound-metrics.txt" || true

# --- the table ------------------------------------------------------------------------
python3 - "$OUT" "$CONNECTIONS" "$DURATION" "$START" "$END" "$LOAD_START" "$LOAD_END" \
  "$IDLE_HA1 $IDLE_HA2" <<'PY' | tee "$OUT/results.md"
import os, re, sys
out, conns, duration, start, end, load0, load1, idle_h = sys.argv[1:]
pairs = [l.split(maxsplit=8) for l in open(os.path.join(out, "pairs.txt")) if l.strip()]

def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

def wrk(row):
    text = open(os.path.join(out, row + ".wrk")).read()
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M).group(1))
    total = int(re.search(r"^\s+(\d+) requests in", text, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)$", text, re.M)
    return {"p50": ms(pct["50"]), "p99": ms(pct["99"]), "rps": rps, "total": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else "none"}

def rss(row):
    path = os.path.join(out, row + ".rss")
    return [int(v) for v in open(path).read().split()] if os.path.exists(path) else []

def load(row):
    a, b = open(os.path.join(out, row + ".load")).read().splitlines()
    return f"{a.split()[0]} → {b.split()[0]}"

def cpu(row, requests):
    path = os.path.join(out, row + ".cpu")
    if not os.path.exists(path):
        return "–"
    tck, *ticks = (int(v) for v in open(path).read().split())
    if not ticks:
        return "–"
    return " / ".join(f"{t / tck * 1e6 / requests:.0f}" for t in ticks)

def thread_split(row):
    """Per process: its busy threads' shares of its CPU time in the run, largest first."""
    path = os.path.join(out, row + ".threads")
    if not os.path.exists(path):
        return []
    splits = []
    for line in open(path).read().splitlines():
        before, after = (dict(t.split(":") for t in half.split()) for half in line.split("|"))
        used = {tid: int(v) - int(before.get(tid, 0)) for tid, v in after.items()}
        total = sum(used.values())
        shares = sorted((100 * u / total for u in used.values() if total and 100 * u / total >= 2), reverse=True)
        splits.append(" + ".join(f"{s:.0f}" for s in shares) + " %" if shares else "–")
    return splits

def variant(p):
    extra = p[8].strip() if len(p) > 8 else ""
    return p[0] + (f" (`{extra}`)" if extra else "")
rows = [("direct", "direct loopback (wrk → nginx)")]
rows += [(p[0] + "-tcp", f"{variant(p)}: `--outbound-tcp` (mTLS TCP)") for p in pairs]
rows += [(p[0] + "-http", f"{variant(p)}: HTTP forward proxy (HTTP/2 over mTLS)") for p in pairs]
rows += [("haproxy", "HAProxy pair, mode tcp, mTLS")]
r = {name: wrk(name) for name, _ in rows}
d = r["direct"]
print(f"Run {start} – {end}, {conns} connections (`wrk -t2 -c{conns} -d{duration} --latency`), load average (1 min) {load0.split()[0]} at start, {load1.split()[0]} at end.\n")
print("| path | requests | req/s | % of direct | p50 ms | p50 added ms | p99 ms | p99 added ms | non-2xx | socket errors | peak RSS (client side / server side) | CPU µs per request (client side / server side) | load avg during row |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|")
for name, label in rows:
    x = r[name]
    peaks = rss(name)
    peak = " / ".join(f"{kb / 1024:.1f} MB" for kb in peaks) if peaks else "–"
    added = lambda k: "–" if name == "direct" else f"{x[k] - d[k]:+.3f}"
    print(f"| {label} | {x['total']:,} | {x['rps']:,.0f} | {100 * x['rps'] / d['rps']:.0f} % | {x['p50']:.3f} | {added('p50')} | "
          f"{x['p99']:.3f} | {added('p99')} | {x['non2xx']} | {x['errors']} | {peak} | {cpu(name, x['total'])} | {load(name)} |")
print("\nCPU time by thread (threads with ≥ 2 % of their process, client side / server side):\n")
for name, label in rows:
    split = thread_split(name)
    if split:
        print(f"- {label}: {' / '.join(split)}")
print()
ih = [int(v) / 1024 for v in idle_h.split()]
idle = "; ".join(f"{p[0]} outbound {int(p[6]) / 1024:.1f} MB, inbound {int(p[7]) / 1024:.1f} MB" for p in pairs)
programs = [l.split(maxsplit=1) for l in open(os.path.join(out, "programs.txt")) if l.strip()]
print("\nProxies run from: " + "; ".join(f"{n} `{os.path.basename(b.strip())}`" for n, b in programs) + ".")
print(f"\nIdle RSS before load: {idle}; HAProxy client side {ih[0]:.1f} MB, server side {ih[1]:.1f} MB.\n")

mtls = sum(int(l.rsplit(" ", 1)[1]) for l in open(os.path.join(out, "inbound-metrics.txt"))
           if l.startswith("request_total{") and 'tls="true"' in l and 'client_id="client.bench.' in l)
print(f"The inbound proxy counted {mtls:,} requests with `tls=\"true\"` and `client_id=client.bench…` (its `request_total`): the tessera rows went through mTLS.\n")

print(" ".join(l.strip() + "." for l in open(os.path.join(out, "refusals.txt"))) + " (checked with `curl -k` before the runs)\n")

def verdict(ok):
    return "**met**" if ok else "**not met**"
for name in (n for n, _ in rows if n not in ("direct", "haproxy")):
    x = r[name]
    peaks = rss(name)
    print(f"- {name}: p50 added {x['p50'] - d['p50']:.3f} ms (< 0.2 ms: {verdict(x['p50'] - d['p50'] < 0.2)}); "
          f"throughput {100 * x['rps'] / d['rps']:.0f} % of direct (≥ 80 %: {verdict(x['rps'] >= 0.8 * d['rps'])}), "
          f"{x['rps'] / r['haproxy']['rps']:.2f}× HAProxy (above: {verdict(x['rps'] > r['haproxy']['rps'])}); "
          f"peak RSS {max(peaks) / 1024 if peaks else 0:.1f} MB (< 20 MB per proxy: {verdict(bool(peaks) and max(peaks) < 20 * 1024)})")
PY
echo "raw output in $OUT" >&2
