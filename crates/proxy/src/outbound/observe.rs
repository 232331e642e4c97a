//! The outbound label set (linkerd2-proxy's) for an endpoint, recorded
//! through [`crate::metrics::Metrics`].

use crate::destination::{Endpoint, ServiceRef};
use crate::metrics::{DstLabels, PeerLabels, Tls};

/// Labels of traffic to `ep`: `tls="true"` and `server_id` for a meshed
/// endpoint (the connection only exists if the peer proved that identity),
/// `tls="no_identity"` with Linkerd's reason for a plain-text one.
pub(crate) fn peer_labels(ep: &Endpoint, service: Option<&ServiceRef>) -> PeerLabels {
    let tls = if ep.identity.is_some() {
        Tls::Established
    } else {
        Tls::NotProvidedByServiceDiscovery
    };
    let dst = DstLabels {
        namespace: ep.namespace.clone(),
        pod: ep.pod.clone(),
        serviceaccount: ep.service_account.clone(),
        service: service.map(|s| s.name.clone()),
    };
    PeerLabels::outbound(ep.address.to_string(), tls, ep.identity.clone(), dst)
}
