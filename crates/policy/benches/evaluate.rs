//! Compiling and evaluating a pod's inbound policy with 50 Servers and 500
//! authorizations in its namespace (issue 16), against an empty policy; the
//! fixture is described in `fixture.rs`.

#![allow(missing_docs)]

mod fixture;

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fixture::{CLIENT, INTRUDER, fixture, pod, resources};
use tessera_policy::compile::{Settings, compile};
use tessera_policy::{Client, HttpRequestInfo, PodInboundPolicy, Verdict};

fn bench(c: &mut Criterion) {
    let objects = fixture();
    let authorizations = objects.iter().filter(|o| matches!(o["kind"].as_str(), Some("AuthorizationPolicy" | "ServerAuthorization"))).count();
    let servers = objects.iter().filter(|o| o["kind"] == "Server").count();
    assert_eq!((servers, authorizations), (50, 500));
    let resources = resources(&objects);
    let settings = Settings::default();
    let none = BTreeMap::new();
    let selected = pod(&[("app", "backend")]);
    let policy: PodInboundPolicy = compile(&selected, &none, &resources, &settings);
    assert_eq!(policy.ports.len(), 50);
    assert_eq!(policy.ports.iter().map(|p| p.authorizations.len()).sum::<usize>(), 500);
    // The same pod, selected by no Server: the default policy (all-unauthenticated).
    let empty = compile(&pod(&[("app", "plain")]), &none, &resources, &settings);
    assert!(empty.ports.is_empty());

    let headers = http::HeaderMap::new();
    let get = HttpRequestInfo { method: "GET", path: "/", headers: &headers };
    let client = Client { identity: Some(CLIENT.into()), addr: "127.0.0.1".parse().expect("address") };
    let intruder = Client { identity: Some(INTRUDER.into()), addr: "127.0.0.1".parse().expect("address") };

    let allowed = policy.decide(8080, &client, Some(&get));
    assert_eq!(allowed.verdict, Verdict::Allow);
    assert_eq!(allowed.authorization, Some(("AuthorizationPolicy".into(), "web-zz".into())));
    let trace = policy.evaluate(8080, &client, Some(&get)).trace;
    assert_eq!(trace.iter().filter(|l| l.starts_with("ServerAuthorization/") || l.starts_with("AuthorizationPolicy/")).count(), 10, "{trace:#?}");
    assert_eq!(policy.decide(8080, &intruder, Some(&get)).verdict, Verdict::Deny);
    assert_eq!(empty.decide(8080, &client, Some(&get)).verdict, Verdict::Allow);

    c.bench_function("policy/compile/50-servers-500-authz", |b| b.iter(|| compile(black_box(&selected), &none, black_box(&resources), &settings)));
    c.bench_function("policy/compile/no-server-selects", |b| b.iter(|| compile(black_box(&pod(&[("app", "plain")])), &none, black_box(&resources), &settings)));
    c.bench_function("policy/decide/500-authz/allowed-by-last", |b| b.iter(|| black_box(policy.decide(black_box(8080), &client, Some(&get)))));
    c.bench_function("policy/decide/500-authz/denied", |b| b.iter(|| black_box(policy.decide(black_box(8080), &intruder, Some(&get)))));
    c.bench_function("policy/decide/empty/allowed-by-default", |b| b.iter(|| black_box(empty.decide(black_box(8080), &client, Some(&get)))));
    let addr = client.addr;
    assert!(policy.decide_borrowed(8080, Some(CLIENT), addr, Some(&get)).allowed());
    c.bench_function("policy/decide_borrowed/500-authz/allowed-by-last", |b| {
        b.iter(|| black_box(policy.decide_borrowed(black_box(8080), Some(CLIENT), addr, Some(&get))))
    });
    c.bench_function("policy/decide_borrowed/500-authz/denied", |b| {
        b.iter(|| black_box(policy.decide_borrowed(black_box(8080), Some(INTRUDER), addr, Some(&get))))
    });
    c.bench_function("policy/decide_borrowed/empty/allowed-by-default", |b| {
        b.iter(|| black_box(empty.decide_borrowed(black_box(8080), Some(CLIENT), addr, Some(&get))))
    });
    c.bench_function("policy/evaluate-with-trace/500-authz/allowed-by-last", |b| b.iter(|| black_box(policy.evaluate(black_box(8080), &client, Some(&get)))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
