//! Tap: a live view of the requests through this proxy, as `linkerd viz tap`
//! shows them.
//!
//! Inbound and outbound publish one event when a request's headers go
//! through and one when its response's headers come back ([`TapHub::request`],
//! then [`TapSpan::response`]). Events go out on a `tokio::sync::broadcast`
//! channel: with no one tapping, publishing is one atomic load and nothing
//! is built; a tap client that falls behind loses the oldest events, never
//! slows the data path.
//!
//! `GET /tap` on the admin port ([`TapServer::serve`]) streams the events as
//! JSON lines to callers the API authorizes: the caller's own bearer token
//! asks the API server, through a SelfSubjectAccessReview, whether it may
//! `watch` `pods/tap` in the API group `tap.linkerd.io` for this pod (what
//! Linkerd's tap API server checks). The proxy needs no permission of its
//! own, and never reuses its token for the caller.

mod authz;
mod hub;
mod server;

pub use authz::{ApiEndpoint, ApiError, Authorization, TapAuthorizer};
pub use hub::{TapDenial, TapDirection, TapEvent, TapHub, TapKind, TapRequest, TapSpan};
pub use server::{DEFAULT_MAX_STREAMS, TapBody, TapServer, router};

/// The `tls` of a tap event: `true`, or why not, as the metrics' `no_tls_reason`.
pub fn tls_label(tls: crate::metrics::Tls) -> &'static str {
    use crate::metrics::Tls;
    match tls {
        Tls::Established => "true",
        Tls::NoTlsFromRemote => "no_tls_from_remote",
        Tls::NotProvidedByServiceDiscovery => "not_provided_by_service_discovery",
        Tls::NoIdentityYet => "no_identity_yet",
    }
}
