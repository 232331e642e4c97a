// Polls every meshed pod's proxy /metrics with the user's own credentials,
// through kube's pods/proxy subresource:
//   GET /api/v1/namespaces/NS/pods/NAME:ADMINPORT/proxy/metrics
// (RBAC `get pods/proxy`; the server forwards only /metrics, /trust and
// /denials of the proxy admin port). One poll feeds the edges, the denial
// counts and (from each proxy's /denials) the recent denials.

import { get, getText } from "../api";
import type { KubeObject } from "../collection";
import { identityOf } from "../shared";
import { ADMIN_PORT, INJECT } from "./annotations";
import { type RecentDenial, denialsPath, parseDenials } from "./denials";
import { type Denial, type Edge, Window, denialsOfPod, edgeStats, edgesOfPod } from "./edges";
import { parseMetrics } from "./prom";

export { ADMIN_PORT, INJECT };
export const POLL_MS = 2000;
const CONCURRENCY = 16;

export interface ScrapeResult {
  /** When the poll finished. */
  at: number;
  /** Pods whose proxy could be read. */
  scraped: number;
  /** Running meshed pods with an admin port. */
  proxies: number;
  /** Namespaces where pods/proxy was refused, with the server's message. */
  forbidden: Map<string, string>;
  /** Pods that failed otherwise. */
  errors: { pod: string; message: string }[];
  edges: Edge[];
  denials: Denial[];
  /** Whether any proxy reports inbound authorization metrics at all. */
  policyMetrics: boolean;
  /** Every proxy's recent denials, newest first. */
  recent: RecentDenial[];
  /** Proxies whose /denials could be read. */
  recentRead: number;
}

/** A running meshed pod's proxy-admin `pods/proxy` path, or null. */
export function metricsPath(pod: KubeObject): string | null {
  const a = pod.metadata.annotations ?? {};
  if (a[INJECT] !== "enabled" || !a[ADMIN_PORT] || pod.status?.phase !== "Running") return null;
  const ns = encodeURIComponent(pod.metadata.namespace ?? "");
  return `/api/v1/namespaces/${ns}/pods/${encodeURIComponent(pod.metadata.name)}:${encodeURIComponent(a[ADMIN_PORT])}/proxy/metrics`;
}

export class Scraper {
  private edgeWindow = new Window<any>();
  private denialWindow = new Window<{ requests: number }>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private controller = new AbortController();
  private listeners = new Set<(r: ScrapeResult) => void>();
  last: ScrapeResult | null = null;

  constructor(private pods: () => KubeObject[]) {}

  subscribe(l: (r: ScrapeResult) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  start(): this {
    void this.poll();
    return this;
  }

  stop(): void {
    this.controller.abort();
    if (this.timer) clearTimeout(this.timer);
  }

  private async poll(): Promise<void> {
    const targets = this.pods()
      .map((p) => ({ pod: p, path: metricsPath(p) }))
      .filter((x): x is { pod: KubeObject; path: string } => x.path !== null);
    const result: ScrapeResult = {
      at: 0,
      scraped: 0,
      proxies: targets.length,
      forbidden: new Map(),
      errors: [],
      edges: [],
      denials: [],
      policyMetrics: false,
      recent: [],
      recentRead: 0,
    };
    const edgeKeys = new Set<string>();
    const denialKeys = new Set<string>();
    let next = 0;
    const worker = async () => {
      while (next < targets.length && !this.controller.signal.aborted) {
        const { pod, path } = targets[next++];
        const ns = pod.metadata.namespace ?? "";
        const answer = await getText(path, this.controller.signal);
        const t = performance.now();
        if (answer.kind === "forbidden") {
          result.forbidden.set(ns, answer.message);
          continue;
        }
        if (answer.kind !== "ok") {
          result.errors.push({ pod: `${ns}/${pod.metadata.name}`, message: answer.message });
          continue;
        }
        result.scraped++;
        const samples = parseMetrics(answer.value);
        const src = identityOf(ns, pod.spec?.serviceAccountName ?? "default");
        for (const [key, snapshot] of edgesOfPod(ns, pod.metadata.name, src, samples)) {
          edgeKeys.add(key);
          result.edges.push(edgeStats(snapshot, key, t, this.edgeWindow));
        }
        const d = denialsOfPod(ns, pod.metadata.name, samples);
        result.policyMetrics ||= d.policyMetrics;
        for (const [key, denial] of d.denials) {
          denialKeys.add(key);
          const base = this.denialWindow.push(key, t, { requests: denial.total });
          result.denials.push({ ...denial, recent: base ? denial.total - base.value.requests : null });
        }
        // The same permission reads the proxy's recent denials (a proxy too old to keep them answers 404: left out).
        const recentPath = denialsPath(pod);
        const recent = recentPath ? await get<unknown>(recentPath) : null;
        if (recent?.kind === "ok") {
          result.recentRead++;
          result.recent.push(...parseDenials(ns, pod.metadata.name, recent.value));
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, targets.length) }, worker));
    if (this.controller.signal.aborted) return;
    this.edgeWindow.retain(edgeKeys);
    this.denialWindow.retain(denialKeys);
    // RFC 3339 in UTC with milliseconds: the strings sort as the times do.
    result.recent.sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : a.key.localeCompare(b.key)));
    result.at = Date.now();
    this.last = result;
    for (const l of this.listeners) l(result);
    this.timer = setTimeout(() => void this.poll(), POLL_MS);
  }
}
