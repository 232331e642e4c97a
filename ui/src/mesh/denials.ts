// Recent policy denials, as each meshed pod's proxy keeps them (admin
// `GET /denials`, a ring of the last 128 denials and audit would-be denials),
// read through kube's pods/proxy with the user's credentials, and the rule
// that decides each one from the server's policy explain API:
//   GET /tessera/v1/policy/explain?namespace=&pod=&port=&from=&ip=[&method=&path=]
// (RBAC `list servers.policy.linkerd.io` in the pod's namespace). The proxy
// records what it evaluated (headers are never kept), so explain is asked the
// same question, against the policy in force now.

import { get } from "../api";
import type { KubeObject } from "../collection";
import { ADMIN_PORT, INJECT } from "./annotations";

/** One entry of a proxy's `/denials` (the contract in SESSION.md). */
export interface ProxyDenial {
  at: string;
  protocol: "HTTP" | "TCP";
  client: { identity: string | null; address: string };
  port: number;
  method?: string;
  path?: string;
  server: string;
  authorization?: string;
  route?: string;
  reason: string;
  verdict: "deny" | "audit";
}

/** A denial with the pod whose proxy decided it. */
export interface RecentDenial extends ProxyDenial {
  key: string;
  namespace: string;
  pod: string;
}

/** `tessera_policy::Decision` as served (camelCase). */
export interface Decision {
  verdict: "allow" | "deny" | "auditDeny";
  server: string | null;
  authorization: [string, string] | null;
  route: string | null;
  reason: string;
  httpStatus: number | null;
  trace: string[];
}

export type Explained =
  | { kind: "pending" }
  | { kind: "ok"; decision: Decision; at: number }
  | { kind: "forbidden"; message: string; at: number }
  | { kind: "error"; message: string; at: number };

/** A running meshed pod's `pods/proxy` path to its proxy's `/denials`, or null. */
export function denialsPath(pod: KubeObject): string | null {
  const a = pod.metadata.annotations ?? {};
  if (a[INJECT] !== "enabled" || !a[ADMIN_PORT] || pod.status?.phase !== "Running") return null;
  const ns = encodeURIComponent(pod.metadata.namespace ?? "");
  return `/api/v1/namespaces/${ns}/pods/${encodeURIComponent(pod.metadata.name)}:${encodeURIComponent(a[ADMIN_PORT])}/proxy/denials`;
}

/** Parses a `/denials` answer; entries that do not have the contract's shape are skipped. */
export function parseDenials(namespace: string, pod: string, body: unknown): RecentDenial[] {
  const list = (body as { denials?: unknown })?.denials;
  if (!Array.isArray(list)) return [];
  const out: RecentDenial[] = [];
  const seen = new Map<string, number>();
  for (const d of list as ProxyDenial[]) {
    if (!d || typeof d.at !== "string" || typeof d.reason !== "string" || typeof d.port !== "number" || !d.client || typeof d.client.address !== "string") continue;
    const base = [namespace, pod, d.at, d.client.address, d.port, d.method ?? "", d.path ?? ""].join("|");
    // Two denials in the same millisecond from the same socket are still two rows.
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    out.push({ ...d, key: n > 1 ? `${base}#${n}` : base, namespace, pod });
  }
  return out;
}

/** The client's IP from `ADDR:PORT` (or `[V6]:PORT`). */
export function clientIp(address: string): string {
  const v6 = /^\[([^\]]+)\]:\d+$/.exec(address);
  if (v6) return v6[1];
  return address.replace(/:\d+$/, "");
}

/** The explain question for a denial: the same client, port and request. */
export function explainPath(d: RecentDenial): string {
  const q = new URLSearchParams({ namespace: d.namespace, pod: d.pod, port: String(d.port), from: d.client.identity ?? "unauthenticated" });
  const ip = clientIp(d.client.address);
  if (ip) q.set("ip", ip);
  if (d.protocol === "HTTP") {
    q.set("method", d.method ?? "GET");
    q.set("path", d.path ?? "/");
  }
  return `/tessera/v1/policy/explain?${q.toString()}`;
}

/** How long an answer is reused before explain is asked again (the policy may change). */
const FRESH_MS = 30_000;
/** Explain calls in flight at once. */
const CONCURRENCY = 4;

/** Asks explain once per distinct question, caches the answer, and says when one arrives. */
export class Explainer {
  private answers = new Map<string, Explained>();
  private queue: string[] = [];
  /** Questions queued or in flight (asked once at a time). */
  private asking = new Set<string>();
  private inFlight = 0;
  private stopped = false;

  constructor(private onAnswer: () => void) {}

  /** The answer for `path` so far; asks (again, once stale) in the background. */
  lookup(path: string): Explained {
    const known = this.answers.get(path);
    const stale = known && known.kind !== "pending" && Date.now() - known.at > FRESH_MS;
    if ((!known || stale) && !this.asking.has(path)) {
      if (!known) this.answers.set(path, { kind: "pending" });
      this.asking.add(path);
      this.queue.push(path);
      this.pump();
    }
    return this.answers.get(path)!;
  }

  /** Forgets questions no longer asked. */
  retain(paths: Set<string>): void {
    for (const p of this.answers.keys()) if (!paths.has(p)) this.answers.delete(p);
  }

  stop(): void {
    this.stopped = true;
  }

  private pump(): void {
    while (!this.stopped && this.inFlight < CONCURRENCY && this.queue.length) {
      const path = this.queue.shift()!;
      this.inFlight++;
      void get<{ decision: Decision }>(path).then((answer) => {
        this.inFlight--;
        this.asking.delete(path);
        if (this.stopped) return;
        const at = Date.now();
        let explained: Explained;
        if (answer.kind === "ok") explained = { kind: "ok", decision: answer.value.decision, at };
        else if (answer.kind === "forbidden") explained = { kind: "forbidden", message: answer.message, at };
        else explained = { kind: "error", message: answer.message, at };
        this.answers.set(path, explained);
        this.onAnswer();
        this.pump();
      });
    }
  }
}
