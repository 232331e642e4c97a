//! Sign and verify costs of ServiceAccount tokens, per algorithm.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_authn::jwt::Algorithm;
use tessera_authn::keys::{KeySet, SigningKey};
use tessera_authn::token::{BoundTokenSpec, ObjectLookup, Review, ReviewCache, SecretInfo, TokenAuthority, TokenConfig};

struct OneAccount;

impl ObjectLookup for OneAccount {
    fn service_account_uid(&self, _: &str, _: &str) -> Option<String> {
        Some("uid-1".into())
    }
    fn pod_uid(&self, _: &str, _: &str) -> Option<String> {
        None
    }
    fn secret(&self, _: &str, _: &str) -> Option<SecretInfo> {
        None
    }
    fn epoch(&self) -> u64 {
        0
    }
}

fn spec() -> BoundTokenSpec {
    BoundTokenSpec {
        namespace: "api".into(),
        service_account: "api".into(),
        service_account_uid: "uid-1".into(),
        audiences: vec!["data-store".into()],
        expiration_seconds: 3600,
        bound: None,
    }
}

fn bench(c: &mut Criterion) {
    let now = 1_800_000_000;
    let audiences = vec!["data-store".to_owned()];
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let (key, _) = SigningKey::generate(alg, 1).expect("key");
        let authority = TokenAuthority::new(
            TokenConfig { issuer: "https://issuer".into(), api_audiences: vec!["https://issuer".into()], max_lifetime_seconds: 86400 },
            KeySet::new(vec![key]),
        );
        let token = authority.issue_bound(&spec(), now).expect("issue").token;
        c.bench_function(&format!("{}/sign", alg.as_str()), |b| b.iter(|| authority.issue_bound(&spec(), now).expect("issue")));
        c.bench_function(&format!("{}/review-uncached", alg.as_str()), |b| {
            b.iter(|| assert!(matches!(authority.review(&token, Some(&audiences), &OneAccount, now), Review::Authenticated(_))))
        });
        let cache = ReviewCache::new(10, 16 << 20);
        c.bench_function(&format!("{}/review-cached", alg.as_str()), |b| {
            b.iter(|| assert!(matches!(*cache.review(&authority, &token, Some(&audiences), &OneAccount, now), Review::Authenticated(_))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
