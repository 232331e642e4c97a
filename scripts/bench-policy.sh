#!/usr/bin/env bash
# The policy-overhead benchmark of BENCHMARKS.md (issue 16): an authorized
# HTTP request through a tessera proxy pair with the inbound enforcing a
# policy of 50 Servers and 500 authorizations (the request is allowed by the
# last authorization its Server has: the worst case), against the same pair
# with no policy. Same load tool, backend and wiring as scripts/bench-proxy.sh
# (wrk -t2, CONNECTIONS connections, closed loop; nginx answering a fixed
# 2-byte body; certificates from a real `tessera identity`; the outbound
# resolves the pod through the destination API). Three pairs, each its own
# meshed pod on its own loopback address:
#   off      inbound `--policy off` (the default; no enforcement at all)
#   empty    inbound `--policy on`, a pod no Server selects: the default
#            policy (all-unauthenticated) decides every request
#   policy   inbound `--policy on`, a pod (label app=backend) selected by the
#            50 Servers of scripts/policy-fixture.py (kubectl apply of the
#            generated objects to the real `tessera server`); the request goes
#            to Server `web` (port 8080), whose tenth authorization lets the
#            client in
# The inbound gets its policy as the agent wires it: --api-server, a token
# bound to the pod (`kubectl create token --bound-object-kind Pod`), the
# cluster CA, --namespace/--pod. Rows run interleaved: ROUNDS rounds, each
# measuring every pair once, the order rotated every round, so the load of
# the other work on the machine falls on every variant alike.
#
#   scripts/bench-policy.sh
#   ROUNDS=1 DURATION=3s scripts/bench-policy.sh    # a smoke run
#
# Knobs: DURATION (10s), WARMUP (2s unmeasured wrk run before each row),
# CONNECTIONS (8), ROUNDS (3), IDLE (5: seconds of idle CPU measured per proxy
# before the runs), MODES ("http tcp": the HTTP forward proxy
# (HTTP/2 over mTLS) and/or `--outbound-tcp` (mTLS TCP, HTTP/1.1 detected by
# the inbound); both check every request), TESSERA_BIN (else a release build),
# PROXY_BIN (run the proxies from this binary; default: `tessera-proxy` beside
# TESSERA_BIN, else `TESSERA_BIN proxy`), OUT
# (target/bench-policy/<UTC time>).
# Results: $OUT/results.md, $OUT/<row>.wrk, $OUT/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-8}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-http tcp}
OUT=${OUT:-target/bench-policy/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# shellcheck source=scripts/lib/bench-common.sh
. scripts/lib/bench-common.sh
WAIT_HTTP_SECONDS=30
bench_tools "wrk:wrk nginx:nginx-light" "wrk nginx python3 curl kubectl"
bench_tessera
PROXY=${PROXY_BIN:-$(proxy_program "$TESSERA")}
bench_data

# --- control plane: tessera server and tessera identity -----------------------
bench_control_plane
CLIENT_ID=client.bench.serviceaccount.identity.linkerd.cluster.local

# --- the policy: 50 Servers, 500 authorizations --------------------------------
scripts/policy-fixture.py bench "$CLIENT_ID" >"$OUT/policy.json"
kubectl apply -f "$OUT/policy.json" >/dev/null
python3 - "$OUT/policy.json" <<'PY' >"$OUT/policy-counts.txt"
import collections, json, sys
c = collections.Counter(o["kind"] for o in json.load(open(sys.argv[1]))["items"])
print(", ".join(f"{n} {k}" for k, n in sorted(c.items())))
PY
for kind in servers.policy.linkerd.io authorizationpolicies.policy.linkerd.io serverauthorizations.policy.linkerd.io; do
  echo "$kind: $(kubectl get "$kind" -n bench -o name | wc -l)" >>"$OUT/policy-counts.txt"
done

# --- the backend: nginx, fixed response ---------------------------------------
bench_backend

# --- the three pairs -------------------------------------------------------------
POD_PORT=8080
PORTS_YAML=$(python3 -c 'import json; print(json.dumps([{"name": "http", "containerPort": 8080}] + [{"name": f"p{p}", "containerPort": p} for p in range(8001, 8050)]))')
: >"$OUT/pairs.txt"
i=0
for entry in off:plain:off empty:plain:on policy:backend:on; do
  IFS=: read -r name app policy <<<"$entry"
  pod=backend-$name
  pod_ip=127.1.0.$((20 + i))
  i=$((i + 1))
  kubectl apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: bench, labels: {app: $app}, annotations: {linkerd.io/inject: enabled}}
spec:
  serviceAccountName: server
  containers: [{name: app, image: nginx, ports: $PORTS_YAML}]
