// Namespaces → ServiceAccounts: each account's bindings (from the watched
// RoleBindings and ClusterRoleBindings, so they update live), its effective
// permissions (/tessera/v1/rbac/rules), an explain form beside every
// allow/deny (/tessera/v1/rbac/explain) and who may act as or on it
// (/tessera/v1/rbac/who-can).

import { post, type Outcome } from "../api";
import type { KubeObject } from "../collection";
import { age, badge, fill, h } from "../dom";
import { collection, identityOf, outcomePanel, statePanel } from "../shared";
import { VirtualList } from "../virtual-list";

interface Subject {
  kind: string;
  name: string;
  namespace?: string;
}

interface BindingRef {
  binding: KubeObject;
  scope: string;
  via: string; // "directly" or "group system:serviceaccounts:ns"
}

interface RuleMatch {
  binding: string;
  role: string;
  subject: string;
  rule: string;
  why_not?: string;
}

interface Explanation {
  allowed: boolean;
  reason: string;
  matches: RuleMatch[];
  near_misses: RuleMatch[];
}

interface Grant {
  kind: string;
  name: string;
  binding: string;
  role: string;
}

interface RulesAnswer {
  bindings: { binding: string; role: string; subject: string; roleFound: boolean; rules: string[] }[];
}

const saKey = (ns: string, name: string) => `${ns}/${name}`;

/** Which bindings name each ServiceAccount, directly or through its groups. */
function bindingIndex(bindings: KubeObject[]): { direct: Map<string, BindingRef[]>; groups: Map<string, BindingRef[]> } {
  const direct = new Map<string, BindingRef[]>();
  const groups = new Map<string, BindingRef[]>();
  for (const binding of bindings) {
    const bindingNs = binding.metadata.namespace;
    const scope = bindingNs ? `namespace ${bindingNs}` : "cluster";
    for (const s of (binding.subjects ?? []) as Subject[]) {
      if (s.kind === "ServiceAccount") {
        const key = saKey(s.namespace || bindingNs || "", s.name);
        direct.set(key, [...(direct.get(key) ?? []), { binding, scope, via: "directly" }]);
      } else if (s.kind === "Group" && (s.name === "system:serviceaccounts" || s.name.startsWith("system:serviceaccounts:") || s.name === "system:authenticated")) {
        groups.set(s.name, [...(groups.get(s.name) ?? []), { binding, scope, via: `group ${s.name}` }]);
      }
    }
  }
  return { direct, groups };
}

function bindingsOf(index: ReturnType<typeof bindingIndex>, ns: string, name: string): BindingRef[] {
  return [
    ...(index.direct.get(saKey(ns, name)) ?? []),
    ...(index.groups.get(`system:serviceaccounts:${ns}`) ?? []),
    ...(index.groups.get("system:serviceaccounts") ?? []),
    ...(index.groups.get("system:authenticated") ?? []),
  ];
}

const WHO_CAN: { label: string; verb: string; resource: string }[] = [
  { label: "act as it (impersonate)", verb: "impersonate", resource: "serviceaccounts" },
  { label: "mint its tokens (create serviceaccounts/token)", verb: "create", resource: "serviceaccounts/token" },
  { label: "read it (get)", verb: "get", resource: "serviceaccounts" },
  { label: "change it (update)", verb: "update", resource: "serviceaccounts" },
  { label: "delete it", verb: "delete", resource: "serviceaccounts" },
];

