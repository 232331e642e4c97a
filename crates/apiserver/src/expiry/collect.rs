//! Gathers the timeline from what the server holds: its own PKI, the token
//! signing keys, Secrets, the trust bundle ConfigMap and the meshed pods
//! (whose proxies are asked for their leaves, all at once).

use std::net::SocketAddr;

use jiff::Timestamp;
use serde_json::Value;
use tessera_api::Registry;
use tessera_api::registry::ListParams;
use tessera_api::resource::{CORE_CONFIGMAPS, CORE_PODS, CORE_SECRETS};
use tessera_authn::keys::KeySet;

use super::item::{Item, Kind};
use super::{Settings, Timeline, certs, proxies};

/// The trust bundle ConfigMap (in the control namespace) and its key.
pub const TRUST_ROOTS_CONFIGMAP: &str = "tessera-identity-trust-roots";
/// Key of the PEM bundle in it.
pub const TRUST_ROOTS_KEY: &str = "ca-bundle.crt";
/// Secret type of legacy ServiceAccount tokens.
pub const LEGACY_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming the proxy's admin port on a meshed pod.
pub const ADMIN_PORT_ANNOTATION: &str = "tessera.io/proxy-admin-port";

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn created(obj: &Value) -> Option<i64> {
    str_at(obj, "/metadata/creationTimestamp").parse::<Timestamp>().ok().map(Timestamp::as_second)
}

fn items_of(list: &Value) -> &[Value] {
    list.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// The server's serving certificate and the cluster CA.
pub fn own_pki(settings: &Settings, timeline: &mut Timeline) {
    let sources = [
        (
            Kind::ServingCertificate,
            &settings.serving_cert_pem,
            "tessera server (pki/serving.crt; replace the file and restart)",
        ),
        (
            Kind::ClientCa,
            &settings.ca_cert_pem,
            "tessera server (pki/ca.crt: signs the serving certificate, verifies client certificates)",
        ),
    ];
    for (kind, pem, owner) in sources {
        match certs::items(kind, pem, owner) {
            Ok(items) => timeline.items.extend(items),
            Err(e) => timeline.notes.push(format!("{}: {e}", kind.as_str())),
        }
    }
}

/// The token signing keys: the one in use never expires (judged by its age);
/// a retired one verifies until its last token can have expired.
pub fn signing_keys(keys: &KeySet, max_token_lifetime: i64, now: i64) -> Vec<Item> {
    let keys = keys.keys();
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let retired = keys.get(i + 1).map(|next| next.created);
            let owner = "tessera server (data dir keys/; `tessera server keys rotate`)";
            let mut item = Item {
                not_before: Timestamp::from_second(key.created).ok(),
                age_seconds: Some(now - key.created),
                ..Item::new(Kind::SigningKey, key.kid(), owner)
            };
            match retired {
                None => item.never_expires = true,
                Some(r) => item.not_after = Timestamp::from_second(r.saturating_add(max_token_lifetime)).ok(),
            }
            item
        })
        .collect()
}

/// Legacy ServiceAccount token Secrets: tokens that never expire.
pub fn legacy_tokens(secrets: &[Value], now: i64) -> Vec<Item> {
    secrets
        .iter()
        .filter(|s| str_at(s, "/type") == LEGACY_TOKEN_TYPE)
        .map(|s| {
            let sa = str_at(s, "/metadata/annotations/kubernetes.io~1service-account.name");
            let namespace = str_at(s, "/metadata/namespace");
            Item {
                namespace: Some(namespace.to_owned()),
                age_seconds: created(s).map(|c| now - c),
                never_expires: true,
                warning: Some(
                    "legacy ServiceAccount token: never expires and is not bound to a pod; use TokenRequest (kubectl create token) and delete this Secret"
                        .to_owned(),
                ),
                ..Item::new(Kind::LegacyToken, str_at(s, "/metadata/name"), format!("ServiceAccount {namespace}/{sa}"))
            }
        })
        .collect()
}

/// A certificate-bearing Secret's certificate: cert-manager's `tls.crt`, or Linkerd's `crt.pem`.
fn secret_certificate(secret: &Value) -> Option<String> {
    use base64::Engine as _;
    ["tls.crt", "crt.pem"].iter().find_map(|key| {
        let encoded = secret.get("data")?.get(*key)?.as_str()?;
        let der = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        String::from_utf8(der).ok()
    })
}

