// The tessera dashboard: sign in with a bearer token (kept for this tab in
// sessionStorage) or a client certificate, then three views that follow the
// API's watches.

import "./style.css";
import { post, setToken, token } from "./api";
import { badge, fill, h } from "./dom";
import { stopAll } from "./shared";
import { mountAccounts } from "./views/accounts";
import { mountExpiry } from "./views/expiry";
import { mountGraph } from "./views/graph";

const CERT_MODE = "tessera.client-certificate";
const VIEWS: Record<string, { title: string; mount: (root: HTMLElement) => () => void }> = {
  accounts: { title: "ServiceAccounts", mount: mountAccounts },
  graph: { title: "Identity graph", mount: mountGraph },
  expiry: { title: "Expiry timeline", mount: mountExpiry },
};

const app = document.getElementById("app") as HTMLElement;
let unmount: (() => void) | null = null;

function signedIn(): boolean {
  return token() !== null || sessionStorage.getItem(CERT_MODE) === "1";
}

function signOut(): void {
  unmount?.();
  unmount = null;
  stopAll();
  setToken(null);
  sessionStorage.removeItem(CERT_MODE);
  renderLogin();
}

function renderLogin(message?: string): void {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", spellcheck: "false", required: true });
  fill(
    app,
    h(
      "main",
      { class: "login", id: "main" },
      h("h1", {}, "tessera dashboard"),
      h("p", {}, "Sign in with your own credentials: everything shown is what your RBAC lets you read."),
      message ? h("div", { class: "panel error", role: "alert" }, badge("denied", "Not signed in"), h("p", {}, message)) : null,
      h(
        "form",
        {
          onSubmit: (e: Event) => {
            e.preventDefault();
            setToken(input.value.trim());
            void start();
          },
        },
        h("label", { for: "token" }, "Bearer token (kept in this tab only)"),
        input,
        h("button", { type: "submit" }, "Sign in"),
      ),
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          onClick: () => {
            sessionStorage.setItem(CERT_MODE, "1");
            void start();
          },
        },
        "Use my browser's client certificate",
      ),
    ),
  );
  input.focus();
}

async function start(): Promise<void> {
  // Who the server says we are: a bad token is caught here, before any view.
  const review = await post<any>("/apis/authentication.k8s.io/v1/selfsubjectreviews", {
    apiVersion: "authentication.k8s.io/v1",
    kind: "SelfSubjectReview",
  });
  if (review.kind === "unauthorized") {
    setToken(null);
    sessionStorage.removeItem(CERT_MODE);
    renderLogin(`The server refused these credentials: ${review.message}`);
    return;
  }
  const username = review.kind === "ok" ? (review.value?.status?.userInfo?.username ?? "?") : "(cannot review own identity)";
  const main = h("main", { id: "main", tabindex: -1 });
  const nav = h(
    "nav",
    { "aria-label": "Views" },
    h(
      "ul",
      {},
      Object.entries(VIEWS).map(([id, v]) => h("li", {}, h("a", { href: `#/${id}`, id: `nav-${id}` }, v.title))),
    ),
  );
  fill(
    app,
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "tessera"),
      nav,
      h("span", { class: "whoami", id: "whoami" }, "Signed in as ", h("strong", {}, username)),
      h("button", { type: "button", class: "secondary", onClick: signOut }, "Sign out"),
    ),
    main,
  );
  route(main, false);
  window.onhashchange = () => route(main, true);
}

function route(main: HTMLElement, focus: boolean): void {
  const id = location.hash.replace(/^#\//, "") || "accounts";
  const view = VIEWS[id] ?? VIEWS.accounts;
  unmount?.();
  main.replaceChildren();
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    if (a.id === `nav-${id in VIEWS ? id : "accounts"}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${view.title} · tessera`;
  unmount = view.mount(main);
  // Keyboard and screen-reader users land on the new view's heading.
  if (focus) document.getElementById("view-title")?.focus();
}

if (signedIn()) void start();
else renderLogin();
