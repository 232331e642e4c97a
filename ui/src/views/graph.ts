// The identity graph. Nodes are meshed workloads: pods annotated
// `linkerd.io/inject: enabled`, named by their ServiceAccount's identity.
// Edges and denials need the proxies' metrics and the policy engine, which
// this server does not have yet: those parts say so instead of showing
// nothing.

import type { KubeObject } from "../collection";
import { badge, fill, h } from "../dom";
import { collection, identityOf, statePanel } from "../shared";

const INJECT = "linkerd.io/inject";

export function mountGraph(root: HTMLElement): () => void {
  const pods = collection("pods");
  const nodes = h("div", { id: "graph-nodes" });
  root.append(
    h("h1", { id: "view-title", tabindex: -1 }, "Identity graph"),
    h(
      "section",
      { "aria-labelledby": "edges-h", class: "panel empty", id: "graph-edges", "data-state": "empty" },
      h("h2", { id: "edges-h" }, "Edges"),
      badge("info", "No proxies yet"),
      h(
        "p",
        {},
        "No proxy reports traffic to this server yet, so there are no edges (request rate, success rate, p99, SECURED or not). " +
          "They appear here once tessera's proxies publish their metrics.",
      ),
    ),
    h(
      "section",
      { "aria-labelledby": "denials-h", class: "panel empty", id: "graph-denials", "data-state": "empty" },
      h("h2", { id: "denials-h" }, "Recent policy denials"),
      badge("info", "No policy yet"),
      h("p", {}, "Authorization policy for meshed traffic is not enforced yet, so nothing has been denied."),
    ),
    h("section", { "aria-labelledby": "nodes-h" }, h("h2", { id: "nodes-h" }, "Meshed workloads"), nodes),
  );

  function render(): void {
    const panel = statePanel(pods.state, pods.what);
    if (panel) {
      fill(nodes, panel);
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

  const unsubscribe = pods.subscribe(render);
  render();
  return unsubscribe;
}
