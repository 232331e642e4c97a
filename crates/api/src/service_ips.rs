//! Cluster IP allocation from `--service-cluster-ip-range` (kube's default
//! `10.96.0.0/12`), safe across restarts and replicas sharing one store.
//!
//! # Design
//! Each allocated IP is one store key, `/registry/tessera.io/serviceips/IP`,
//! created with the store's create-if-absent: two replicas (or two requests)
//! that pick the same IP cannot both win, and the loser tries another (or,
//! for an IP the client asked for, gets kube's 422 `provided IP is already
//! allocated`). The key records its owner Service (namespace, name, uid) and
//! when it was claimed. A key is *stale* when its owner is gone (or holds
//! another IP) and the claim is older than [`CLAIM_GRACE`] (a claim younger
//! than that may belong to a create still in flight); a stale key is taken
//! over with a compare-and-swap. The leader's endpointslice controller
//! releases the key of a deleted Service and sweeps stale keys (kube's repair
//! loop), so the stored Services stay the truth.

use std::net::Ipv4Addr;
use std::str::FromStr;

use bytes::Bytes;
use serde_json::{Value, json};
use tessera_store::{self as store, ListOptions, Store};

use crate::resource::CORE_SERVICES;
use crate::status::{ApiError, Result, StatusCause};

/// Where allocations live.
pub const KEY_PREFIX: &str = "/registry/tessera.io/serviceips/";

/// How long a claim whose Service does not (yet) exist is left alone.
pub const CLAIM_GRACE_SECONDS: i64 = 30;

/// An IPv4 range, e.g. `10.96.0.0/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: u32,
    prefix: u8,
}

/// A `--service-cluster-ip-range` that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid service CIDR {0:?}: expected an IPv4 network such as 10.96.0.0/12 (prefix 8 to 30)")]
pub struct CidrError(String);

impl FromStr for ServiceCidr {
    type Err = CidrError;

    fn from_str(s: &str) -> std::result::Result<Self, CidrError> {
        let err = || CidrError(s.to_owned());
        let (ip, prefix) = s.split_once('/').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if !(8..=30).contains(&prefix) {
            return Err(err());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self { network: u32::from(ip) & mask, prefix })
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl Default for ServiceCidr {
    fn default() -> Self {
        Self { network: u32::from(Ipv4Addr::new(10, 96, 0, 0)), prefix: 12 }
    }
}

impl ServiceCidr {
    /// Usable addresses (network and broadcast addresses excluded, as kube).
    fn size(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `offset`-th usable address (0 = network + 1).
    fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1 + offset)
    }

    /// The first usable address: the `default/kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        self.nth(0)
    }

    /// Whether `ip` is a usable address of the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.network && ip - self.network <= self.size()
    }
}

/// A claimed IP, to give back if the Service is not stored after all.
#[derive(Debug)]
pub struct Claim {
    key: String,
    uid: String,
}

fn key_of(ip: Ipv4Addr) -> String {
    format!("{KEY_PREFIX}{ip}")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn storage(err: store::Error) -> ApiError {
    tracing::error!(error = %err, "storage failure allocating a service IP");
    ApiError::internal("storage is unavailable; see server logs")
}

/// kube's 422 for a requested IP it cannot give (`why` is the allocator's error).
fn not_allocatable(name: &str, ips: &[String], ip: &str, why: &str) -> ApiError {
    let shown = format!("[]string{{{}}}", ips.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "));
    let cause = StatusCause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {shown}: failed to allocate IP {ip}: {why}"),
        field: "spec.clusterIPs".into(),
    };
    ApiError::invalid("Service", "", name, vec![cause])
}

/// Whether the Service a claim names still holds that IP.
async fn owner_holds(store: &dyn Store, claim: &Value, ip: Ipv4Addr) -> Result<bool> {
    let (ns, name, uid) = (
        claim.get("namespace").and_then(Value::as_str).unwrap_or_default(),
        claim.get("name").and_then(Value::as_str).unwrap_or_default(),
        claim.get("uid").and_then(Value::as_str).unwrap_or_default(),
    );
    let Some(kv) = store.get(&CORE_SERVICES.key(Some(ns), name)).await.map_err(storage)? else { return Ok(false) };
    let svc: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    Ok(svc.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid)
        && svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip.to_string().as_str()))
}

