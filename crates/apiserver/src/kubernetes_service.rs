//! The `default/kubernetes` Service kube-apiserver creates: the first
//! address of the service range, port 443 (`https`) leading to this server,
//! and its EndpointSlice `kubernetes`. Created when missing, by every
//! replica at start (the first one to start wins; the slice lists its address).

use serde_json::json;
use tessera_api::registry::WriteOptions;
use tessera_api::resource::{CORE_SERVICES, DISCOVERY_ENDPOINTSLICES};
use tessera_api::{ApiError, Registry};

/// Creates the Service and its EndpointSlice if they do not exist.
pub(crate) async fn ensure(registry: &Registry, port: u16, host: &str) -> Result<(), ApiError> {
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": registry.service_cidr().first().to_string(), "type": "ClusterIP", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    create_if_missing(registry.create(&CORE_SERVICES, Some("default"), service, WriteOptions::default()).await, "Service")?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    create_if_missing(registry.create(&DISCOVERY_ENDPOINTSLICES, Some("default"), slice, WriteOptions::default()).await, "EndpointSlice")
}

fn create_if_missing(result: Result<serde_json::Value, ApiError>, kind: &str) -> Result<(), ApiError> {
    match result {
        Ok(_) => {
            tracing::info!(kind, "created default/kubernetes");
            Ok(())
        }
        Err(e) if e.code == 409 => Ok(()),
        // Someone holds the first address (a Service created before this one): not fatal.
        Err(e) if e.code == 422 => {
            tracing::warn!(kind, error = %e.message, "could not create default/kubernetes");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
