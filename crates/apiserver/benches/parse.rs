//! The cost of the one parse every request goes through: the paths of the
//! hot review endpoints and a list with selectors, as clients send them.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use tessera_apiserver::request::parse;

fn bench(c: &mut Criterion) {
    let cases = [
        ("tokenreview", Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews", None),
        ("subjectaccessreview", Method::POST, "/apis/authorization.k8s.io/v1/subjectaccessreviews", None),
        ("list-with-selectors", Method::GET, "/api/v1/namespaces/default/secrets", Some("fieldSelector=metadata.name%3Dmine&labelSelector=app%3Dweb&limit=500")),
        ("named-watch", Method::GET, "/api/v1/watch/namespaces/default/secrets/mine", Some("resourceVersion=12345&timeoutSeconds=300")),
    ];
    for (name, method, path, query) in cases {
        c.bench_function(&format!("parse/{name}"), |b| b.iter(|| parse(&method, std::hint::black_box(path), query)));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