async fn trust_anchors(registry: &Registry, settings: &Settings, timeline: &mut Timeline) {
    let ns = &settings.control_namespace;
    let owner = format!("trust bundle ConfigMap {ns}/{TRUST_ROOTS_CONFIGMAP} (`tessera identity rotate`)");
    match registry.get(&CORE_CONFIGMAPS, Some(ns), TRUST_ROOTS_CONFIGMAP).await {
        Ok(cm) => match cm
            .pointer("/data/ca-bundle.crt")
            .and_then(Value::as_str)
            .map(|pem| certs::items(Kind::TrustAnchor, pem, &owner))
        {
            Some(Ok(items)) => timeline.items.extend(items.into_iter().map(|i| Item {
                namespace: Some(ns.clone()),
                ..i
            })),
            Some(Err(e)) => timeline
                .notes
                .push(format!("trust anchors: {ns}/{TRUST_ROOTS_CONFIGMAP} key {TRUST_ROOTS_KEY}: {e}")),
            None => timeline
                .notes
                .push(format!("trust anchors: {ns}/{TRUST_ROOTS_CONFIGMAP} has no key {TRUST_ROOTS_KEY}")),
        },
        Err(e) if e.code == 404 => timeline.notes.push(format!(
            "trust anchors: no ConfigMap {ns}/{TRUST_ROOTS_CONFIGMAP} (anchors kept in files are not visible to the server)"
        )),
        Err(e) => timeline.notes.push(format!("trust anchors: {}", e.message)),
    }
}

fn issuer(secrets: &[Value], settings: &Settings, timeline: &mut Timeline) {
    let Some((ns, name)) = &settings.issuer_secret else {
        timeline
            .notes
            .push("issuer: not visible to the server (no --identity-issuer-secret); `tessera expiry --issuer-cert FILE` adds one kept in files".to_owned());
        return;
    };
    let secret = secrets
        .iter()
        .find(|s| str_at(s, "/metadata/namespace") == ns && str_at(s, "/metadata/name") == name);
    let Some(secret) = secret else {
        timeline.notes.push(format!("issuer: Secret {ns}/{name} not found"));
        return;
    };
    let owner = format!("issuer Secret {ns}/{name} (tessera identity)");
    match secret_certificate(secret)
        .ok_or(certs::CertError::Empty)
        .and_then(|pem| certs::items(Kind::Issuer, &pem, &owner))
    {
        // The Secret's first certificate is the issuer; the rest is its chain.
        Ok(mut items) => {
            items.truncate(1);
            timeline.items.extend(items.into_iter().map(|i| Item {
                namespace: Some(ns.clone()),
                ..i
            }));
        }
        Err(e) => timeline.notes.push(format!("issuer: Secret {ns}/{name}: {e}")),
    }
}

/// How many proxies are asked at once.
const PARALLEL_SCRAPES: usize = 32;

