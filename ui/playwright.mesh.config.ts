import { defineConfig } from "@playwright/test";
import base from "./playwright.config";

// The mesh views (edges, denials, expiry, 200 synthetic edges), run by
// crates/cli/tests/dashboard_mesh.rs against a server with meshed pods.
export default defineConfig({ ...base, testDir: "tests-mesh" });
