// A real denial crates/cli/tests/dashboard_denials.rs made: other/other-0
// asked the data store for GET /data and the data store's proxy refused it
// (Server data-store-http admits only the api through AuthorizationPolicy
// api-only). ServiceAccounts: dashboard-admin (cluster-admin) and
// mesh-viewer (pods + get pods/proxy, but no list servers: cannot explain).

import { expect, test } from "@playwright/test";
import { env, signIn } from "../tests/helpers";

const OTHER = "other.other.serviceaccount.identity.linkerd.cluster.local";

test("the denial appears with the client, the request, the reason and the rule that decided", async ({ page }) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.request().method()} ${r.url()}: ${r.status()}`));
  await signIn(page, env("TESSERA_ADMIN_TOKEN"), "graph");
  const section = page.locator("#recent-denials");
  await expect(section).toHaveAttribute("data-state", "denials");
  const row = page.locator("#recent-denials-table tbody tr", { hasText: OTHER }).first();
  const cells = row.locator("th, td");
  await expect(cells.nth(0)).toContainText("✘ DENIED");
  await expect(cells.nth(1)).toContainText(OTHER);
  await expect(cells.nth(2)).toHaveText("data-store/data-store-0:8081");
  await expect(cells.nth(3)).toHaveText("GET /data");
  await expect(cells.nth(4)).toHaveText("unauthorized request on route");
  // The rule that decided, from policy explain: a word and a symbol, then every rule looked at.
  const explain = cells.nth(5).locator("details.explain");
  await expect(explain).toHaveAttribute("data-state", "explained");
  const summary = explain.locator("summary");
  await expect(summary).toContainText("✘ DENIED by Server data-store-http: no authorization matched");
  const trace = explain.locator("ol.trace");
  await expect(trace).toBeHidden();
  // Keyboard: the summary is focusable and Enter opens the trace.
  await summary.focus();
  await page.keyboard.press("Enter");
  await expect(trace).toBeVisible();
  await expect(trace).toContainText(`client ${OTHER} at`);
  await expect(trace).toContainText("requests GET /data on port 8081 of pod data-store/data-store-0");
  await expect(trace).toContainText("port 8081: selected by Server data-store-http");
  await expect(trace).toContainText(`AuthorizationPolicy/api-only: identity not matched: ${OTHER} is not in [api.api.serviceaccount.identity.linkerd.cluster.local]`);
  await expect(trace).toContainText("verdict: denied: unauthorized request on route");
  await expect(trace.getByRole("listitem").last()).toContainText("✘");
  await page.locator("#graph-denials").scrollIntoViewIfNeeded();
  await page.locator("#graph-denials").screenshot({ path: `${env("TESSERA_SCREENSHOT_DIR")}/denials-explained.png` });
  expect(errors).toEqual([]);
});

test("a user who may read the proxies but not explain policy sees forbidden beside the denial", async ({ page }) => {
  await signIn(page, env("TESSERA_VIEWER_TOKEN"), "graph");
  const row = page.locator("#recent-denials-table tbody tr", { hasText: OTHER }).first();
  await expect(row).toContainText("unauthorized request on route");
  const cell = row.locator("td").last();
  const forbidden = cell.locator('[data-state="forbidden"]');
  await expect(forbidden).toContainText("✘ Forbidden");
  await expect(forbidden).toContainText("may not explain policy (list servers.policy.linkerd.io in namespace data-store)");
  await expect(forbidden).toContainText('cannot list resource "servers" in API group "policy.linkerd.io" in the namespace "data-store"');
  await expect(page.locator('#recent-denials [data-state="error"]')).toHaveCount(0);
});
