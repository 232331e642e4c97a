// The mesh views on real data crates/cli/tests/dashboard_mesh.rs created:
// pods api/api-0 and data-store/data-store-0 meshed, the api calling the
// data store through its proxy every 100 ms, ServiceAccounts mesh-viewer
// (pods + get pods/proxy), pod-lister (ClusterRole view: no pods/proxy) and
// dashboard-admin (cluster-admin).

import { expect, test } from "@playwright/test";
import { env, screenshot, signIn } from "../tests/helpers";

const EDGE = '[data-key="api/api-0→data-store/data-store-0"]';
const METRICS = "/api/v1/namespaces/data-store/pods/data-store-0:4191/proxy/metrics";

test("an edge appears SECURED between the meshed pods, with live numbers and no reload", async ({ page }) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.request().method()} ${r.url()}: ${r.status()}`));
  await signIn(page, env("TESSERA_VIEWER_TOKEN"), "graph");
  await expect(page.locator("#whoami")).toContainText("system:serviceaccount:default:mesh-viewer");
  const row = page.locator(`#edges-table tr${EDGE}`);
  await expect(row).toContainText("api.api.serviceaccount.identity.linkerd.cluster.local");
  await expect(row).toContainText("data-store.data-store.serviceaccount.identity.linkerd.cluster.local");
  // SECURED is a word and a symbol, not only a colour.
  const secured = row.locator("td").nth(4);
  await expect(secured).toHaveText("✔ SECURED");
  // Two polls make a rate: requests flowing, all successful, a p99 in ms.
  await expect(row.locator("td").nth(1)).toHaveText(/^\d+(\.\d+)? rps$/);
  await expect(row.locator("td").nth(2)).toHaveText("100%");
  await expect(row.locator("td").nth(3)).toHaveText(/^\d+(\.\d+)? ms$/);
  expect(Number((await row.locator("td").nth(1).textContent())!.split(" ")[0])).toBeGreaterThan(0);
  await expect(page.locator("#graph-edges")).toHaveAttribute("data-state", "edges");
  // Polling updates the page in place.
  await page.evaluate(() => ((window as any).__notReloaded = true));
  const before = await page.locator("#edges-updated").textContent();
  await expect(page.locator("#edges-updated")).not.toHaveText(before!);
  expect(await page.evaluate(() => (window as any).__notReloaded)).toBe(true);
  // The filter narrows by namespace, pod or identity.
  await page.getByLabel("Filter edges").fill("nothing-matches");
  await expect(page.locator("#edges-table tbody tr")).toHaveCount(0);
  await page.getByLabel("Filter edges").fill("data-store");
  await expect(row).toBeVisible();
  await page.locator("#graph-nodes").scrollIntoViewIfNeeded();
  await page.evaluate(() => window.scrollTo(0, 0));
  await screenshot(page, "edges");

  // Denials: what the proxies report, honestly.
  const metrics = await page.request.get(METRICS, { headers: { Authorization: `Bearer ${env("TESSERA_VIEWER_TOKEN")}` } });
  expect(metrics.status()).toBe(200);
  const denials = page.locator("#graph-denials");
  if ((await metrics.text()).includes("inbound_http_authz_")) {
    await expect(denials).toHaveAttribute("data-state", /^(none|denials)$/);
    // Each proxy's /denials is read too: nothing denied here (no policy selects these ports).
    await expect(page.locator("#recent-denials")).toHaveAttribute("data-state", "none");
  } else {
    await expect(denials).toHaveAttribute("data-state", "not-available");
    await expect(denials).toContainText("Not available yet");
    await expect(denials).toContainText("inbound_http_authz_deny_total");
  }
  await denials.screenshot({ path: `${process.env.TESSERA_SCREENSHOT_DIR}/denials.png` });
  expect(errors).toEqual([]);
});

test("a user without get pods/proxy sees a forbidden state, not an error", async ({ page }) => {
  await signIn(page, env("TESSERA_LISTER_TOKEN"), "graph");
  const edges = page.locator("#graph-edges");
  await expect(edges).toHaveAttribute("data-state", "forbidden");
  await expect(edges).toContainText("Forbidden");
  await expect(edges).toContainText("may not get pods/proxy in namespace");
  await expect(edges).toContainText('cannot get resource "pods/proxy"');
  await expect(edges.locator('[data-state="error"]')).toHaveCount(0);
  await expect(page.locator("#graph-denials")).toHaveAttribute("data-state", "forbidden");
  // Listing pods is allowed: the nodes are still there.
  await expect(page.locator("#graph-nodes")).toContainText("Pod api/api-0");
  await screenshot(page, "edges-forbidden");
});

test("expiry timeline: the server's inventory, or an honest not-available state", async ({ page }) => {
  const answer = await page.request.get("/tessera/v1/expiry", { headers: { Authorization: `Bearer ${env("TESSERA_ADMIN_TOKEN")}` } });
  await signIn(page, env("TESSERA_ADMIN_TOKEN"), "expiry");
  const timeline = page.locator("#expiry-server");
  if (answer.status() === 200) {
    const body = await answer.json();
    const items: any[] = Array.isArray(body) ? body : body.items;
    expect(items.length).toBeGreaterThan(0);
    await expect(timeline).toHaveAttribute("data-state", "items");
    const table = page.locator("#expiry-table");
    await expect(table).toContainText(items[0].name);
    // The meshed pods' proxy leaves, when the server sees them, are on the timeline with their expiry.
    const leaf = items.find((i) => i.kind === "proxy-leaf");
    if (leaf) {
      const row = table.locator("tr", { hasText: `proxy-leaf ${leaf.namespace ? `${leaf.namespace}/` : ""}${leaf.name}` });
      await expect(row).toContainText(leaf.notAfter);
      await expect(row).toContainText(/in \d+[mhd]/);
    }
  } else {
    expect(answer.status()).toBe(404);
    await expect(timeline).toHaveAttribute("data-state", "not-available");
    await expect(timeline).toContainText("Not available yet");
  }
  await screenshot(page, "expiry-timeline");
});
