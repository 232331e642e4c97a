// The expiry timeline: what expires when. Today the server exposes legacy
// ServiceAccount token Secrets (which never expire: the risk to see) and the
// published signing keys (without rotation dates); anchors, issuer and leaf
// certificates are listed as not exposed yet.

import { get } from "../api";
import { age, badge, fill, h } from "../dom";
import { collection, outcomePanel, statePanel } from "../shared";

interface Jwks {
  keys: { kid?: string; alg?: string; kty?: string }[];
}

export function mountExpiry(root: HTMLElement): () => void {
  const secrets = collection("tokenSecrets");
  const legacy = h("div", { id: "expiry-legacy" });
  const keys = h("div", { id: "expiry-keys" }, h("p", { class: "muted", role: "status" }, "Loading signing keys…"));
  root.append(
    h("h1", { id: "view-title", tabindex: -1 }, "Expiry timeline"),
    h("section", { "aria-labelledby": "legacy-h" }, h("h2", { id: "legacy-h" }, "Legacy ServiceAccount tokens"), legacy),
    h("section", { "aria-labelledby": "keys-h" }, h("h2", { id: "keys-h" }, "Token signing keys"), keys),
    h(
      "section",
      { "aria-labelledby": "certs-h" },
      h("h2", { id: "certs-h" }, "Certificates"),
      h(
        "table",
        { class: "grid", id: "expiry-not-yet" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "What"), h("th", { scope: "col" }, "Expiry"))),
        h(
          "tbody",
          {},
          ["Trust anchors", "Identity issuer", "Workload leaf certificates"].map((what) =>
            h("tr", {}, h("th", { scope: "row" }, what), h("td", {}, badge("info", "not yet exposed by the server"))),
          ),
        ),
      ),
    ),
  );

  void get<Jwks>("/openid/v1/jwks").then((jwks) => {
    if (jwks.kind !== "ok") {
      fill(keys, outcomePanel(jwks.kind, jwks.message, "read the signing keys (get /openid/v1/jwks)"));
      return;
    }
    fill(
      keys,
      h("p", {}, `${jwks.value.keys.length} published signing key(s); their creation and rotation dates are not exposed yet.`),
      h("ul", { class: "plain" }, jwks.value.keys.map((k) => h("li", {}, h("code", {}, k.kid ?? "(no kid)"), ` ${k.alg ?? k.kty ?? ""}`))),
    );
  });

  function render(): void {
    const panel = statePanel(secrets.state, secrets.what);
    if (panel) {
      fill(legacy, panel);
      return;
    }
    const items = [...secrets.items.values()].sort((a, b) => (a.metadata.creationTimestamp ?? "").localeCompare(b.metadata.creationTimestamp ?? ""));
    if (items.length === 0) {
      fill(legacy, h("p", {}, badge("ok", "None"), " No Secret of type kubernetes.io/service-account-token: every token here is short-lived."));
      return;
    }
    const now = Date.now();
    const oldest = Math.max(1, now - Date.parse(items[0].metadata.creationTimestamp ?? new Date(now).toISOString()));
    fill(
      legacy,
      h("p", {}, `${items.length} legacy token Secret(s). They never expire: replace them with bound tokens (TokenRequest).`),
      h(
        "table",
        { class: "grid", id: "legacy-table" },
        h(
          "thead",
          {},
          h("tr", {}, ["Secret", "ServiceAccount", "Expires", "Age", "Created"].map((c) => h("th", { scope: "col" }, c))),
        ),
        h(
          "tbody",
          {},
          items.map((s) => {
            const created = s.metadata.creationTimestamp;
            const bar = h("span", { class: "age-bar", "aria-hidden": "true" });
            bar.style.width = `${Math.round((100 * (now - Date.parse(created ?? ""))) / oldest) || 1}%`;
            return h(
              "tr",
              {},
              h("td", {}, `${s.metadata.namespace}/${s.metadata.name}`),
              h("td", {}, s.metadata.annotations?.["kubernetes.io/service-account.name"] ?? "?"),
              h("td", {}, badge("warning", "never expires")),
              h("td", { class: "age" }, age(created, now), bar),
              h("td", {}, created ?? "?"),
            );
          }),
        ),
      ),
    );
  }

  const unsubscribe = secrets.subscribe(render);
  render();
  return unsubscribe;
}
