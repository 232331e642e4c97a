//! The JWKS reviewer under attack, on tokio's paused clock: the shared attack
//! list with its exact reasons, key-id floods, negative caching, rotations.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use tessera_token::attacks::{AUDIENCE, Issuer};
use tessera_token::key::PublicKey;

use super::*;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NOW: i64 = 1_800_000_000;

struct Key {
    pair: EcdsaKeyPair,
    public: PublicKey,
    kid: String,
}

impl Key {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = PublicKey::Es256 { point: pair.public_key().as_ref().to_vec() };
        Self { pair, public, kid: kid.to_owned() }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.pair.sign(&SystemRandom::new(), input).unwrap().as_ref().to_vec()
    }

    /// A good token for `data-store`, signed by this key under `kid`.
    fn token_as(&self, kid: &str) -> String {
        let sign = |input: &[u8]| self.sign(input);
        let issuer = Issuer { issuer: ISSUER, kid, public_key: &self.public, sign: &sign, service_account_uid: "uid-1", now: NOW };
        issuer.good_token()
    }

    fn token(&self) -> String {
        self.token_as(&self.kid)
    }
}

/// A JWKS endpoint in memory: counts fetches, can be slow or down.
#[derive(Default)]
struct Source {
    doc: Mutex<Value>,
    fetches: AtomicUsize,
    delay: Mutex<Duration>,
    down: AtomicBool,
}

impl Source {
    fn publish(&self, keys: &[&Key]) {
        *self.doc.lock().unwrap() = PublicKeys::new(keys.iter().map(|k| (k.kid.clone(), k.public.clone())).collect()).to_jwks();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl JwksSource for Arc<Source> {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Value, ReviewError>> + Send + '_>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(ReviewError::Unavailable("connection refused".into()));
            }
            Ok(self.doc.lock().unwrap().clone())
        })
    }
}

/// A fallback that counts what reaches it and accepts nothing.
#[derive(Default)]
struct CountingFallback {
    calls: Arc<AtomicUsize>,
}

impl Reviewer for CountingFallback {
    fn review<'a>(&'a self, _: &'a str, _: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(ReviewOutcome::Rejected("fallback".into())) })
    }
}

fn reviewer(keys: &[&Key]) -> (Arc<JwksReviewer<Arc<Source>>>, Arc<Source>, Arc<AtomicUsize>) {
    let source = Arc::new(Source::default());
    source.publish(keys);
    let fallback = CountingFallback::default();
    let calls = fallback.calls.clone();
    let reviewer = JwksReviewer::new(source.clone(), ISSUER, Duration::from_secs(300)).with_fallback(fallback);
    (Arc::new(reviewer), source, calls)
}

fn random_kid() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).unwrap();
    B64.encode(bytes)
}

async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

const NO_KEYS: &str = "invalid signature, no keys found";

#[tokio::test(start_paused = true)]
async fn every_verifier_attack_gets_its_rejection() {
    let key = Key::new("k1");
    let sign = |input: &[u8]| key.sign(input);
    let issuer = Issuer { issuer: ISSUER, kid: "k1", public_key: &key.public, sign: &sign, service_account_uid: "uid-1", now: NOW };
    let source = Arc::new(Source::default());
    source.publish(&[&key]);
    let r = JwksReviewer::new(source.clone(), ISSUER, Duration::from_secs(300));
    for attack in issuer.attacks() {
        let outcome = r.review_at(&attack.token, AUDIENCE, NOW).await.unwrap();
        assert_eq!(outcome, ReviewOutcome::Rejected(attack.rejection.to_string()), "{}", attack.name);
    }
    for token in [issuer.good_token(), issuer.token_without_iat()] {
        let outcome = r.review_at(&token, AUDIENCE, NOW).await.unwrap();
        assert_eq!(
            outcome,
            ReviewOutcome::Authenticated(UserInfo {
                username: "system:serviceaccount:api:api".into(),
                uid: "uid-1".into(),
                groups: vec!["system:serviceaccounts".into(), "system:serviceaccounts:api".into(), "system:authenticated".into()],
                extra: [("authentication.kubernetes.io/credential-id".to_owned(), vec!["JTI=5a3b1c2d-0000-4000-8000-000000000001".to_owned()])].into(),
            })
        );
    }
    assert_eq!(source.fetches(), 1, "keys are cached");
}

