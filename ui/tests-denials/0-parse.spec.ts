// The recent-denials parsing and the explain question, run in Node (no page).

import { expect, test } from "@playwright/test";
import { clientIp, explainPath, parseDenials } from "../src/mesh/denials";

test("a proxy's /denials becomes rows, each asking explain the same question", () => {
  const at = "2026-12-06T08:00:00.123Z";
  const body = {
    denials: [
      { at, protocol: "HTTP", client: { identity: "o.o.serviceaccount.identity.linkerd.cluster.local", address: "127.1.0.4:40000" }, port: 8081, method: "GET", path: "/a b", server: "ds-http", reason: "unauthorized request on route", verdict: "deny" },
      { at, protocol: "HTTP", client: { identity: "o.o.serviceaccount.identity.linkerd.cluster.local", address: "127.1.0.4:40000" }, port: 8081, method: "GET", path: "/a b", server: "ds-http", reason: "unauthorized request on route", verdict: "deny" },
      { at, protocol: "TCP", client: { identity: null, address: "[::1]:5000" }, port: 9000, server: "default:deny", reason: "unauthorized connection on default/deny", verdict: "deny" },
      { at: 7, reason: "not the contract's shape" },
    ],
  };
  const rows = parseDenials("ds", "ds-0", body);
  expect(rows.map((r) => r.key)).toEqual([
    `ds|ds-0|${at}|127.1.0.4:40000|8081|GET|/a b`,
    `ds|ds-0|${at}|127.1.0.4:40000|8081|GET|/a b#2`,
    `ds|ds-0|${at}|[::1]:5000|9000||`,
  ]);
  expect(explainPath(rows[0])).toBe(
    "/tessera/v1/policy/explain?namespace=ds&pod=ds-0&port=8081&from=o.o.serviceaccount.identity.linkerd.cluster.local&ip=127.1.0.4&method=GET&path=%2Fa+b",
  );
  expect(explainPath(rows[2])).toBe("/tessera/v1/policy/explain?namespace=ds&pod=ds-0&port=9000&from=unauthenticated&ip=%3A%3A1");
  expect([clientIp("10.0.0.1:1"), clientIp("[fe80::1]:443")]).toEqual(["10.0.0.1", "fe80::1"]);
  expect(parseDenials("ds", "ds-0", { nope: 1 })).toEqual([]);
});
