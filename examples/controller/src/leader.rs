//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection.LeaderElector` does it.
//!
//! Every write is a GET + PUT with the Lease's `resourceVersion`, so of two
//! candidates racing for a free Lease exactly one wins and the other gets a
//! 409 Conflict. A Lease is free when it has no holder or when its record has
//! not changed for `leaseDurationSeconds`, measured on *our* clock from when we
//! observed the change (never from `renewTime`, so clock skew between
//! candidates does not matter). Taking a Lease over sets `acquireTime` and adds
//! one to `leaseTransitions`; renewing moves only `renewTime`.
//!
//! (kube-lease-manager, the maintained crate for kube 5, takes the Lease with
//! a non-forced server-side apply and relies on field-ownership conflicts for
//! exclusion; this example keeps to client-go's algorithm, which needs only
//! optimistic concurrency.)

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Timing and names of one election.
#[derive(Debug, Clone)]
pub(crate) struct ElectionConfig {
    /// Namespace of the Lease.
    pub(crate) namespace: String,
    /// Name of the Lease.
    pub(crate) name: String,
    /// This candidate's `holderIdentity`.
    pub(crate) identity: String,
    /// How long a Lease stays held without a renewal (`leaseDurationSeconds`).
    pub(crate) lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub(crate) renew_deadline: Duration,
    /// Time between attempts.
    pub(crate) retry_period: Duration,
}

/// Why a step of the election failed (a failed attempt is retried; these are
/// only reported).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ElectionError {
    /// The configuration breaks client-go's rule `leaseDuration > renewDeadline > retryPeriod`.
    #[error("invalid election timing: {0}")]
    Timing(&'static str),
    /// A renewal was attempted before the Lease was ever read (a bug).
    #[error("no lease read yet")]
    NotRead,
    /// The API refused or failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// One candidate.
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The Lease as we last read or wrote it (its resourceVersion is the
    /// precondition of our next write).
    lease: Option<Lease>,
    /// When the Lease's record last changed, on our clock.
    observed_at: Instant,
}

impl LeaderElector {
    /// A candidate; checks the timing as client-go's `NewLeaderElector` does.
    pub(crate) fn new(client: Client, config: ElectionConfig) -> Result<Self, ElectionError> {
        if config.lease_duration <= config.renew_deadline {
            return Err(ElectionError::Timing("leaseDuration must be greater than renewDeadline"));
        }
        if config.renew_deadline <= config.retry_period.mul_f64(1.2) {
            return Err(ElectionError::Timing("renewDeadline must be greater than retryPeriod*1.2"));
        }
        let api = Api::namespaced(client, &config.namespace);
        Ok(Self { api, config, lease: None, observed_at: Instant::now() })
    }

    /// Waits until this candidate holds the Lease.
    pub(crate) async fn acquire(&mut self) {
        let mut tick = tokio::time::interval(self.config.retry_period);
        loop {
            tick.tick().await;
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.config.identity, lease = %self.config.name, "acquired the lease");
                    return;
                }
                Ok(false) => debug!(holder = ?self.holder(), "lease held by another candidate"),
                Err(e) => warn!(error = %e, "acquiring the lease failed"),
            }
        }
    }

    /// Renews the Lease every retry period; returns when a renewal has not
    /// succeeded for the renew deadline (leadership is then lost).
    pub(crate) async fn keep_renewing(&mut self) {
        let mut tick = tokio::time::interval(self.config.retry_period);
        let mut renewed = Instant::now();
        loop {
            tick.tick().await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    warn!(holder = ?self.holder(), "the lease was taken over");
                    return;
                }
                Err(e) => warn!(error = %e, "renewing the lease failed"),
            }
            if renewed.elapsed() > self.config.renew_deadline {
                warn!("no renewal within the renew deadline");
                return;
            }
        }
    }

    fn holder(&self) -> Option<&str> {
        self.lease.as_ref()?.spec.as_ref()?.holder_identity.as_deref().filter(|h| !h.is_empty())
    }

    fn is_leader(&self) -> bool {
        self.holder() == Some(self.config.identity.as_str())
    }

    fn lease_valid(&self) -> bool {
        self.observed_at.elapsed() < self.config.lease_duration
    }

    /// client-go's `tryAcquireOrRenew`: true when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ElectionError> {
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let mut record = LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };

        // Fast path: the leader renews the Lease it last wrote.
        if self.is_leader() && self.lease_valid() {
            let old = self.lease.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
            record.acquire_time = old.acquire_time;
            record.lease_transitions = old.lease_transitions;
            match self.update(record.clone()).await {
                Ok(()) => return Ok(true),
                Err(e) => debug!(error = %e, "optimistic renewal failed; reading the lease"),
            }
        }

        let current = match self.api.get_opt(&self.config.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.config.name.clone()), ..ObjectMeta::default() },
                    spec: Some(record),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.observe(created);
                        Ok(true)
                    }
                    Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let old = current.spec.clone().unwrap_or_default();
        if self.lease.as_ref().and_then(|l| l.spec.as_ref()) != Some(&old) {
            self.observed_at = Instant::now();
        }
        self.lease = Some(current);
        if self.holder().is_some() && self.lease_valid() && !self.is_leader() {
            return Ok(false);
        }
        if self.is_leader() {
            record.acquire_time = old.acquire_time;
            record.lease_transitions = old.lease_transitions;
        } else {
            record.lease_transitions = Some(old.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        match self.update(record).await {
            Ok(()) => Ok(true),
            Err(ElectionError::Kube(kube::Error::Api(status))) if status.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// PUTs `record` on the Lease last seen, with its resourceVersion.
    async fn update(&mut self, record: LeaseSpec) -> Result<(), ElectionError> {
        let Some(mut lease) = self.lease.clone() else {
            return Err(ElectionError::NotRead);
        };
        lease.spec = Some(record);
        let updated = self.api.replace(&self.config.name, &PostParams::default(), &lease).await?;
        self.observe(updated);
        Ok(())
    }

    fn observe(&mut self, lease: Lease) {
        self.lease = Some(lease);
        self.observed_at = Instant::now();
    }
}
