//! Authorization metrics with linkerd2-proxy's names and labels:
//! `inbound_http_authz_allow_total`, `inbound_http_authz_deny_total`,
//! `inbound_tcp_authz_allow_total`, `inbound_tcp_authz_deny_total`.
//!
//! Labels in Linkerd's order: `target_addr`, `target_ip`, `target_port`,
//! `srv_group`, `srv_kind`, `srv_name`, then (HTTP) `route_group`,
//! `route_kind`, `route_name`, then (allow) `authz_group`, `authz_kind`,
//! `authz_name`, then `tls` and `client_id` (or `no_tls_reason`). Linkerd's
//! deny series carry no `authz_*` (nothing authorized). A Server is
//! `srv_group="policy.linkerd.io",srv_kind="server"`; a port no Server
//! selects is `srv_group="",srv_kind="default",srv_name=<default policy>`;
//! authorizations are `serverauthorization` / `authorizationpolicy`, or
//! `default` when the default policy allowed; a request no HTTPRoute
//! matched is on Linkerd's synthetic route `default`/`default`.
//!
//! `audit` allows and counts the request as allowed (as Linkerd does) and
//! also in tessera's `inbound_http_authz_would_deny_total` /
//! `inbound_tcp_authz_would_deny_total` (same labels as deny), so a
//! would-be denial is visible before the policy is enforced.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelKey, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::Tls;

/// One `*_group`, `*_kind`, `*_name` triple.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Meta {
    /// `policy.linkerd.io`, or empty for defaults.
    pub group: Arc<str>,
    /// `server`, `serverauthorization`, `authorizationpolicy`, `HTTPRoute`, `default`.
    pub kind: Arc<str>,
    /// The resource's name (or the default's).
    pub name: Arc<str>,
}

impl Meta {
    /// A `policy.linkerd.io` resource.
    pub fn resource(kind: &str, name: &str) -> Self {
        Self { group: "policy.linkerd.io".into(), kind: kind.into(), name: name.into() }
    }

    /// A default (`group=""`, `kind="default"`).
    pub fn default_named(name: &str) -> Self {
        Self { group: "".into(), kind: "default".into(), name: name.into() }
    }
}

/// The labels of one authorization series.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AuthzLabels {
    /// The address the client connected to.
    pub target_addr: SocketAddr,
    /// The Server (or default).
    pub server: Meta,
    /// The route (HTTP only).
    pub route: Option<Meta>,
    /// The authorization (allow only).
    pub authz: Option<Meta>,
    /// The connection's TLS state.
    pub tls: Tls,
    /// The client's identity (mTLS).
    pub client_id: Option<Arc<str>>,
}

fn label(encoder: &mut LabelSetEncoder<'_>, key: &str, value: &str) -> fmt::Result {
    let mut label = encoder.encode_label();
    let mut key_encoder = label.encode_label_key()?;
    EncodeLabelKey::encode(&key, &mut key_encoder)?;
    let mut value_encoder = key_encoder.encode_label_value()?;
    EncodeLabelValue::encode(&value, &mut value_encoder)?;
    value_encoder.finish()
}

fn meta(encoder: &mut LabelSetEncoder<'_>, prefix: &str, meta: &Meta) -> fmt::Result {
    label(encoder, &format!("{prefix}_group"), &meta.group)?;
    label(encoder, &format!("{prefix}_kind"), &meta.kind)?;
    label(encoder, &format!("{prefix}_name"), &meta.name)
}

impl EncodeLabelSet for AuthzLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(encoder, "target_addr", &self.target_addr.to_string())?;
        label(encoder, "target_ip", &self.target_addr.ip().to_string())?;
        label(encoder, "target_port", &self.target_addr.port().to_string())?;
        meta(encoder, "srv", &self.server)?;
        if let Some(route) = &self.route {
            meta(encoder, "route", route)?;
        }
        if let Some(authz) = &self.authz {
            meta(encoder, "authz", authz)?;
        }
        label(encoder, "tls", self.tls.value())?;
        if let Some(reason) = self.tls.reason() {
            label(encoder, "no_tls_reason", reason)?;
        }
        if let Some(client_id) = &self.client_id {
            label(encoder, "client_id", client_id)?;
        }
        Ok(())
    }
}

/// What was decided, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Allowed by `audit` although the policy would deny.
    AuditDeny,
    /// HTTP: denied because no HTTPRoute of the Server matched (404).
    RouteNotFound,
}

/// The authorization families (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct AuthzMetrics {
    http_allow: Family<AuthzLabels, Counter>,
    http_deny: Family<AuthzLabels, Counter>,
    http_would_deny: Family<AuthzLabels, Counter>,
    http_route_not_found: Family<AuthzLabels, Counter>,
    tcp_allow: Family<AuthzLabels, Counter>,
    tcp_deny: Family<AuthzLabels, Counter>,
    tcp_would_deny: Family<AuthzLabels, Counter>,
}

