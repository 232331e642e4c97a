// Client certificates work too: the browser presents the admin's
// certificate (CN=admin, O=system:masters) and the page sends no token.

import { expect, test } from "@playwright/test";
import { env } from "./helpers";

test.use({
  clientCertificates: [{ origin: new URL(env("TESSERA_UI_URL")).origin, certPath: env("TESSERA_ADMIN_CERT"), keyPath: env("TESSERA_ADMIN_KEY") }],
});

test("signing in with the browser's client certificate", async ({ page }) => {
  await page.goto("/ui/");
  await page.getByRole("button", { name: "Use my browser's client certificate" }).click();
  await expect(page.locator("#whoami")).toHaveText("Signed in as admin");
  await page.getByLabel("Filter").fill("web");
  await expect(page.getByRole("listbox", { name: "ServiceAccounts" }).getByRole("option", { name: /^web\s+shop/ })).toBeVisible();
});