/// A meshed, running pod's proxy admin address. The IP and the Running
/// phase come from the pod's status, which only its node (or an admin)
/// writes; the port from an annotation the pod's author chose.
fn proxy_admin(pod: &Value) -> Option<SocketAddr> {
    if str_at(pod, "/metadata/annotations/linkerd.io~1inject") != "enabled" || str_at(pod, "/status/phase") != "Running" {
        return None;
    }
    let port: u16 = str_at(pod, "/metadata/annotations/tessera.io~1proxy-admin-port").parse().ok()?;
    let ip: std::net::IpAddr = str_at(pod, "/status/podIP").parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

async fn proxy_leaves(pods: &[Value]) -> Vec<Item> {
    let meshed: Vec<(&Value, SocketAddr)> = pods.iter().filter_map(|p| Some((p, proxy_admin(p)?))).collect();
    // At most PARALLEL_SCRAPES proxies at once, answers kept in pod order.
    let answers: Vec<_> = {
        use futures::StreamExt as _;
        let admins: Vec<SocketAddr> = meshed.iter().map(|(_, admin)| *admin).collect();
        futures::stream::iter(admins.into_iter().map(proxies::scrape)).buffered(PARALLEL_SCRAPES).collect().await
    };
    meshed
        .iter()
        .zip(answers)
        .map(|((pod, admin), answer)| {
            let (ns, name) = (str_at(pod, "/metadata/namespace"), str_at(pod, "/metadata/name"));
            let sa = str_at(pod, "/spec/serviceAccountName");
            let owner = format!("proxy of pod {ns}/{name} (ServiceAccount {sa}; renews from the identity CA)");
            let item = Item {
                namespace: Some(ns.to_owned()),
                ..Item::new(Kind::ProxyLeaf, name, owner)
            };
            match answer {
                Ok(leaf) => {
                    let owner = match leaf.issuer {
                        Some(issuer) => format!("{}, issuer {issuer}", item.owner),
                        None => item.owner.clone(),
                    };
                    Item {
                        not_after: Timestamp::from_second(leaf.not_after).ok(),
                        owner,
                        ..item
                    }
                }
                Err(e) => Item {
                    warning: Some(format!("leaf unknown: {e} (admin {admin})")),
                    ..item
                },
            }
        })
        .collect()
}

/// Everything, judged and sorted, at `now`. Lists come from the watch cache
/// (every minute for the gauges: no store reads, no decryption).
pub async fn collect(registry: &Registry, keys: &KeySet, settings: &Settings, now: i64) -> Timeline {
    let mut timeline = Timeline::default();
    own_pki(settings, &mut timeline);
    timeline.items.extend(signing_keys(keys, settings.max_token_lifetime_seconds, now));
    match registry.list_body(&CORE_SECRETS, None, &ListParams::default()).await.map(|l| l.into_value(&CORE_SECRETS)) {
        Ok(list) => {
            timeline.items.extend(legacy_tokens(items_of(&list), now));
            issuer(items_of(&list), settings, &mut timeline);
        }
        Err(e) => timeline.notes.push(format!("secrets: {}", e.message)),
    }
    trust_anchors(registry, settings, &mut timeline).await;
    match registry.list_body(&CORE_PODS, None, &ListParams::default()).await.map(|l| l.into_value(&CORE_PODS)) {
        Ok(list) => timeline.items.extend(proxy_leaves(items_of(&list)).await),
        Err(e) => timeline.notes.push(format!("pods: {}", e.message)),
    }
    timeline.items = timeline.items.into_iter().map(|i| i.judge(&settings.rules, now)).collect();
    super::item::sort(&mut timeline.items);
    timeline.now = Timestamp::from_second(now).ok();
    timeline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::item::human;
    use serde_json::json;

    #[test]
    fn legacy_token_secrets_are_flagged_with_their_age() {
        let now = 1_800_000_000;
        let secrets = [
            json!({"type": "kubernetes.io/service-account-token",
                   "metadata": {"name": "api-token", "namespace": "api", "creationTimestamp": "2027-01-14T08:00:00Z",
                                "annotations": {"kubernetes.io/service-account.name": "api"}}}),
            json!({"type": "Opaque", "metadata": {"name": "other", "namespace": "api"}}),
        ];
        let items = legacy_tokens(&secrets, now);
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(
            (item.kind, item.name.as_str(), item.namespace.as_deref()),
            (Kind::LegacyToken, "api-token", Some("api"))
        );
        assert_eq!(
            (item.age_seconds, item.never_expires, item.owner.as_str()),
            (Some(86400), true, "ServiceAccount api/api")
        );
        assert!(
            item.warning
                .as_deref()
                .is_some_and(|w| w.starts_with("legacy ServiceAccount token: never expires"))
        );
    }

    #[test]
    fn the_signing_key_in_use_never_expires_and_retired_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let alg = tessera_authn::jwt::Algorithm::ES256;
        KeySet::add(dir.path(), alg, 1000).unwrap();
        KeySet::add(dir.path(), alg, 5000).unwrap();
        let keys = KeySet::load(dir.path(), 6000, 3600).unwrap();
        let items = signing_keys(&keys, 3600, 6000);
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].never_expires, items[0].not_after.map(Timestamp::as_second)),
            (false, Some(5000 + 3600))
        );
        assert_eq!((items[1].never_expires, items[1].not_after, items[1].age_seconds), (true, None, Some(1000)));
    }

    #[test]
    fn only_running_meshed_pods_with_an_admin_port_are_asked() {
        let pod = |inject: &str, port: &str, phase: &str| {
            json!({"metadata": {"annotations": {"linkerd.io/inject": inject, "tessera.io/proxy-admin-port": port}},
                   "status": {"phase": phase, "podIP": "127.3.0.1"}})
        };
        assert_eq!(proxy_admin(&pod("enabled", "4191", "Running")), Some("127.3.0.1:4191".parse().unwrap()));
        assert_eq!(proxy_admin(&pod("disabled", "4191", "Running")), None);
        assert_eq!(proxy_admin(&pod("enabled", "x", "Running")), None);
        assert_eq!(proxy_admin(&pod("enabled", "4191", "Pending")), None);
    }

    #[test]
    fn an_issuer_secret_in_either_layout_is_read() {
        use base64::Engine as _;
        let now = jiff::Timestamp::now().as_second();
        let pem = certs::tests::generated("identity.linkerd.cluster.local", now - 60, now + 20 * 86400);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&pem);
        for key in ["tls.crt", "crt.pem"] {
            let secrets = [json!({"metadata": {"namespace": "linkerd", "name": "issuer"}, "data": {key: b64}})];
            let settings = Settings {
                issuer_secret: Some(("linkerd".into(), "issuer".into())),
                ..Settings::default()
            };
            let mut timeline = Timeline::default();
            issuer(&secrets, &settings, &mut timeline);
            assert_eq!(timeline.items.len(), 1, "{key}: {:?}", timeline.notes);
            let item = timeline.items[0].clone().judge(&settings.rules, now);
            assert_eq!((item.kind, item.name.as_str()), (Kind::Issuer, "identity.linkerd.cluster.local"));
            assert_eq!(item.warning.as_deref(), Some("expires within 60d0h (20d0h left)"));
        }
        let mut timeline = Timeline::default();
        issuer(&[], &Settings::default(), &mut timeline);
        assert!(timeline.notes[0].starts_with("issuer: not visible to the server"), "{:?}", timeline.notes);
    }

    #[test]
    fn human_durations() {
        assert_eq!(
            (human(42), human(125), human(3 * 3600 + 60), human(20 * 86400 + 7200)),
            ("42s".into(), "2m5s".into(), "3h1m".into(), "20d2h".into())
        );
    }
}
