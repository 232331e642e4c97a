import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import type { Page } from "@playwright/test";

export function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this suite through crates/cli/tests/dashboard.rs`);
  return v;
}

/** kubectl against the test's server (its admin kubeconfig). */
export function kubectl(...args: string[]): string {
  return execFileSync("kubectl", args, { env: { ...process.env, KUBECONFIG: env("TESSERA_KUBECONFIG") }, encoding: "utf8" });
}

export async function signIn(page: Page, token: string, view = "accounts"): Promise<void> {
  await page.goto(`/ui/#/${view}`);
  await page.getByLabel("Bearer token (kept in this tab only)").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#whoami").waitFor();
}

export async function screenshot(page: Page, name: string): Promise<void> {
  const dir = process.env.TESSERA_SCREENSHOT_DIR;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage: false });
}