EOF2
  kubectl patch pod "$pod" -n bench --subresource=status --type=merge -p \
    "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$pod_ip\",\"podIPs\":[{\"ip\":\"$pod_ip\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}" >/dev/null
  policy_args=()
  if [ "$policy" = on ]; then
    # As the agent wires it: a token bound to the pod, the cluster CA, the pod's name.
    kubectl create token server -n bench --bound-object-kind Pod --bound-object-name "$pod" --duration 1h >"$DATA/$pod.api-token"
    policy_args=(--policy on --namespace bench --pod "$pod" --api-server "$API" --api-token-file "$DATA/$pod.api-token" --api-ca "$DATA/api-ca.crt")
  fi
  bench_pair "$name" "$PROXY" "$pod_ip" "${policy_args[@]}" --
  in_pid=$IN_PID out_pid=$OUT_PID tcp_port=$TCP_PORT outbound=$OUTBOUND
  echo "$name $pod_ip $tcp_port $outbound $out_pid $in_pid" >>"$OUT/pairs.txt"
done

# Every pair answers through mTLS; the policy pod's inbound refuses a plain-text
# client without identity (403: no authorization of Server web admits it) and
# the other two let it in (no policy / all-unauthenticated).
: >"$OUT/checks.txt"
while read -r name pod_ip tcp_port outbound _; do
  curl -sf -o /dev/null "http://127.0.0.1:$tcp_port/"
  curl -sf -o /dev/null -x "http://$outbound" "http://$pod_ip:$POD_PORT/"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$pod_ip:$POD_PORT/")
  echo "$name: plain-text client without identity → $code" >>"$OUT/checks.txt"
  if [ "$name" = policy ] && [ "$code" != 403 ]; then echo "the policy pod let an unauthenticated client in ($code)" >&2; exit 1; fi
  if [ "$name" != policy ] && [ "$code" != 200 ]; then echo "pod $name refused an unauthenticated client ($code)" >&2; exit 1; fi
done <"$OUT/pairs.txt"

# --- the runs ---------------------------------------------------------------------
# run ROW URL HOST_HEADER OUT_PID IN_PID
run() {
  local row=$1 url=$2 host=$3 out_pid=$4 in_pid=$5
  local hdr=()
  [ -n "$host" ] && hdr=(-H "Host: $host")
  echo "== $row" >&2
  wrk -t2 -c"$CONNECTIONS" -d"$WARMUP" "${hdr[@]}" "$url" >/dev/null
  cat /proc/loadavg >"$OUT/$row.load"
  local b_out b_in
  b_out=$(cpu_ticks "$out_pid")
  b_in=$(cpu_ticks "$in_pid")
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "${hdr[@]}" "$url" >"$OUT/$row.wrk"
  echo "$(getconf CLK_TCK) $(($(cpu_ticks "$out_pid") - b_out)) $(($(cpu_ticks "$in_pid") - b_in))" >"$OUT/$row.cpu"
  cat /proc/loadavg >>"$OUT/$row.load"
}

mapfile -t PAIRS <"$OUT/pairs.txt"
# Idle CPU of every proxy over IDLE seconds before any load: a background cost
# (the policy watch, its API connection) would show here, not per request.
IDLE=${IDLE:-5}
declare -A idle_before
for p in "${PAIRS[@]}"; do
  read -r name _ _ _ out_pid in_pid <<<"$p"
  idle_before[$name]="$(cpu_ticks "$out_pid") $(cpu_ticks "$in_pid")"
done
sleep "$IDLE"
: >"$OUT/idle.txt"
for p in "${PAIRS[@]}"; do
  read -r name _ _ _ out_pid in_pid <<<"$p"
  read -r b_out b_in <<<"${idle_before[$name]}"
  echo "$name $IDLE $(getconf CLK_TCK) $(($(cpu_ticks "$out_pid") - b_out)) $(($(cpu_ticks "$in_pid") - b_in))" >>"$OUT/idle.txt"
done
LOAD_START=$(cat /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    for k in 0 1 2; do
      # Rotate the order every round: no variant always runs first or last.
      read -r name pod_ip tcp_port outbound out_pid in_pid <<<"${PAIRS[$(((k + round - 1) % 3))]}"
      case $mode in
        http) run "$mode-$name-$round" "http://$outbound/" "$pod_ip:$POD_PORT" "$out_pid" "$in_pid" ;;
        tcp) run "$mode-$name-$round" "http://127.0.0.1:$tcp_port/" "" "$out_pid" "$in_pid" ;;
      esac
    done
  done
done
LOAD_END=$(cat /proc/loadavg)
END=$(date -u +%Y-%m-%dT%H:%M:%SZ)
POLICY_IP=$(awk '$1 == "policy" {print $2}' "$OUT/pairs.txt")
curl -s "http://$POLICY_IP:4191/metrics" | grep '^inbound_http_authz_' >"$OUT/policy-metrics.txt" || true

