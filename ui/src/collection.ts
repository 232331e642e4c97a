// A list+watch mirror of one kind, as client-go's reflector: list, then
// watch from the list's resourceVersion; events apply incrementally; a 410
// (history compacted) or a broken stream relists. Views subscribe and are
// told once per burst of events.

import { get, watch, type Outcome } from "./api";

export type State =
  | { kind: "loading" }
  | { kind: "ready" }
  | { kind: "forbidden"; message: string }
  | { kind: "unauthorized"; message: string }
  | { kind: "error"; message: string };

export interface Meta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  annotations?: Record<string, string>;
  labels?: Record<string, string>;
}

export interface KubeObject {
  metadata: Meta;
  [key: string]: any;
}

/** Table output with metadata only: keeps Secret contents out of the page. */
const METADATA_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io";

const keyOf = (o: KubeObject) => `${o.metadata.namespace ?? ""}/${o.metadata.name}`;

export class Collection {
  readonly items = new Map<string, KubeObject>();
  state: State = { kind: "loading" };
  private listeners = new Set<() => void>();
  private scheduled = false;
  private controller = new AbortController();

  /**
   * @param what the permission it needs, in words (`list serviceaccounts in all namespaces`)
   * @param path the collection path
   * @param query extra query (`fieldSelector=…`), without `?`
   * @param metadataOnly read as a metadata-only Table
   */
  constructor(readonly what: string, private path: string, private query = "", private metadataOnly = false) {}

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start(): this {
    void this.run(this.controller.signal);
    return this;
  }

  stop(): void {
    this.controller.abort();
  }

  private notify(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      for (const l of this.listeners) l();
    });
  }

  private fail(outcome: Outcome<unknown>): void {
    if (outcome.kind !== "ok") this.state = { kind: outcome.kind, message: outcome.message };
    this.notify();
  }

  private url(extra: string): string {
    const q = [this.query, this.metadataOnly ? "includeObject=Metadata" : "", extra].filter(Boolean).join("&");
    return q ? `${this.path}?${q}` : this.path;
  }

  private objects(body: any): KubeObject[] {
    if (this.metadataOnly) return (body?.rows ?? []).map((r: any) => r.object).filter((o: any) => o?.metadata);
    return body?.items ?? [];
  }

  private async run(signal: AbortSignal): Promise<void> {
    let backoff = 500;
    while (!signal.aborted) {
      const list = await get<any>(this.url(""), this.metadataOnly ? METADATA_TABLE : undefined);
      if (list.kind !== "ok") {
        this.fail(list);
        // Permissions can be granted later: look again, slowly.
        await sleep(list.kind === "error" ? backoff : 5000, signal);
        backoff = Math.min(backoff * 2, 10000);
        continue;
      }
      this.items.clear();
      for (const o of this.objects(list.value)) this.items.set(keyOf(o), o);
      let rv: string = list.value?.metadata?.resourceVersion ?? "";
      this.state = { kind: "ready" };
      this.notify();
      backoff = 500;
      let relist = false;
      while (!signal.aborted && !relist) {
        const ended = await watch(
          this.url(`watch=1&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(rv)}`),
          (event) => {
            if (event.type === "ERROR") {
              relist = true; // 410 Expired and friends: start over from a list
              return;
            }
            const objects: KubeObject[] = this.metadataOnly && event.object?.kind === "Table" ? this.objects(event.object) : [event.object];
            for (const o of objects) {
              if (!o?.metadata) continue;
              if (o.metadata.resourceVersion) rv = o.metadata.resourceVersion;
              if (event.type === "BOOKMARK") continue;
              if (event.type === "DELETED") this.items.delete(keyOf(o));
              else this.items.set(keyOf(o), o);
            }
            this.notify();
          },
          signal,
          this.metadataOnly ? METADATA_TABLE : undefined,
        );
        if (ended.kind !== "ok") {
          this.fail(ended);
          relist = true;
          await sleep(backoff, signal);
        }
      }
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