#[tokio::test(start_paused = true)]
async fn other_issuers_go_to_the_fallback_and_unknown_kids_do_not() {
    let key = Key::new("k1");
    let (r, _, fallback_calls) = reviewer(&[&key]);
    let sign = |input: &[u8]| key.sign(input);
    let issuer = Issuer { issuer: "https://other.example", kid: "k1", public_key: &key.public, sign: &sign, service_account_uid: "u", now: NOW };
    assert_eq!(r.review_at(&issuer.good_token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Rejected("fallback".into()));
    assert_eq!(fallback_calls.load(Ordering::SeqCst), 1);
    assert_eq!(r.review_at(&key.token_as("k2"), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Rejected(NO_KEYS.into()));
    assert_eq!(fallback_calls.load(Ordering::SeqCst), 1, "an unknown kid never costs a TokenReview");
}

/// The attack of the review: 48 clients with random key ids, for six seconds
/// (four rounds a second). One fetch a second at most; nothing reaches the fallback.
#[tokio::test(start_paused = true)]
async fn random_kids_from_48_clients_cost_one_fetch_a_second() {
    let key = Key::new("k1");
    let (r, source, fallback_calls) = reviewer(&[&key]);
    let stranger = Key::new("stranger");
    for _round in 0..24 {
        let clients: Vec<_> = (0..48)
            .map(|_| {
                let (r, token) = (r.clone(), stranger.token_as(&random_kid()));
                tokio::spawn(async move { r.review_at(&token, AUDIENCE, NOW).await })
            })
            .collect();
        for client in clients {
            assert_eq!(client.await.unwrap().unwrap(), ReviewOutcome::Rejected(NO_KEYS.into()));
        }
        advance(250).await;
    }
    // Fetches at 0 s (the first), 1, 2, 3, 4 and 5 s: 1,152 requests, 6 fetches.
    assert_eq!(source.fetches(), 6);
    assert_eq!(fallback_calls.load(Ordering::SeqCst), 0);
    assert!(matches!(r.review_at(&key.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_is_remembered_and_costs_no_fetch() {
    let key = Key::new("k1");
    let (r, source, _) = reviewer(&[&key]);
    let stranger = Key::new("x");
    assert!(matches!(r.review_at(&key.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
    advance(1500).await;
    // A fetch after the token arrived lacks "x": refused and remembered.
    assert_eq!(r.review_at(&stranger.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Rejected(NO_KEYS.into()));
    assert_eq!(source.fetches(), 2);
    // The rate limit would allow a fetch now; the memory of "x" makes it unneeded.
    for _ in 0..4 {
        advance(1100).await;
        assert_eq!(r.review_at(&stranger.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Rejected(NO_KEYS.into()));
    }
    assert_eq!(source.fetches(), 2);
    // Once forgotten (5 s), "x" is looked for again, once.
    advance(700).await;
    r.review_at(&stranger.token(), AUDIENCE, NOW).await.unwrap();
    r.review_at(&stranger.token(), AUDIENCE, NOW).await.unwrap();
    assert_eq!(source.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_rotated_key_is_found_on_its_first_token() {
    let (old, new, newer) = (Key::new("k1"), Key::new("k2"), Key::new("k3"));
    let (r, source, _) = reviewer(&[&old]);
    assert!(matches!(r.review_at(&old.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
    source.publish(&[&old, &new]);
    advance(1100).await;
    assert!(matches!(r.review_at(&new.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
    assert_eq!(source.fetches(), 2);
    // A key published right after a fetch: its first token is refused by the
    // rate limit, but not remembered as unknown, so a second later it passes.
    source.publish(&[&old, &new, &newer]);
    advance(100).await;
    assert_eq!(r.review_at(&newer.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Rejected(NO_KEYS.into()));
    advance(1000).await;
    assert!(matches!(r.review_at(&newer.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
    assert_eq!(source.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn requests_wait_for_the_fetch_in_flight_instead_of_starting_another() {
    let (old, new) = (Key::new("k1"), Key::new("k2"));
    let (r, source, _) = reviewer(&[&old]);
    *source.delay.lock().unwrap() = Duration::from_millis(200);
    r.review_at(&old.token(), AUDIENCE, NOW).await.unwrap();
    source.publish(&[&old, &new]);
    advance(1500).await;
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (r, token) = (r.clone(), new.token());
            tokio::spawn(async move { r.review_at(&token, AUDIENCE, NOW).await })
        })
        .collect();
    for client in clients {
        assert!(matches!(client.await.unwrap().unwrap(), ReviewOutcome::Authenticated(_)));
    }
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_jwks_fails_the_review_only_while_there_are_no_keys() {
    let key = Key::new("k1");
    let (r, source, _) = reviewer(&[&key]);
    source.down.store(true, Ordering::SeqCst);
    let err = r.review_at(&key.token(), AUDIENCE, NOW).await.unwrap_err();
    assert_eq!(err, ReviewError::Unavailable("connection refused".into()));
    // Within the second, no new fetch: refused at once.
    assert_eq!(
        r.review_at(&key.token(), AUDIENCE, NOW).await.unwrap_err(),
        ReviewError::Unavailable("the issuer's JWKS has not been fetched yet".into())
    );
    assert_eq!(source.fetches(), 1);
    source.down.store(false, Ordering::SeqCst);
    advance(1000).await;
    assert!(matches!(r.review_at(&key.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
    // Down again when the periodic refresh is due: the keys fetched before still verify.
    source.down.store(true, Ordering::SeqCst);
    advance(301_000).await;
    assert!(matches!(r.review_at(&key.token(), AUDIENCE, NOW).await.unwrap(), ReviewOutcome::Authenticated(_)));
    assert_eq!(source.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn remembered_kids_are_hashed_and_bounded() {
    let key = Key::new("k1");
    let (r, _, _) = reviewer(&[&key]);
    let stranger = Key::new("x");
    // Key ids of 8 KiB: remembering one costs its hash, within the budget.
    for i in 0..20 {
        advance(1000).await;
        let kid = format!("{i:08}{}", "k".repeat(8 * 1024));
        r.review_at(&stranger.token_as(&kid), AUDIENCE, NOW).await.unwrap();
        assert!(r.unknown_kids.bytes() <= UNKNOWN_KIDS_BYTES);
    }
    assert_eq!(r.unknown_kids.len(), 20);
    assert!(r.unknown_kids.bytes() / 20 < 256, "{} bytes for 20 key ids of 8 KiB", r.unknown_kids.bytes());
}
