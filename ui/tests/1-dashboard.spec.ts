// The dashboard against a real server, on data the Rust test created with
// kubectl: namespace `shop`, ServiceAccount `web` bound to the ClusterRole
// `view` by RoleBinding `web-view`, a legacy token Secret, a meshed pod.

import { expect, test } from "@playwright/test";
import { env, kubectl, screenshot, signIn } from "./helpers";

test("a ServiceAccount, its binding, permissions, explain and who-can", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.request().method()} ${r.url()}: ${r.status()}`));
  page.on("pageerror", (e) => errors.push(String(e)));
  await signIn(page, env("TESSERA_ADMIN_TOKEN"));
  await expect(page.locator("#whoami")).toContainText("system:serviceaccount:shop:dashboard-admin");

  // Keyboard only: filter, then move into the list and select with the arrows.
  await page.getByLabel("Filter").fill("web");
  const list = page.getByRole("listbox", { name: "ServiceAccounts" });
  await expect(list.getByRole("option", { name: /^web\s+shop/ })).toBeVisible();
  await list.focus();
  await page.keyboard.press("Home");
  await expect(page.locator("#sa-title")).toHaveText("ServiceAccount shop/web");
  const bindings = page.locator("#bindings-table");
  await expect(bindings).toContainText("RoleBinding web-view");
  await expect(bindings).toContainText("ClusterRole view");
  await expect(page.locator("#rules-list")).toContainText('RoleBinding "web-view/shop"');
  await expect(page.locator("#who-table")).toContainText("Group system:masters");
  await expect(page.locator("#who-table")).toContainText("ServiceAccount shop/dashboard-admin");

  // Explain: allowed with the matching rule, then a denial with the near misses.
  await page.getByLabel("Verb").fill("list");
  await page.getByLabel("Resource").fill("pods");
  await page.getByRole("button", { name: "Explain" }).click();
  const verdict = page.locator("#explain-result .verdict");
  await expect(verdict).toHaveAttribute("data-verdict", "allowed");
  await expect(verdict).toContainText("ALLOWED");
  await expect(verdict).toContainText('RoleBinding "web-view/shop"');
  await page.getByLabel("Verb").fill("delete");
  await page.getByRole("button", { name: "Explain" }).click();
  await expect(verdict).toHaveAttribute("data-verdict", "denied");
  await expect(verdict).toContainText("DENIED");
  await expect(verdict).toContainText("why not");
  await screenshot(page, "accounts");

  // A binding added with kubectl shows up without a reload, as does its effect on explain.
  await page.evaluate(() => ((window as any).__notReloaded = true));
  kubectl("create", "rolebinding", "web-edit", "-n", "shop", "--clusterrole=edit", "--serviceaccount=shop:web");
  await expect(bindings).toContainText("RoleBinding web-edit");
  await expect(bindings).toContainText("ClusterRole edit");
  await expect(verdict).toHaveAttribute("data-verdict", "allowed");
  expect(await page.evaluate(() => (window as any).__notReloaded)).toBe(true);
  expect(errors).toEqual([]);
});

test("identity graph: meshed pods as nodes, honest empty states for edges and denials", async ({ page }) => {
  await signIn(page, env("TESSERA_ADMIN_TOKEN"), "graph");
  await expect(page.locator("#nav-graph")).toHaveAttribute("aria-current", "page");
  // web-1 is annotated as meshed but runs no proxy (no admin port, not Running).
  await expect(page.locator("#graph-edges")).toHaveAttribute("data-state", "empty");
  await expect(page.locator("#graph-edges")).toContainText("No proxies yet");
  await expect(page.locator("#graph-denials")).toContainText("No proxies yet");
  await expect(page.locator("#graph-nodes")).toContainText("web.shop.serviceaccount.identity.linkerd.cluster.local");
  await expect(page.locator("#graph-nodes")).toContainText("Pod shop/web-1");
  await screenshot(page, "graph");
});

test("expiry timeline: the legacy token never expires", async ({ page }) => {
  await signIn(page, env("TESSERA_ADMIN_TOKEN"), "expiry");
  const row = page.locator("#legacy-table tr", { hasText: "shop/web-legacy-token" });
  await expect(row).toContainText("never expires");
  await expect(row).toContainText("web");
  await expect(page.locator("#expiry-keys")).toContainText("published signing key");
  const inventory = await page.request.get("/tessera/v1/expiry", { headers: { Authorization: `Bearer ${env("TESSERA_ADMIN_TOKEN")}` } });
  await expect(page.locator("#expiry-server")).toHaveAttribute("data-state", inventory.status() === 200 ? /^(items|empty)$/ : "not-available");
  await screenshot(page, "expiry");
});

test("a token without RBAC rights sees forbidden states naming what it cannot read", async ({ page }) => {
  await signIn(page, env("TESSERA_NOBODY_TOKEN"));
  await expect(page.locator("#whoami")).toContainText("system:serviceaccount:shop:nobody");
  const forbidden = page.locator('[data-state="forbidden"]').first();
  await expect(forbidden).toContainText("Forbidden");
  await expect(forbidden).toContainText("may not list serviceaccounts in all namespaces");
  await expect(forbidden).toContainText('cannot list resource "serviceaccounts"');
  await expect(page.locator('[data-state="error"]')).toHaveCount(0);
  await screenshot(page, "forbidden");
  await page.locator("#nav-graph").click();
  await expect(page.locator("#graph-nodes [data-state=forbidden]")).toContainText("may not list pods in all namespaces");
  await expect(page.locator("#graph-edges")).toHaveAttribute("data-state", "forbidden");
  await page.locator("#nav-expiry").click();
  await expect(page.locator("#expiry-legacy [data-state=forbidden]")).toContainText("may not list secrets in all namespaces");
  await expect(page.locator("#expiry-server")).toHaveAttribute("data-state", "forbidden");
  await expect(page.locator('[data-state="error"]')).toHaveCount(0);
});

test("a bad token is refused at sign-in", async ({ page }) => {
  await page.goto("/ui/");
  await page.getByLabel("Bearer token (kept in this tab only)").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toContainText("The server refused these credentials");
});
