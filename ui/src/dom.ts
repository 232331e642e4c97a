// A tiny element builder: the dashboard needs no UI library.

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | number | boolean | null | undefined | ((e: any) => void)>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(key.replace(/^on/, "").toLowerCase(), value);
    else if (key === "class") el.className = String(value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

/** Replaces an element's content. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** A status shown as a word and a symbol, never as colour alone. */
export function badge(kind: "allowed" | "denied" | "forbidden" | "warning" | "ok" | "info", text: string): HTMLElement {
  const symbol = { allowed: "✔", denied: "✘", forbidden: "✘", warning: "⚠", ok: "●", info: "ℹ" }[kind];
  return h("span", { class: `badge badge-${kind}` }, h("span", { "aria-hidden": "true" }, symbol), " ", text);
}

/** Relative age as kubectl prints it (`5m`, `3h`, `12d`). */
export function age(timestamp: string | undefined, now = Date.now()): string {
  if (!timestamp) return "?";
  const seconds = Math.max(0, Math.floor((now - Date.parse(timestamp)) / 1000));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}
