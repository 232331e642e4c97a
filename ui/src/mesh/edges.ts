// Edges and denials from the proxies' metrics. An edge is one source pod's
// outbound traffic to one destination pod (the series labelled dst_pod), as
// `tessera edges` reads it; request rate, success rate and p99 come from the
// counters' growth over a sliding window of polls, as a Prometheus `rate()`.

import type { Sample } from "./prom";

/** Cumulative counters of one edge (or one denial series) at one poll. */
interface Counters {
  requests: number;
  responses: number;
  successes: number;
  /** response_latency_ms buckets: upper bound (ms) → cumulative count. */
  buckets: Map<number, number>;
}

export interface EdgeKeyParts {
  srcNs: string;
  srcPod: string;
  srcIdentity: string;
  dstNs: string;
  dstPod: string;
  dstIdentity: string;
}

export interface Edge extends EdgeKeyParts {
  key: string;
  /** Every `tls` label seen; SECURED only if all are `true`. */
  tls: string[];
  secured: boolean;
  /** Requests per second over the window; null until two polls exist. */
  rps: number | null;
  /** Fraction of responses classified success over the window; null with no responses. */
  success: number | null;
  /** 99th percentile latency in ms over the window; null with no responses. */
  p99: number | null;
  requestsTotal: number;
}

export interface Denial {
  key: string;
  namespace: string;
  pod: string;
  protocol: "HTTP" | "TCP";
  client: string;
  server: string;
  authorization: string;
  route: string;
  target: string;
  total: number;
  /** Denials in the window (null on the first poll). */
  recent: number | null;
}

const WINDOW_MS = 30_000;
const TRAFFIC = new Set(["tcp_open_total", "request_total", "response_total"]);

function emptyCounters(): Counters {
  return { requests: 0, responses: 0, successes: 0, buckets: new Map() };
}

interface EdgeSnapshot {
  parts: EdgeKeyParts;
  tls: Set<string>;
  counters: Counters;
}

/** One source pod's outbound edges at one poll. */
export function edgesOfPod(srcNs: string, srcPod: string, srcIdentity: string, samples: Sample[]): Map<string, EdgeSnapshot> {
  const out = new Map<string, EdgeSnapshot>();
  for (const s of samples) {
    const l = s.labels;
    if (l.direction !== "outbound" || !l.dst_pod) continue;
    const histogram = s.name === "response_latency_ms_bucket";
    if (!TRAFFIC.has(s.name) && !histogram) continue;
    const key = `${srcNs}/${srcPod}→${l.dst_namespace ?? ""}/${l.dst_pod}`;
    let e = out.get(key);
    if (!e) {
      e = {
        parts: { srcNs, srcPod, srcIdentity, dstNs: l.dst_namespace ?? "", dstPod: l.dst_pod, dstIdentity: l.server_id ?? "" },
        tls: new Set(),
        counters: emptyCounters(),
      };
      out.set(key, e);
    }
    if (!e.parts.dstIdentity && l.server_id) e.parts.dstIdentity = l.server_id;
    if (TRAFFIC.has(s.name) && s.value > 0 && l.tls !== undefined) e.tls.add(l.tls);
    const c = e.counters;
    if (s.name === "request_total") c.requests += s.value;
    else if (s.name === "response_total") {
      c.responses += s.value;
      if (l.classification === "success") c.successes += s.value;
    } else if (histogram) {
      const le = l.le === "+Inf" ? Infinity : Number(l.le);
      if (!Number.isNaN(le)) c.buckets.set(le, (c.buckets.get(le) ?? 0) + s.value);
    }
  }
  // Only edges that carried something (a zero series is a closed door, not an edge).
  for (const [key, e] of out) if (e.tls.size === 0) out.delete(key);
  return out;
}

