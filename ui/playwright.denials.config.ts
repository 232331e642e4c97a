import { defineConfig } from "@playwright/test";
import base from "./playwright.config";

// A real policy denial and its explain trace, run by
// crates/cli/tests/dashboard_denials.rs against a server with meshed pods.
export default defineConfig({ ...base, testDir: "tests-denials" });
