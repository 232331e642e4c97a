//! The inbound proxy's per-request policy work (issue 16): `Enforcer::check_http`
//! and `allow_tcp` with the 50-Server / 500-authorization fixture of
//! `crates/policy/benches/fixture.rs` loaded (a request allowed by the last
//! authorization of its Server, and a denied one), against a policy no Server
//! of which selects the pod (the default policy decides). With `--policy off`
//! the proxy makes no such call at all: these times are the whole per-request
//! cost of enforcement, metrics included.

#![allow(missing_docs)]

#[path = "../../policy/benches/fixture.rs"]
mod fixture;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use tessera_proxy::metrics::Tls;
use tessera_proxy::policy::metrics::AuthzMetrics;
use tessera_proxy::policy::{AllowedSeries, Enforcer, Loaded, Peer, client};

fn enforcer(selected: bool) -> (Enforcer, Registry) {
    let policy = fixture::compiled(selected);
    let raw = serde_json::to_vec(&policy).expect("policy JSON");
    let loaded = Loaded::decode(&raw).expect("the policy decodes");
    let mut registry = Registry::default();
    let metrics = AuthzMetrics::register(&mut registry);
    let (tx, rx) = client::channel();
    tx.send_replace(Some(Arc::new(loaded)));
    // The receiver keeps the last value when the sender is gone.
    (Enforcer::new(rx, metrics), registry)
}

fn bench(c: &mut Criterion) {
    let (full, _r1) = enforcer(true);
    let (empty, _r2) = enforcer(false);
    let addr: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let target: SocketAddr = "127.1.0.22:8080".parse().expect("address");
    let client = Peer { addr, target, tls: Tls::Established, client_id: Some(fixture::CLIENT), series: None };
    let intruder = Peer { client_id: Some(fixture::INTRUDER), ..client };
    let get = http::Request::get("/").header("host", "127.1.0.22:8080").body(()).expect("request").into_parts().0;
    assert!(full.check_http(&client, &get).is_none(), "allowed");
    assert_eq!(full.check_http(&intruder, &get).map(|r| r.status()), Some(http::StatusCode::FORBIDDEN));
    assert!(empty.check_http(&client, &get).is_none(), "allowed by the default policy");

    c.bench_function("proxy/check_http/500-authz/allowed-by-last", |b| b.iter(|| black_box(full.check_http(black_box(&client), &get))));
    c.bench_function("proxy/check_http/empty/allowed-by-default", |b| b.iter(|| black_box(empty.check_http(black_box(&client), &get))));
    // What the inbound does: the connection keeps the series its requests count into.
    let (series_full, series_empty) = (AllowedSeries::default(), AllowedSeries::default());
    let (on_conn_full, on_conn_empty) = (Peer { series: Some(&series_full), ..client }, Peer { series: Some(&series_empty), ..client });
    c.bench_function("proxy/check_http/500-authz/allowed-by-last/connection-series", |b| {
        b.iter(|| black_box(full.check_http(black_box(&on_conn_full), &get)))
    });
    c.bench_function("proxy/check_http/empty/allowed-by-default/connection-series", |b| {
        b.iter(|| black_box(empty.check_http(black_box(&on_conn_empty), &get)))
    });
    c.bench_function("proxy/check_http/500-authz/denied", |b| b.iter(|| black_box(full.check_http(black_box(&intruder), &get))));
    c.bench_function("proxy/allow_tcp/500-authz/allowed-by-last", |b| b.iter(|| black_box(full.allow_tcp(black_box(&client)))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
