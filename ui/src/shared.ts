// What every view shares: the collections (one list+watch per kind for the
// whole page) and the panels for states a user's RBAC causes.

import { Collection, type State } from "./collection";
import { badge, h } from "./dom";

const RBAC = "/apis/rbac.authorization.k8s.io/v1";

const makers = {
  namespaces: () => new Collection("list namespaces", "/api/v1/namespaces"),
  serviceaccounts: () => new Collection("list serviceaccounts in all namespaces", "/api/v1/serviceaccounts"),
  rolebindings: () => new Collection("list rolebindings in all namespaces", `${RBAC}/rolebindings`),
  clusterrolebindings: () => new Collection("list clusterrolebindings", `${RBAC}/clusterrolebindings`),
  pods: () => new Collection("list pods in all namespaces", "/api/v1/pods"),
  // Metadata only: the page never holds token values.
  tokenSecrets: () =>
    new Collection("list secrets in all namespaces", "/api/v1/secrets", "fieldSelector=" + encodeURIComponent("type=kubernetes.io/service-account-token"), true),
};

const started = new Map<string, Collection>();

export function collection(name: keyof typeof makers): Collection {
  let c = started.get(name);
  if (!c) {
    c = makers[name]().start();
    started.set(name, c);
  }
  return c;
}

export function stopAll(): void {
  for (const c of started.values()) c.stop();
  started.clear();
}

/** The panel for a collection that is not ready; null when it is. */
export function statePanel(state: State, what: string): HTMLElement | null {
  switch (state.kind) {
    case "ready":
      return null;
    case "loading":
      return h("p", { class: "muted", role: "status" }, `Loading (${what})…`);
    default:
      return outcomePanel(state.kind, state.message, what);
  }
}

/** Forbidden says what the user may not do; other failures are errors. */
export function outcomePanel(kind: "forbidden" | "unauthorized" | "error", message: string, what: string): HTMLElement {
  if (kind === "forbidden")
    return h(
      "div",
      { class: "panel forbidden", role: "status", "data-state": "forbidden" },
      badge("forbidden", "Forbidden"),
      h("p", {}, `Your credentials may not ${what}.`),
      h("p", { class: "server-message" }, h("span", { class: "muted" }, "Server: "), message),
    );
  if (kind === "unauthorized")
    return h(
      "div",
      { class: "panel forbidden", role: "status", "data-state": "unauthorized" },
      badge("denied", "Not signed in"),
      h("p", {}, `The server did not accept your token (${message}). Sign out and paste a valid one.`),
    );
  return h("div", { class: "panel error", role: "alert", "data-state": "error" }, badge("warning", "Error"), h("p", {}, `${what}: ${message}`));
}

/** `NAME.NS.serviceaccount.identity.linkerd.cluster.local`, as the identity CA names workloads. */
export function identityOf(namespace: string, serviceAccount: string): string {
  return `${serviceAccount}.${namespace}.serviceaccount.identity.linkerd.cluster.local`;
}