/// Whether a stored claim may be taken over (see the module docs).
pub async fn is_stale(store: &dyn Store, value: &[u8], ip: Ipv4Addr) -> Result<bool> {
    let claim: Value = serde_json::from_slice(value).unwrap_or(Value::Null);
    let at = claim.get("at").and_then(Value::as_i64).unwrap_or(0);
    if now() - at < CLAIM_GRACE_SECONDS {
        return Ok(false);
    }
    Ok(!owner_holds(store, &claim, ip).await?)
}

/// Claims `ip` for the Service; `Ok(false)` when someone else holds it.
async fn try_claim(store: &dyn Store, ip: Ipv4Addr, owner: &Value) -> Result<bool> {
    let key = key_of(ip);
    let value = Bytes::from(owner.to_string());
    match store.create(&key, value.clone()).await {
        Ok(_) => return Ok(true),
        Err(store::Error::AlreadyExists(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    let Some(kv) = store.get(&key).await.map_err(storage)? else { return Ok(false) };
    if !is_stale(store, &kv.value, ip).await? {
        return Ok(false);
    }
    match store.update(&key, value, kv.mod_revision).await {
        Ok(_) => Ok(true),
        Err(store::Error::Conflict { .. } | store::Error::NotFound(_)) => Ok(false),
        Err(e) => Err(storage(e)),
    }
}

/// Allocates the cluster IP of a Service about to be created (`obj` is
/// defaulted and valid): honours a requested IP if it is in range and free,
/// else picks a free one at random and writes it into `clusterIP` and
/// `clusterIPs`. Headless and ExternalName Services get none. With `dry_run`
/// nothing is claimed (the IP shown may be taken by the time of a real create).
pub async fn allocate(store: &dyn Store, cidr: ServiceCidr, obj: &mut Value, dry_run: bool) -> Result<Option<Claim>> {
    if obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return Ok(None);
    }
    let requested = obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_owned();
    if requested == crate::service::CLUSTER_IP_NONE {
        return Ok(None);
    }
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let owner = json!({
        "namespace": obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default(),
        "name": name,
        "uid": obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default(),
        "at": now(),
    });
    let uid = owner["uid"].as_str().unwrap_or_default().to_owned();
    if !requested.is_empty() {
        let ips = vec![requested.clone()];
        // Validation accepted it as an IPv4 address.
        let Ok(ip) = requested.parse::<Ipv4Addr>() else { return Err(not_allocatable(&name, &ips, &requested, "not an IPv4 address")) };
        if !cidr.contains(ip) {
            let why = format!("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}");
            return Err(not_allocatable(&name, &ips, &requested, &why));
        }
        let free = if dry_run {
            match store.get(&key_of(ip)).await.map_err(storage)? {
                None => true,
                Some(kv) => is_stale(store, &kv.value, ip).await?,
            }
        } else {
            try_claim(store, ip, &owner).await?
        };
        if !free {
            return Err(not_allocatable(&name, &ips, &requested, "provided IP is already allocated"));
        }
        return Ok((!dry_run).then(|| Claim { key: key_of(ip), uid }));
    }
    let taken: std::collections::HashSet<String> = store
        .list(KEY_PREFIX, ListOptions::default())
        .await
        .map_err(storage)?
        .items
        .into_iter()
        .map(|kv| kv.key.trim_start_matches(KEY_PREFIX).to_owned())
        .collect();
    let size = cidr.size();
    let start = {
        use rand::Rng as _;
        rand::rng().random_range(0..size)
    };
    let mut attempts = 0;
    for step in 0..size {
        let ip = cidr.nth((start + step) % size);
        // The first address is the `kubernetes` Service's, never handed out at random.
        if ip == cidr.first() || taken.contains(&ip.to_string()) {
            continue;
        }
        if !dry_run && !try_claim(store, ip, &owner).await? {
            attempts += 1;
            if attempts > 64 {
                break;
            }
            continue;
        }
        let spec = obj.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| ApiError::bad_request("spec must be an object"))?;
        spec.insert("clusterIP".into(), json!(ip.to_string()));
        spec.insert("clusterIPs".into(), json!([ip.to_string()]));
        return Ok((!dry_run).then(|| Claim { key: key_of(ip), uid }));
    }
    Err(ApiError::internal("failed to allocate a serviceIP: range is full"))
}

/// Whether an update makes a Service need a cluster IP it did not have
/// (a change from ExternalName).
pub fn needs_ip(old: &Value, new: &Value) -> bool {
    let ip = |v: &Value| v.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_owned();
    ip(old).is_empty() && new.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") && ip(new) != crate::service::CLUSTER_IP_NONE
}

/// Gives back a claim whose Service was not stored.
pub async fn release_claim(store: &dyn Store, claim: Claim) {
    release_key(store, &claim.key, &claim.uid).await;
}

/// Releases the IP held by the Service with `uid` (after it was deleted).
pub async fn release(store: &dyn Store, ip: &str, uid: &str) {
    if let Ok(ip) = ip.parse::<Ipv4Addr>() {
        release_key(store, &key_of(ip), uid).await;
    }
}

async fn release_key(store: &dyn Store, key: &str, uid: &str) {
    let Ok(Some(kv)) = store.get(key).await else { return };
    let claim: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    if claim.get("uid").and_then(Value::as_str) != Some(uid) {
        return;
    }
    if let Err(e) = store.delete(key, Some(kv.mod_revision)).await
        && !matches!(e, store::Error::NotFound(_) | store::Error::Conflict { .. })
    {
        tracing::warn!(key, error = %e, "releasing a service IP failed; the repair pass will");
    }
}

/// kube's repair loop: releases claims whose Service is gone (or holds
/// another IP) once their grace has passed. Returns how many were released.
pub async fn repair(store: &dyn Store) -> Result<usize> {
    let list = store.list(KEY_PREFIX, ListOptions::default()).await.map_err(storage)?;
    let mut released = 0;
    for kv in list.items {
        let Ok(ip) = kv.key.trim_start_matches(KEY_PREFIX).parse::<Ipv4Addr>() else { continue };
        if is_stale(store, &kv.value, ip).await? {
            match store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => released += 1,
                Err(store::Error::NotFound(_) | store::Error::Conflict { .. }) => {}
                Err(e) => return Err(storage(e)),
            }
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_bounds() {
        let cidr: ServiceCidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(cidr, ServiceCidr::default());
        assert_eq!(cidr.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(cidr.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert_eq!("10.0.0.7/24".parse::<ServiceCidr>().unwrap().to_string(), "10.0.0.0/24");
        assert!("10.0.0.0/31".parse::<ServiceCidr>().is_err());
        assert!("nope".parse::<ServiceCidr>().is_err());
    }

    fn service(name: &str, ip: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}, "spec": {"type": "ClusterIP", "clusterIP": ip}})
    }

    #[tokio::test]
    async fn claims_are_exclusive_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = tessera_store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let cidr: ServiceCidr = "10.0.0.0/29".parse().unwrap();
        let mut a = service("a", "10.0.0.3");
        let claim = allocate(&store, cidr, &mut a, false).await.unwrap().unwrap();
        let mut b = service("b", "10.0.0.3");
        let err = allocate(&store, cidr, &mut b, false).await.unwrap_err();
        assert_eq!(err.message, "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.0.0.3\"}: failed to allocate IP 10.0.0.3: provided IP is already allocated");
        let mut out = service("c", "10.1.0.3");
        let err = allocate(&store, cidr, &mut out, false).await.unwrap_err();
        assert!(err.message.ends_with("the provided IP (10.1.0.3) is not in the valid range. The range of valid IPs is 10.0.0.0/29"), "{}", err.message);
        // Dynamic allocation never hands out the first address nor a taken one; the range
        // (6 usable) holds 4 more.
        let mut got = Vec::new();
        for i in 0..4 {
            let mut s = service(&format!("d{i}"), "");
            allocate(&store, cidr, &mut s, false).await.unwrap();
            got.push(s["spec"]["clusterIP"].as_str().unwrap().to_owned());
        }
        got.sort();
        assert_eq!(got, ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        let mut full = service("e", "");
        assert_eq!(allocate(&store, cidr, &mut full, false).await.unwrap_err().code, 500);
        release_claim(&store, claim).await;
        allocate(&store, cidr, &mut b, false).await.unwrap();
    }
}