export function mountAccounts(root: HTMLElement): () => void {
  const sas = collection("serviceaccounts");
  const namespaces = collection("namespaces");
  const rbs = collection("rolebindings");
  const crbs = collection("clusterrolebindings");

  let index = bindingIndex([]);
  let selected: KubeObject | null = null;

  const nsSelect = h("select", { id: "ns-filter", onChange: () => refreshList() }, h("option", { value: "" }, "All namespaces"));
  const filter = h("input", { id: "sa-filter", type: "search", placeholder: "name contains…", autocomplete: "off", onInput: () => refreshList() });
  const count = h("span", { class: "muted", role: "status", "aria-live": "polite", id: "sa-count" });
  const listHost = h("div", { class: "list-host" });
  // Scrolls on its own (and so takes focus) while the list stays in view.
  const details = h("section", { class: "details", id: "sa-details", "aria-label": "ServiceAccount details", tabindex: 0 });

  const list = new VirtualList<KubeObject>({
    label: "ServiceAccounts",
    rowHeight: 44,
    key: (sa) => saKey(sa.metadata.namespace ?? "", sa.metadata.name),
    render: (sa) => {
      const n = bindingsOf(index, sa.metadata.namespace ?? "", sa.metadata.name).filter((b) => b.via === "directly").length;
      return [
        h("span", { class: "row-name" }, sa.metadata.name),
        h("span", { class: "row-ns muted" }, sa.metadata.namespace ?? ""),
        h("span", { class: "row-count muted" }, n === 1 ? "1 binding" : `${n} bindings`),
      ];
    },
    onSelect: (sa) => {
      selected = sa;
      renderDetails(true);
    },
  });

  root.append(
    h("h1", { id: "view-title", tabindex: -1 }, "ServiceAccounts"),
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "ns-filter" }, "Namespace "),
      nsSelect,
      h("label", { for: "sa-filter" }, "Filter "),
      filter,
      count,
    ),
    h("div", { class: "split" }, listHost, details),
  );
  listHost.append(list.element);
  fill(details, h("p", { class: "muted" }, "Select a ServiceAccount (arrow keys or click) to see its bindings, permissions and who can act on it."));

  function refreshNamespaces(): void {
    const names = new Set<string>();
    for (const ns of namespaces.items.values()) names.add(ns.metadata.name);
    // Without the right to list namespaces, the accounts' own namespaces still filter.
    for (const sa of sas.items.values()) if (sa.metadata.namespace) names.add(sa.metadata.namespace);
    const current = nsSelect.value;
    const options = [...names].sort();
    if (options.join("\n") === [...nsSelect.options].slice(1).map((o) => o.value).join("\n")) return;
    fill(nsSelect, h("option", { value: "" }, "All namespaces"), ...options.map((n) => h("option", { value: n }, n)));
    nsSelect.value = options.includes(current) ? current : "";
  }

  function refreshList(): void {
    const panel = statePanel(sas.state, sas.what);
    listHost.replaceChildren(panel ?? list.element);
    if (panel) {
      count.textContent = "";
      return;
    }
    const ns = nsSelect.value;
    const needle = filter.value.trim().toLowerCase();
    const items = [...sas.items.values()]
      .filter((sa) => (!ns || sa.metadata.namespace === ns) && (!needle || sa.metadata.name.toLowerCase().includes(needle)))
      .sort((a, b) => (a.metadata.namespace ?? "").localeCompare(b.metadata.namespace ?? "") || a.metadata.name.localeCompare(b.metadata.name));
    list.setItems(items);
    count.textContent = `${items.length} of ${sas.items.size} ServiceAccounts`;
    // A selected account that was deleted is gone from the details too.
    if (selected && !sas.items.has(saKey(selected.metadata.namespace ?? "", selected.metadata.name))) {
      selected = null;
      fill(details, h("p", { class: "muted" }, "The selected ServiceAccount was deleted."));
    }
  }

  function refreshBindings(): void {
    index = bindingIndex([...rbs.items.values(), ...crbs.items.values()]);
    refreshList();
    renderDetails(false);
  }

  // Server answers for the selected account; refetched when bindings change.
  const bindingsSection = h("section", { "aria-labelledby": "bindings-h" });
  const rulesSection = h("section", { "aria-labelledby": "rules-h" });
  const explainSection = h("section", { "aria-labelledby": "explain-h" });
  const whoSection = h("section", { "aria-labelledby": "who-h" });
  let lastExplain: { verb: string; resource: string; name: string; namespace: string } | null = null;
  let fetchTimer: number | undefined;
  let generation = 0;

  function renderDetails(newSelection: boolean): void {
    if (!selected) return;
    const ns = selected.metadata.namespace ?? "";
    const name = selected.metadata.name;
    if (newSelection) {
      lastExplain = null;
      fill(
        details,
        h("h2", { id: "sa-title" }, `ServiceAccount ${ns}/${name}`),
        h(
          "p",
          { class: "muted" },
          `user system:serviceaccount:${ns}:${name} · mesh identity ${identityOf(ns, name)} · age ${age(selected.metadata.creationTimestamp)}`,
        ),
        bindingsSection,
        explainSection,
        whoSection,
        rulesSection,
      );
      renderExplainForm(ns, name);
      fill(rulesSection, h("h3", { id: "rules-h" }, "Effective permissions"), h("p", { class: "muted", role: "status" }, "Loading…"));
      fill(whoSection, h("h3", { id: "who-h" }, "Who can act as or on it"), h("p", { class: "muted", role: "status" }, "Loading…"));
    }
    renderBindings(ns, name);
    // Server calls: debounced (arrowing through the list asks nothing until
    // it rests on an account), and dropped when the selection moved on.
    window.clearTimeout(fetchTimer);
    const mine = ++generation;
    fetchTimer = window.setTimeout(() => void fetchServerViews(ns, name, mine), newSelection ? 120 : 150);
  }

  function renderBindings(ns: string, name: string): void {
    const panels = [statePanel(rbs.state, rbs.what), statePanel(crbs.state, crbs.what)].filter(Boolean) as HTMLElement[];
    const refs = bindingsOf(index, ns, name);
    fill(
      bindingsSection,
      h("h3", { id: "bindings-h" }, "Bindings"),
      panels,
      refs.length === 0
        ? h("p", { class: "muted" }, "No RoleBinding or ClusterRoleBinding names this ServiceAccount or its groups.")
        : h(
            "table",
            { class: "grid", id: "bindings-table" },
            h("caption", { class: "sr-only" }, `Bindings of ${ns}/${name}`),
            h("thead", {}, h("tr", {}, ["Binding", "Role", "Scope", "Subject"].map((c) => h("th", { scope: "col" }, c)))),
            h(
              "tbody",
              {},
              refs.map((r) =>
                h(
                  "tr",
                  {},
                  h("td", {}, `${r.binding.kind ?? (r.binding.metadata.namespace ? "RoleBinding" : "ClusterRoleBinding")} ${r.binding.metadata.name}`),
                  h("td", {}, `${r.binding.roleRef?.kind} ${r.binding.roleRef?.name}`),
                  h("td", {}, r.scope),
                  h("td", {}, r.via),
                ),
              ),
            ),
          ),
    );
  }

  async function fetchServerViews(ns: string, name: string, mine: number): Promise<void> {
    const user = `system:serviceaccount:${ns}:${name}`;
    const [rules, ...who] = await Promise.all([
      post<RulesAnswer>("/tessera/v1/rbac/rules", { user, namespace: ns }),
      ...WHO_CAN.map((q) => post<{ grants: Grant[] }>("/tessera/v1/rbac/who-can", { verb: q.verb, resource: q.resource, namespace: ns, name })),
    ]);
    if (mine !== generation) return;
    renderRules(rules);
    renderWhoCan(who);
    if (lastExplain) await runExplain(ns, name, mine);
  }

  function renderRules(rules: Outcome<RulesAnswer>): void {
    fill(rulesSection, h("h3", { id: "rules-h" }, "Effective permissions"));
    if (rules.kind !== "ok") {
      rulesSection.append(outcomePanel(rules.kind, rules.message, "read effective permissions (post /tessera/v1/rbac/rules)"));
      return;
    }
    const bindings = rules.value.bindings;
    if (bindings.length === 0) {
      rulesSection.append(h("p", { class: "muted" }, "None: no binding grants this ServiceAccount anything here."));
      return;
    }
    rulesSection.append(
      h(
        "ul",
        { class: "rules", id: "rules-list" },
        bindings.map((b) =>
          h(
            "li",
            {},
            // Collapsed: the bootstrap roles alone are pages of rules.
            h(
              "details",
              {},
              h(
                "summary",
                {},
                h("strong", {}, b.binding),
                ` → ${b.role} · ${b.rules.length === 1 ? "1 rule" : `${b.rules.length} rules`} · subject ${b.subject}`,
                b.roleFound ? null : [" ", badge("warning", "role does not exist")],
              ),
              h("ul", {}, b.rules.map((r) => h("li", {}, h("code", {}, r)))),
            ),
          ),
        ),
      ),
    );
  }

  function renderWhoCan(answers: Outcome<{ grants: Grant[] }>[]): void {
    fill(whoSection, h("h3", { id: "who-h" }, "Who can act as or on it"));
    const forbidden = answers.find((a) => a.kind !== "ok");
    if (forbidden) {
      whoSection.append(outcomePanel(forbidden.kind, forbidden.message, "ask who may act on it (post /tessera/v1/rbac/who-can)"));
      return;
    }
    whoSection.append(
      h(
        "table",
        { class: "grid", id: "who-table" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Who may"), h("th", { scope: "col" }, "Subjects (through binding → role)"))),
        h(
          "tbody",
          {},
          WHO_CAN.map((q, i) => {
            const a = answers[i];
            const grants = a.kind === "ok" ? a.value.grants : [];
            return h(
              "tr",
              {},
              h("th", { scope: "row" }, q.label),
              h("td", {}, h("ul", { class: "plain" }, grants.map((g) => h("li", {}, `${g.kind} ${g.name}`, h("span", { class: "muted" }, ` (${g.binding} → ${g.role})`))))),
            );
          }),
        ),
      ),
    );
  }

  const explainResult = h("div", { id: "explain-result", "aria-live": "polite" });

  function renderExplainForm(ns: string, name: string): void {
    const verb = h("input", { id: "explain-verb", value: "get", required: true, autocomplete: "off" });
    const resource = h("input", { id: "explain-resource", value: "pods", required: true, autocomplete: "off" });
    const objName = h("input", { id: "explain-name", value: "", autocomplete: "off" });
    const namespace = h("input", { id: "explain-namespace", value: ns, autocomplete: "off" });
    const form = h(
      "form",
      {
        class: "explain-form",
        onSubmit: (e: Event) => {
          e.preventDefault();
          lastExplain = { verb: verb.value.trim(), resource: resource.value.trim(), name: objName.value.trim(), namespace: namespace.value.trim() };
          void runExplain(ns, name, generation);
        },
      },
      h("label", { for: "explain-verb" }, "Verb"),
      verb,
      h("label", { for: "explain-resource" }, "Resource"),
      resource,
      h("label", { for: "explain-name" }, "Name"),
      objName,
      h("label", { for: "explain-namespace" }, "Namespace"),
      namespace,
      h("button", { type: "submit" }, "Explain"),
    );
    fill(explainResult);
    fill(explainSection, h("h3", { id: "explain-h" }, "Is it allowed? Explain"), form, explainResult);
  }

  async function runExplain(ns: string, name: string, mine: number): Promise<void> {
    if (!lastExplain) return;
    const q = lastExplain;
    const answer = await post<Explanation>("/tessera/v1/rbac/explain", {
      user: `system:serviceaccount:${ns}:${name}`,
      verb: q.verb,
      ...splitResource(q.resource),
      namespace: q.namespace,
      name: q.name,
    });
    if (mine !== generation) return;
    if (answer.kind !== "ok") {
      fill(explainResult, outcomePanel(answer.kind, answer.message, "explain decisions (post /tessera/v1/rbac/explain)"));
      return;
    }
    const e = answer.value;
    const asked = `${q.verb} ${q.resource}${q.name ? ` ${q.name}` : ""}${q.namespace ? ` in ${q.namespace}` : " cluster-wide"}`;
    fill(
      explainResult,
      h(
        "div",
        { class: `verdict ${e.allowed ? "allowed" : "denied"}`, "data-verdict": e.allowed ? "allowed" : "denied" },
        badge(e.allowed ? "allowed" : "denied", e.allowed ? "ALLOWED" : "DENIED"),
        " ",
        h("span", {}, asked),
        h("p", { class: "reason" }, e.reason || (e.allowed ? "" : "no rule allows it")),
        e.matches.length
          ? h("div", {}, h("h4", {}, "Matching rules"), ruleList(e.matches))
          : e.allowed
            ? null
            : e.near_misses.length
              ? h("div", {}, h("h4", {}, "Nearest rules, and why they do not apply"), ruleList(e.near_misses))
              : h("p", { class: "muted" }, "No binding names this ServiceAccount or its groups."),
      ),
    );
  }

  const unsubscribe = [
    sas.subscribe(() => {
      refreshNamespaces();
      refreshList();
    }),
    namespaces.subscribe(refreshNamespaces),
    rbs.subscribe(refreshBindings),
    crbs.subscribe(refreshBindings),
  ];
  refreshNamespaces();
  refreshBindings();
  return () => {
    window.clearTimeout(fetchTimer);
    unsubscribe.forEach((u) => u());
  };
}

/** As `tessera rbac`: `pods` → pods; `roles.rbac.authorization.k8s.io` → roles in that group; `/healthz` unchanged. */
function splitResource(resource: string): { resource: string; group: string } {
  if (resource.startsWith("/")) return { resource, group: "" };
  const [base, sub] = resource.split("/", 2);
  const dot = base.indexOf(".");
  const plural = dot < 0 ? base : base.slice(0, dot);
  const group = dot < 0 ? "" : base.slice(dot + 1);
  return { resource: sub ? `${plural}/${sub}` : plural, group };
}

function ruleList(rules: RuleMatch[]): HTMLElement {
  return h(
    "ul",
    { class: "rules" },
    rules.map((m) =>
      h(
        "li",
        {},
        h("strong", {}, m.binding),
        ` → ${m.role} (subject ${m.subject})`,
        m.rule ? h("div", {}, h("code", {}, m.rule)) : null,
        m.why_not ? h("div", { class: "why-not" }, `why not: ${m.why_not}`) : null,
      ),
    ),
  );
}