impl AuthzMetrics {
    /// Registers the families in the proxy's registry.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "inbound_http_authz_allow",
            "The total number of inbound HTTP requests that were authorized",
            metrics.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "The total number of inbound HTTP requests that could not be processed due to a proxy error.",
            metrics.http_deny.clone(),
        );
        registry.register(
            "inbound_http_authz_would_deny",
            "Inbound HTTP requests the audit policy allowed that the policy would have denied",
            metrics.http_would_deny.clone(),
        );
        registry.register(
            "inbound_http_route_not_found",
            "The total number of inbound HTTP requests that could not be associated with a route",
            metrics.http_route_not_found.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "The total number of inbound TCP connections that were authorized",
            metrics.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "The total number of inbound TCP connections that were denied",
            metrics.tcp_deny.clone(),
        );
        registry.register(
            "inbound_tcp_authz_would_deny",
            "Inbound TCP connections the audit policy allowed that the policy would have denied",
            metrics.tcp_would_deny.clone(),
        );
        metrics
    }

    /// Counts one HTTP request's decision. Deny series drop `authz_*`.
    pub fn http(&self, outcome: Outcome, mut labels: AuthzLabels) {
        if outcome == Outcome::RouteNotFound {
            // Server labels only, as Linkerd's `inbound_http_route_not_found_total`.
            labels.route = None;
            labels.authz = None;
            self.http_route_not_found.get_or_create(&labels).inc();
            return;
        }
        self.count(outcome, labels, [&self.http_allow, &self.http_deny, &self.http_would_deny]);
    }

    /// The `inbound_http_authz_allow_total` series of `labels`, to count
    /// into directly (a handle on the same counter the family holds).
    pub fn http_allow_counter(&self, labels: &AuthzLabels) -> Counter {
        self.http_allow.get_or_create(labels).clone()
    }

    /// Counts one TCP connection's decision (no `route_*`).
    pub fn tcp(&self, outcome: Outcome, mut labels: AuthzLabels) {
        labels.route = None;
        self.count(outcome, labels, [&self.tcp_allow, &self.tcp_deny, &self.tcp_would_deny]);
    }

    fn count(&self, outcome: Outcome, mut labels: AuthzLabels, [allow, deny, would_deny]: [&Family<AuthzLabels, Counter>; 3]) {
        match outcome {
            Outcome::Allow => {
                allow.get_or_create(&labels).inc();
            }
            Outcome::Deny | Outcome::RouteNotFound => {
                labels.authz = None;
                deny.get_or_create(&labels).inc();
            }
            Outcome::AuditDeny => {
                allow.get_or_create(&labels).inc();
                labels.authz = None;
                would_deny.get_or_create(&labels).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_linkerds_labels_in_linkerds_order() {
        let mut registry = Registry::default();
        let metrics = AuthzMetrics::register(&mut registry);
        let labels = |authz: Option<Meta>, tls: Tls, client_id: Option<&str>| AuthzLabels {
            target_addr: "127.1.0.2:8081".parse().unwrap(),
            server: Meta::resource("server", "data-store-http"),
            route: Some(Meta::default_named("default")),
            authz,
            tls,
            client_id: client_id.map(Arc::from),
        };
        let api = Some("api.api.serviceaccount.identity.linkerd.cluster.local");
        metrics.http(Outcome::Allow, labels(Some(Meta::resource("authorizationpolicy", "api-only")), Tls::Established, api));
        metrics.http(Outcome::Deny, labels(Some(Meta::resource("authorizationpolicy", "ignored")), Tls::NoTlsFromRemote, None));
        metrics.tcp(Outcome::Deny, labels(None, Tls::Established, api));
        metrics.tcp(Outcome::AuditDeny, labels(Some(Meta::default_named("audit")), Tls::Established, api));
        metrics.http(Outcome::RouteNotFound, labels(None, Tls::Established, api));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let target = r#"target_addr="127.1.0.2:8081",target_ip="127.1.0.2",target_port="8081",srv_group="policy.linkerd.io",srv_kind="server",srv_name="data-store-http""#;
        let route = r#"route_group="",route_kind="default",route_name="default""#;
        let api = r#"tls="true",client_id="api.api.serviceaccount.identity.linkerd.cluster.local""#;
        for line in [
            format!(
                r#"inbound_http_authz_allow_total{{{target},{route},authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="api-only",{api}}} 1"#
            ),
            format!(r#"inbound_http_authz_deny_total{{{target},{route},tls="no_identity",no_tls_reason="no_tls_from_remote"}} 1"#),
            format!(r#"inbound_tcp_authz_deny_total{{{target},{api}}} 1"#),
            format!(r#"inbound_tcp_authz_allow_total{{{target},authz_group="",authz_kind="default",authz_name="audit",{api}}} 1"#),
            format!(r#"inbound_tcp_authz_would_deny_total{{{target},{api}}} 1"#),
            format!(r#"inbound_http_route_not_found_total{{{target},{api}}} 1"#),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
