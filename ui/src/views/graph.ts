// The identity graph. Nodes are meshed workloads: pods annotated
// `linkerd.io/inject: enabled`, named by their ServiceAccount's identity.
// Edges (request rate, success rate, p99, SECURED or not) and policy denials
// come from the proxies' /metrics, read every two seconds through kube's
// pods/proxy subresource with the user's own credentials: RBAC `get
// pods/proxy` decides, and a refusal is shown as such. Each proxy's last
// denials (its /denials) are listed with the rule that decides them, from the
// server's policy explain API (RBAC `list servers.policy.linkerd.io`; a
// refusal there is shown as forbidden in the row, not as an error).

import type { KubeObject } from "../collection";
import { badge, fill, h } from "../dom";
import { KeyedTable } from "../keyed-table";
import { type Decision, type Explained, Explainer, type RecentDenial, explainPath } from "../mesh/denials";
import type { Denial, Edge } from "../mesh/edges";
import { INJECT, POLL_MS, Scraper, type ScrapeResult } from "../mesh/scrape";
import { collection, identityOf, outcomePanel, statePanel } from "../shared";

const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(x === 1 ? 0 : 1)}%`);
const rps = (x: number | null) => (x === null ? "measuring…" : `${x.toFixed(x < 10 ? 2 : 1)} rps`);
const ms = (x: number | null) => (x === null ? "—" : `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`);

function securedCell(e: Edge) {
  const text = e.secured ? "SECURED" : `NOT SECURED (tls=${e.tls.filter((t) => t !== "true").join(",")})`;
  return { text, draw: () => (e.secured ? badge("allowed", "SECURED") : badge("denied", text)) };
}

function edgeTable(): KeyedTable<Edge> {
  return new KeyedTable<Edge>(
    "edges-table",
    "Edges between meshed workloads",
    ["Source", "Destination", "Request rate", "Success rate", "P99 latency", "mTLS"],
    (e) => [
      { text: `${e.srcNs}/${e.srcPod} ${e.srcIdentity}`, draw: () => workload(e.srcNs, e.srcPod, e.srcIdentity) },
      { text: `${e.dstNs}/${e.dstPod} ${e.dstIdentity}`, draw: () => workload(e.dstNs, e.dstPod, e.dstIdentity) },
      rps(e.rps),
      pct(e.success),
      ms(e.p99),
      securedCell(e),
    ],
  );
}

function workload(ns: string, pod: string, identity: string): Node {
  return h("span", {}, h("strong", {}, `${ns}/${pod}`), h("br", {}), h("span", { class: "muted identity" }, identity || "(no identity)"));
}

function denialTable(): KeyedTable<Denial> {
  return new KeyedTable<Denial>(
    "denials-table",
    "Requests denied by authorization policy",
    ["Denied at", "Client identity", "Server", "Decided by", "Route", "Denied (total)", "Last 30 s"],
    (d) => [
      `${d.namespace}/${d.pod} (${d.protocol}${d.target ? ` ${d.target}` : ""})`,
      d.client,
      d.server,
      { text: d.authorization, draw: () => h("span", {}, badge("denied", "DENIED"), " by ", h("code", {}, d.authorization)) },
      d.route || "—",
      String(d.total),
      d.recent === null ? "measuring…" : String(d.recent),
    ],
  );
}

/** Rows shown in the recent denials table (each proxy keeps 128). */
const RECENT_ROWS = 50;

/** The rule that decided, in one line (the trace has every rule looked at). */
export function decidingRule(d: Decision): string {
  if (d.verdict !== "deny" && d.authorization) return `${d.authorization[0]}/${d.authorization[1]}`;
  if (d.httpStatus === 404) return `Server ${d.server}: no HTTPRoute matched the request`;
  const where = d.server ? `Server ${d.server}${d.route ? ` → HTTPRoute ${d.route}` : ""}` : "no Server: the pod's default inbound policy";
  return `${where}: no authorization matched`;
}

function traceMark(line: string): string {
  if (line.includes(": matched") || line.startsWith("verdict: authorized")) return "✔";
  if (line.includes("not matched") || line.startsWith("verdict: denied") || line.includes("authorizes nobody")) return "✘";
  return "·";
}

function explainCell(d: RecentDenial, e: Explained) {
  const text = JSON.stringify(e.kind === "ok" ? [e.kind, e.decision] : e.kind === "pending" ? [e.kind] : [e.kind, e.message]);
  const draw = (): Node => {
    if (e.kind === "pending") return h("span", { class: "muted", "data-state": "pending" }, "Asking policy explain…");
    if (e.kind === "forbidden")
      return h(
        "div",
        { class: "explain", "data-state": "forbidden" },
        badge("forbidden", "Forbidden"),
        ` Your credentials may not explain policy (list servers.policy.linkerd.io in namespace ${d.namespace}).`,
        h("div", { class: "muted server-message" }, "Server: ", e.message),
      );
    if (e.kind === "error") return h("div", { class: "explain", "data-state": "error" }, badge("warning", "Error"), ` policy explain: ${e.message}`);
    const dec = e.decision;
    const word = dec.verdict === "deny" ? badge("denied", "DENIED") : dec.verdict === "auditDeny" ? badge("warning", "AUDIT") : badge("allowed", "ALLOWED now");
    return h(
      "details",
      { class: "explain", "data-state": "explained" },
      h("summary", {}, word, " by ", h("code", { class: "rule" }, decidingRule(dec)), h("span", { class: "sr-only" }, " (show every rule looked at)")),
      h("p", { class: "muted" }, `Explained against the policy in force now: ${dec.reason}`),
      h(
        "ol",
        { class: "trace", "aria-label": "Rules looked at" },
        dec.trace.map((line) => h("li", {}, h("span", { "aria-hidden": "true" }, `${traceMark(line)} `), line)),
      ),
    );
  };
  return { text, draw };
}

function recentTable(explain: (d: RecentDenial) => Explained): KeyedTable<RecentDenial> {
  return new KeyedTable<RecentDenial>(
    "recent-denials-table",
    "The latest requests and connections denied by authorization policy, with the rule that decided",
    ["When", "Client identity", "Target", "Request", "Reason", "Rule that decided (policy explain)"],
    (d) => {
      const when = new Date(d.at);
      return [
        {
          text: `${d.at} ${d.verdict}`,
          draw: () =>
            h(
              "span",
              {},
              d.verdict === "audit" ? badge("warning", "AUDIT (allowed)") : badge("denied", "DENIED"),
              h("br", {}),
              h("time", { datetime: d.at, title: d.at }, Number.isNaN(when.getTime()) ? d.at : when.toLocaleTimeString()),
            ),
        },
        {
          text: `${d.client.identity ?? ""} ${d.client.address}`,
          draw: () =>
            h("span", {}, h("span", { class: "identity" }, d.client.identity ?? "(no identity)"), h("br", {}), h("span", { class: "muted" }, d.client.address)),
        },
        `${d.namespace}/${d.pod}:${d.port}`,
        d.protocol === "HTTP" ? `${d.method ?? ""} ${d.path ?? ""}` : "TCP connection",
        d.reason,
        explainCell(d, explain(d)),
      ];
    },
  );
}

export function mountGraph(root: HTMLElement): () => void {
  const pods = collection("pods");
  const edges = edgeTable();
  const denials = denialTable();
  const edgesState = h("div", { id: "edges-state" });
  const denialsState = h("div", { id: "denials-state" });
  let showRecent = () => {};
  const explainer = new Explainer(() => showRecent());
  const recent = recentTable((d) => explainer.lookup(explainPath(d)));
  const recentState = h("div", { id: "recent-denials-state" });
  const recentSection = h(
    "section",
    { "aria-labelledby": "recent-denials-h", id: "recent-denials", "data-state": "loading" },
    h("h3", { id: "recent-denials-h" }, "Latest denials, with the rule that decided"),
    recentState,
    recent.table,
  );
  const filter = h("input", { id: "edge-filter", type: "search", autocomplete: "off", placeholder: "namespace, pod or identity" });
  const updated = h("span", { class: "muted", id: "edges-updated", role: "status", "aria-live": "polite" });
  const nodes = h("div", { id: "graph-nodes" });
  const edgesSection = h(
    "section",
    { "aria-labelledby": "edges-h", id: "graph-edges", "data-state": "loading" },
    h("h2", { id: "edges-h" }, "Edges"),
    h("div", { class: "toolbar" }, h("label", { for: "edge-filter" }, "Filter edges"), filter, updated),
    edgesState,
    edges.table,
  );
  const denialsSection = h(
    "section",
    { "aria-labelledby": "denials-h", id: "graph-denials", "data-state": "loading" },
    h("h2", { id: "denials-h" }, "Recent policy denials"),
    denialsState,
    recentSection,
    h("h3", { id: "denial-counts-h" }, "Denials counted by the proxies"),
    denials.table,
  );
  root.append(
    h("h1", { id: "view-title", tabindex: -1 }, "Identity graph"),
    edgesSection,
    denialsSection,
    h("section", { "aria-labelledby": "nodes-h" }, h("h2", { id: "nodes-h" }, "Meshed workloads"), nodes),
  );

  edges.table.hidden = true;
  denials.table.hidden = true;
  recent.table.hidden = true;
  fill(recentState, h("p", { class: "muted", role: "status" }, "Reading the proxies' recent denials…"));
  for (const s of [edgesState, denialsState]) fill(s, h("p", { class: "muted", role: "status" }, "Reading the proxies' metrics…"));
  const scraper = new Scraper(() => (pods.state.kind === "ready" ? [...pods.items.values()] : []));
  let last: ScrapeResult | null = null;

  function showEdges(): void {
    if (!last) return;
    const started = performance.now();
    const r = last;
    const needle = filter.value.trim().toLowerCase();
    const shown = r.edges
      .filter((e) => !needle || `${e.srcNs}/${e.srcPod} ${e.srcIdentity} ${e.dstNs}/${e.dstPod} ${e.dstIdentity}`.toLowerCase().includes(needle))
      .sort((a, b) => a.key.localeCompare(b.key));
    edges.update(shown);
    edges.table.hidden = shown.length === 0;
    let state: string;
    if (r.proxies === 0) {
      state = "empty";
      fill(
        edgesState,
        h(
          "div",
          { class: "panel empty" },
          badge("info", "No proxies yet"),
          h("p", {}, "No running meshed pod has a proxy (annotation tessera.io/proxy-admin-port), so there are no edges yet."),
        ),
      );
    } else if (r.scraped === 0 && r.forbidden.size > 0) {
      state = "forbidden";
      const [ns, message] = [...r.forbidden.entries()][0];
      fill(edgesState, outcomePanel("forbidden", message, `get pods/proxy in namespace ${ns} (needed to read the proxies' metrics)`));
    } else {
      state = r.edges.length ? "edges" : "no-traffic";
      const notes: Node[] = [];
      if (r.edges.length === 0) notes.push(h("div", { class: "panel empty" }, badge("info", "No traffic yet"), h("p", {}, `${r.scraped} proxies read; none has sent a request to another meshed pod yet.`)));
      for (const [ns, message] of r.forbidden) notes.push(outcomePanel("forbidden", message, `get pods/proxy in namespace ${ns}: its proxies are left out`));
      for (const e of r.errors.slice(0, 3)) notes.push(outcomePanel("error", e.message, `reading ${e.pod}'s proxy`));
      fill(edgesState, ...notes);
    }
    edgesSection.dataset.state = state;
    updated.textContent = `${shown.length} of ${r.edges.length} edges · ${r.scraped}/${r.proxies} proxies read · every ${POLL_MS / 1000} s · updated ${new Date(r.at).toLocaleTimeString()}`;
    performance.measure("edges-update", { start: started, end: performance.now() });
  }

  function showDenials(): void {
    if (!last) return;
    const r = last;
    denials.update([...r.denials].sort((a, b) => a.key.localeCompare(b.key)));
    denials.table.hidden = r.denials.length === 0;
    let state = "denials";
    if (r.proxies === 0 || r.scraped === 0) {
      state = r.scraped === 0 && r.forbidden.size > 0 ? "forbidden" : "empty";
      fill(
        denialsState,
        state === "forbidden"
          ? outcomePanel("forbidden", [...r.forbidden.values()][0], "get pods/proxy (denials are counted by the proxies)")
          : h("div", { class: "panel empty" }, badge("info", "No proxies yet"), h("p", {}, "Denials are counted by the proxies; none is running yet.")),
      );
    } else if (!r.policyMetrics) {
      state = "not-available";
      fill(
        denialsState,
        h(
          "div",
          { class: "panel empty" },
          badge("info", "Not available yet"),
          h("p", {}, "These proxies do not report authorization metrics (inbound_http_authz_deny_total): policy is not enforced by them yet."),
        ),
      );
    } else if (r.denials.length === 0) {
      state = "none";
      fill(denialsState, h("p", {}, badge("ok", "None"), " No request has been denied by authorization policy."));
    } else fill(denialsState);
    denialsSection.dataset.state = state;
  }

  showRecent = () => {
    if (!last || pods.state.kind !== "ready") return;
    const r = last;
    const shown = r.recent.slice(0, RECENT_ROWS);
    recent.update(shown);
    recent.table.hidden = shown.length === 0;
    explainer.retain(new Set(shown.map(explainPath)));
    let state: string;
    if (r.proxies === 0 || (r.scraped === 0 && r.forbidden.size === 0)) {
      state = "empty";
      fill(recentState);
    } else if (r.scraped === 0) {
      state = "forbidden";
      fill(recentState);
    } else if (r.recentRead === 0) {
      state = "not-available";
      fill(
        recentState,
        h("div", { class: "panel empty" }, badge("info", "Not available yet"), h("p", {}, "These proxies do not keep recent denials (admin /denials).")),
      );
    } else if (shown.length === 0) {
      state = "none";
      fill(recentState, h("p", {}, badge("ok", "None"), ` The ${r.recentRead} proxies read have denied nothing recently.`));
    } else {
      state = "denials";
      fill(recentState, h("p", { class: "muted", role: "status" }, `${shown.length} of ${r.recent.length} recent denials, newest first, from ${r.recentRead} proxies.`));
    }
    recentSection.dataset.state = state;
  };

  function renderNodes(): void {
    const panel = statePanel(pods.state, pods.what);
    if (panel) {
      fill(nodes, panel);
      for (const [section, s] of [[edgesSection, edgesState], [denialsSection, denialsState]] as const) {
        section.dataset.state = pods.state.kind;
        if (pods.state.kind !== "loading") fill(s, statePanel(pods.state, `${pods.what} (to find the meshed pods)`)!);
      }
      return;
    }
    const meshed = [...pods.items.values()].filter((p) => p.metadata.annotations?.[INJECT] === "enabled");
    if (meshed.length === 0) {
      fill(
        nodes,
        h(
          "div",
          { class: "panel empty", "data-state": "empty" },
          badge("info", "No meshed workloads"),
          h("p", {}, `No pod is annotated ${INJECT}: enabled. Meshed pods appear here as nodes, named by their ServiceAccount's identity.`),
        ),
      );
      return;
    }
    // One node per identity: the pods running as each ServiceAccount.
    const byIdentity = new Map<string, KubeObject[]>();
    for (const p of meshed) {
      const id = identityOf(p.metadata.namespace ?? "", p.spec?.serviceAccountName ?? "default");
      byIdentity.set(id, [...(byIdentity.get(id) ?? []), p]);
    }
    fill(
      nodes,
      h(
        "ul",
        { class: "nodes" },
        [...byIdentity.entries()]
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([id, ps]) =>
            h(
              "li",
              { class: "node" },
              h("strong", {}, id),
              h(
                "ul",
                { class: "plain" },
                ps.map((p) =>
                  h("li", {}, `Pod ${p.metadata.namespace}/${p.metadata.name} · ${p.status?.phase ?? "Pending"}${p.spec?.nodeName ? ` on ${p.spec.nodeName}` : ""}`),
                ),
              ),
            ),
          ),
      ),
    );
  }

  filter.addEventListener("input", showEdges);
  const unsubscribeScrape = scraper.subscribe((r) => {
    last = r;
    if (pods.state.kind !== "ready") return;
    showEdges();
    showDenials();
    showRecent();
  });
  const unsubscribePods = pods.subscribe(renderNodes);
  renderNodes();
  scraper.start();
  return () => {
    scraper.stop();
    explainer.stop();
    unsubscribeScrape();
    unsubscribePods();
  };
}
