// The dashboard's Prometheus parser and edge arithmetic, run in Node (no page).

import { expect, test } from "@playwright/test";
import { Window, denialsOfPod, edgeStats, edgesOfPod, quantile } from "../src/mesh/edges";
import { parseMetrics, parseSample } from "../src/mesh/prom";

test("Prometheus samples, edges, p99 and denials from proxy metrics", () => {
  // The same cases as the Rust parser's test (tessera_proxy::exposition).
  const s = parseSample('request_total{direction="outbound",authority="a\\"b",dst_pod="x"} 3')!;
  expect([s.name, s.value, s.labels.authority, s.labels.dst_pod]).toEqual(["request_total", 3, 'a"b', "x"]);
  expect(parseSample("process_start_time_seconds 17.5")!.value).toBe(17.5);
  expect(parseSample("# TYPE request_total counter")).toBeNull();
  expect(parseSample('request_total{direction="out')).toBeNull();
  expect(parseSample('response_latency_ms_bucket{le="+Inf"} 4')!.value).toBe(4);

  const page = (n: number) =>
    parseMetrics(`
tcp_open_total{direction="outbound",tls="true",server_id="ds.ds.serviceaccount.identity.linkerd.cluster.local",dst_namespace="ds",dst_pod="ds-0"} 1
request_total{direction="outbound",tls="true",dst_namespace="ds",dst_pod="ds-0"} ${100 * n}
response_total{direction="outbound",tls="true",dst_namespace="ds",dst_pod="ds-0",status_code="200",classification="success"} ${99 * n}
response_total{direction="outbound",tls="true",dst_namespace="ds",dst_pod="ds-0",status_code="500",classification="failure"} ${n}
response_latency_ms_bucket{direction="outbound",tls="true",dst_namespace="ds",dst_pod="ds-0",le="10"} ${90 * n}
response_latency_ms_bucket{direction="outbound",tls="true",dst_namespace="ds",dst_pod="ds-0",le="100"} ${100 * n}
response_latency_ms_bucket{direction="outbound",tls="true",dst_namespace="ds",dst_pod="ds-0",le="+Inf"} ${100 * n}
request_total{direction="outbound",tls="no_identity",dst_namespace="legacy",dst_pod="legacy-0"} 1
request_total{direction="outbound",tls="true",dst_namespace="idle",dst_pod="idle-0"} 0
request_total{direction="inbound",tls="true",client_id="x"} 9
inbound_http_authz_deny_total{srv_group="policy.linkerd.io",srv_kind="server",srv_name="ds-http",route_name="default",target_addr="127.1.0.2:8081",client_id=""} ${n}
`);
  const window = new Window<any>();
  const first = edgesOfPod("api", "api-0", "api.api.serviceaccount.identity.linkerd.cluster.local", page(1));
  expect([...first.keys()].sort()).toEqual(["api/api-0→ds/ds-0", "api/api-0→legacy/legacy-0"]);
  const e1 = edgeStats(first.get("api/api-0→ds/ds-0")!, "k", 0, window);
  expect([e1.secured, e1.rps, e1.success, e1.dstIdentity]).toEqual([true, null, null, "ds.ds.serviceaccount.identity.linkerd.cluster.local"]);
  const e2 = edgeStats(edgesOfPod("api", "api-0", "i", page(3)).get("api/api-0→ds/ds-0")!, "k", 2000, window);
  expect(e2.rps).toBe(100); // 200 requests in 2 s
  expect(e2.success).toBeCloseTo(0.99);
  expect(e2.p99).toBeCloseTo(91); // rank 198 of 200: 10 + 90 * (198 - 180) / 20
  expect(edgeStats(first.get("api/api-0→legacy/legacy-0")!, "l", 0, window).secured).toBe(false);
  expect(quantile(0.99, new Map())).toBeNull();

  const d = denialsOfPod("ds", "ds-0", page(2));
  expect(d.policyMetrics).toBe(true);
  expect([...d.denials.values()].map((x) => [x.client, x.server, x.authorization, x.total])).toEqual([["(no identity)", "server/ds-http", "no authorization on server/ds-http matched", 2]]);
  expect(denialsOfPod("ds", "ds-0", parseMetrics("request_total 1\n")).policyMetrics).toBe(false);
});