# --- the table ------------------------------------------------------------------------
python3 - "$OUT" "$CONNECTIONS" "$DURATION" "$ROUNDS" "$MODES" "$START" "$END" "$LOAD_START" "$LOAD_END" <<'PY' | tee "$OUT/results.md"
import os, re, statistics, sys
out, conns, duration, rounds, modes, start, end, load0, load1 = sys.argv[1:]
rounds = int(rounds)

def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

def row(name):
    text = open(os.path.join(out, name + ".wrk")).read()
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    total = int(re.search(r"^\s+(\d+) requests in", text, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)$", text, re.M)
    tck, c_out, c_in = (int(v) for v in open(os.path.join(out, name + ".cpu")).read().split())
    return {"rps": float(re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M).group(1)), "total": total,
            "p50": ms(pct["50"]), "p99": ms(pct["99"]),
            "bad": (int(non2xx.group(1)) if non2xx else 0) + (1 if errors else 0),
            "cpu_out": c_out / tck * 1e6 / total, "cpu_in": c_in / tck * 1e6 / total}

labels = {"off": "no policy (`--policy off`)", "empty": "`--policy on`, no Server selects the pod (default all-unauthenticated)",
          "policy": "`--policy on`, 50 Servers / 500 authorizations, allowed by the Server's last authorization"}
mode_names = {"http": "HTTP forward proxy (HTTP/2 over mTLS)", "tcp": "`--outbound-tcp` (mTLS TCP, HTTP/1.1 detected by the inbound)"}
print(f"Run {start} – {end}; `wrk -t2 -c{conns} -d{duration} --latency`, {rounds} interleaved rounds (order rotated each round); "
      f"load average (1 min) {load0.split()[0]} at start, {load1.split()[0]} at end.\n")
for mode in modes.split():
    print(f"**{mode_names[mode]}** (median of the rounds; per-round values in brackets)\n")
    print("| inbound | req/s | Δ req/s vs off | p50 ms | Δ p50 | p99 ms | inbound CPU µs/req | Δ inbound CPU | outbound CPU µs/req | non-2xx + socket errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for v in ("off", "empty", "policy"):
        rs = [row(f"{mode}-{v}-{r}") for r in range(1, rounds + 1)]
        med[v] = {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50", "p99", "cpu_in", "cpu_out")}
        med[v]["all"] = rs
        med[v]["bad"] = sum(x["bad"] for x in rs)
    base = med["off"]
    for v in ("off", "empty", "policy"):
        m = med[v]
        each = lambda k, f: " [" + ", ".join(f.format(x[k]) for x in m["all"]) + "]" if rounds > 1 else ""
        d = lambda k, sign=1: "–" if v == "off" else f"{sign * 100 * (m[k] / base[k] - 1):+.1f} %"
        print(f"| {labels[v]} | {m['rps']:,.0f}{each('rps', '{:,.0f}')} | {d('rps', -1)} | {m['p50']:.3f}{each('p50', '{:.3f}')} | {d('p50')} | "
              f"{m['p99']:.3f} | {m['cpu_in']:.1f}{each('cpu_in', '{:.1f}')} | {d('cpu_in')} | {m['cpu_out']:.1f} | {m['bad']} |")
    print()
    o = 100 * (1 - med["policy"]["rps"] / base["rps"])
    p = 100 * (med["policy"]["p50"] / base["p50"] - 1)
    print(f"- {mode}: throughput overhead {o:+.1f} %, p50 overhead {p:+.1f} % (target < 5 %: "
          f"{'**met**' if o < 5 and p < 5 else '**not met**'})\n")
idle = [l.split() for l in open(os.path.join(out, "idle.txt")) if l.strip()]
print("Idle CPU before the runs (outbound / inbound, ms over the idle seconds): " + "; ".join(
    f"{n}: {int(o) * 1000 / int(t):.0f} / {int(i) * 1000 / int(t):.0f} ms over {s} s" for n, s, t, o, i in idle) + ".\n")
print("Δ req/s is the throughput lost (positive = slower); Δ p50 and Δ CPU are increases.\n")
print("Checks: " + "; ".join(l.strip() for l in open(os.path.join(out, "checks.txt"))) + ".\n")
print("Policy loaded: " + "; ".join(l.strip() for l in open(os.path.join(out, "policy-counts.txt"))) + ".\n")
allow = [l for l in open(os.path.join(out, "policy-metrics.txt")) if l.startswith("inbound_http_authz_allow_total{")]
print("Policy pod's inbound `inbound_http_authz_allow_total`: " + "; ".join(
    re.search(r'srv_name="([^"]*)"', l).group(1) + "/" + (re.search(r'authz_name="([^"]*)"', l) or re.search("()", "")).group(1)
    + " " + l.rsplit(" ", 1)[1].strip() for l in allow) + ".")
PY
echo "raw output in $OUT" >&2
