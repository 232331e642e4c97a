// The expiry timeline: what expires when. The server's own inventory
// (`GET /tessera/v1/expiry`: serving certificate, client CA, signing keys,
// trust anchors, issuer, proxies' leaves, legacy tokens) sorted by expiry
// with its warnings, polled; until a server has that endpoint the view says
// so. Legacy ServiceAccount token Secrets (which never expire: the risk to
// see) follow a watch, and the published signing keys are listed.

import { get } from "../api";
import { age, badge, fill, h } from "../dom";
import { KeyedTable } from "../keyed-table";
import { collection, outcomePanel, statePanel } from "../shared";

/** One item of `/tessera/v1/expiry` (the expiry contract). */
interface ExpiryItem {
  kind: string;
  name: string;
  namespace?: string | null;
  owner: string;
  notBefore?: string | null;
  notAfter?: string | null;
  ageSeconds?: number | null;
  neverExpires: boolean;
  warning?: string | null;
}

const EXPIRY_POLL_MS = 10_000;

function remaining(item: ExpiryItem, now: number): string {
  if (item.neverExpires) return "never expires";
  if (!item.notAfter) return "—";
  const seconds = Math.floor((Date.parse(item.notAfter) - now) / 1000);
  if (seconds < 0) return "EXPIRED";
  if (seconds < 7200) return `in ${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `in ${Math.floor(seconds / 3600)}h`;
  return `in ${Math.floor(seconds / 86400)}d`;
}

/** Soonest first; never-expiring items last (they are warnings of their own). */
function byExpiry(a: ExpiryItem, b: ExpiryItem): number {
  const at = (i: ExpiryItem) => (i.neverExpires || !i.notAfter ? Infinity : Date.parse(i.notAfter));
  return at(a) - at(b) || `${a.kind}/${a.name}`.localeCompare(`${b.kind}/${b.name}`);
}

function mountServerTimeline(section: HTMLElement): () => void {
  const state = h("div", { id: "expiry-server-state" }, h("p", { class: "muted", role: "status" }, "Loading the server's expiry inventory…"));
  const table = new KeyedTable<ExpiryItem & { key: string }>(
    "expiry-table",
    "What expires when, soonest first",
    ["What", "Owner", "Expires", "Not after", "Warning"],
    (i) => {
      const when = remaining(i, Date.now());
      return [
        `${i.kind} ${i.namespace ? `${i.namespace}/` : ""}${i.name}`,
        i.owner,
        { text: when, draw: () => (i.neverExpires || when === "EXPIRED" ? badge("warning", when) : document.createTextNode(when)) },
        i.notAfter ?? "—",
        { text: i.warning ?? "", draw: () => (i.warning ? badge("warning", i.warning) : badge("ok", "ok")) },
      ];
    },
  );
  table.table.hidden = true;
  section.append(state, table.table);
  let timer: ReturnType<typeof setTimeout> | null = null;
  let stopped = false;
  const poll = async () => {
    const answer = await get<ExpiryItem[] | { items: ExpiryItem[]; notes?: string[] }>("/tessera/v1/expiry");
    if (stopped) return;
    if (answer.kind === "ok") {
      const items = (Array.isArray(answer.value) ? answer.value : (answer.value.items ?? [])).map((i) => ({
        ...i,
        key: `${i.kind}|${i.namespace ?? ""}|${i.name}|${i.owner}`,
      }));
      table.update(items.sort(byExpiry));
      table.table.hidden = items.length === 0;
      const warnings = items.filter((i) => i.warning).length;
      section.dataset.state = items.length ? "items" : "empty";
      const notes = Array.isArray(answer.value) ? [] : (answer.value.notes ?? []);
      fill(
        state,
        h("p", {}, `${items.length} item(s) the server tracks`, warnings ? ", " : ".", warnings ? badge("warning", `${warnings} with a warning`) : null),
        notes.length ? h("ul", { class: "plain muted", id: "expiry-notes" }, notes.map((n) => h("li", {}, badge("info", "not seen"), " ", n))) : null,
      );
    } else if (answer.kind === "error" && /^404\b|could not find/.test(answer.message)) {
      section.dataset.state = "not-available";
      fill(
        state,
        h(
          "div",
          { class: "panel empty" },
          badge("info", "Not available yet"),
          h("p", {}, "This server has no expiry inventory (/tessera/v1/expiry): trust anchors, issuer and leaf certificates cannot be listed yet."),
        ),
      );
    } else {
      section.dataset.state = answer.kind;
      fill(state, outcomePanel(answer.kind, answer.message, "read the expiry inventory (get /tessera/v1/expiry)"));
    }
    timer = setTimeout(() => void poll(), EXPIRY_POLL_MS);
  };
  void poll();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}

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
  );
  const timeline = h("section", { "aria-labelledby": "timeline-h", id: "expiry-server", "data-state": "loading" }, h("h2", { id: "timeline-h" }, "Certificates, keys and tokens, soonest first"));
  root.querySelector("h1")?.after(timeline);
  const stopTimeline = mountServerTimeline(timeline);

  void get<Jwks>("/openid/v1/jwks").then((jwks) => {
    if (jwks.kind !== "ok") {
      fill(keys, outcomePanel(jwks.kind, jwks.message, "read the signing keys (get /openid/v1/jwks)"));
      return;
    }
    fill(
      keys,
      h("p", {}, `${jwks.value.keys.length} published signing key(s) (/openid/v1/jwks); their age and rotation state are on the timeline above when the server lists them.`),
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
  return () => {
    stopTimeline();
    unsubscribe();
  };
}