/** Prometheus' histogram_quantile over cumulative buckets. */
export function quantile(q: number, buckets: Map<number, number>): number | null {
  const sorted = [...buckets.entries()].sort(([a], [b]) => a - b);
  const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

function minus(a: Counters, b: Counters): Counters {
  const buckets = new Map<number, number>();
  for (const [le, v] of a.buckets) buckets.set(le, v - (b.buckets.get(le) ?? 0));
  return { requests: a.requests - b.requests, responses: a.responses - b.responses, successes: a.successes - b.successes, buckets };
}

/** Keeps each series' recent history and turns counters into rates. */
export class Window<T extends { requests: number }> {
  private history = new Map<string, { t: number; value: T }[]>();

  /** Records `value` at `t`; returns the oldest value within the window (or null). */
  push(key: string, t: number, value: T): { t: number; value: T } | null {
    let h = this.history.get(key);
    if (!h) this.history.set(key, (h = []));
    // A counter that went down means the proxy restarted: start over.
    if (h.length && value.requests < h[h.length - 1].value.requests) h.length = 0;
    h.push({ t, value });
    while (h.length > 2 && t - h[1].t >= WINDOW_MS) h.shift();
    return h.length > 1 ? h[0] : null;
  }

  /** Forgets series not seen in the last poll. */
  retain(keys: Set<string>): void {
    for (const k of this.history.keys()) if (!keys.has(k)) this.history.delete(k);
  }
}

export function edgeStats(snapshot: EdgeSnapshot, key: string, t: number, window: Window<Counters>): Edge {
  const base = window.push(key, t, snapshot.counters);
  const tls = [...snapshot.tls].sort();
  const edge: Edge = {
    ...snapshot.parts,
    key,
    tls,
    secured: tls.length > 0 && tls.every((x) => x === "true"),
    rps: null,
    success: null,
    p99: null,
    requestsTotal: snapshot.counters.requests,
  };
  if (!base) return edge;
  const d = minus(snapshot.counters, base.value);
  const seconds = (t - base.t) / 1000;
  edge.rps = seconds > 0 ? Math.max(0, d.requests) / seconds : null;
  if (d.responses > 0) {
    edge.success = d.successes / d.responses;
    edge.p99 = quantile(0.99, d.buckets);
  }
  return edge;
}

/** Every authorization denial one (destination) pod's proxy counted. */
export function denialsOfPod(ns: string, pod: string, samples: Sample[]): { policyMetrics: boolean; denials: Map<string, Omit<Denial, "recent">> } {
  let policyMetrics = false;
  const denials = new Map<string, Omit<Denial, "recent">>();
  for (const s of samples) {
    if (!/^inbound_(http|tcp)_authz_(allow|deny)_total$/.test(s.name)) continue;
    policyMetrics = true;
    if (!s.name.endsWith("_deny_total") || s.value <= 0) continue;
    const l = s.labels;
    const protocol = s.name.startsWith("inbound_http") ? "HTTP" : "TCP";
    // Linkerd's deny series carry no authz_*: what decided is the Server with
    // no matching authorization, or the default policy (srv_kind="default").
    const isDefault = l.srv_kind === "default" || !l.srv_name;
    const server = isDefault ? "(no Server)" : `${l.srv_kind ?? "server"}/${l.srv_name}`;
    const authorization = l.authz_name
      ? `${l.authz_kind ?? "authorization"}/${l.authz_name}`
      : isDefault
        ? `default policy ${l.srv_name || "(unknown)"}`
        : `no authorization on ${server} matched`;
    const key = [ns, pod, protocol, l.client_id ?? "", server, authorization, l.route_name ?? "", l.target_addr ?? ""].join("|");
    const d = denials.get(key);
    if (d) d.total += s.value;
    else
      denials.set(key, {
        key,
        namespace: ns,
        pod,
        protocol,
        client: l.client_id || "(no identity)",
        server,
        authorization,
        route: l.route_name && l.route_name !== "default" ? l.route_name : "",
        target: l.target_addr ?? "",
        total: s.value,
      });
  }
  return { policyMetrics, denials };
}
