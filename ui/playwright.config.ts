import { defineConfig } from "@playwright/test";

// Run by crates/cli/tests/dashboard.rs against a real `tessera server`
// (TESSERA_UI_URL and the tokens come from that test). Debian's chromium,
// never a browser Playwright downloads.
export default defineConfig({
  testDir: "tests",
  fullyParallel: false,
  workers: 1,
  retries: 0,
  timeout: 30_000,
  expect: { timeout: 10_000 },
  reporter: [["list"]],
  outputDir: "test-results",
  use: {
    baseURL: process.env.TESSERA_UI_URL,
    ignoreHTTPSErrors: true, // the server's certificate is signed by its own CA
    viewport: { width: 1280, height: 860 },
    launchOptions: {
      executablePath: process.env.TESSERA_CHROMIUM ?? "/usr/bin/chromium",
      // As root (CI, containers) Chromium's sandbox cannot start.
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    },
  },
});
