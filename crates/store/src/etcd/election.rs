//! Leader election on etcd: one lease-bound key per election.
//!
//! A term, as a state machine:
//! - **Campaigning**: grant a lease (kept alive every third of its TTL), then
//!   create the election key bound to it in a txn on `create_revision == 0`.
//!   When another replica holds the key, watch it from the txn's revision and
//!   try again once it is deleted (its holder resigned, or its lease expired).
//! - **Leading**: publish `true`; keep the lease alive. When no keep-alive has
//!   been answered for two thirds of the TTL (or etcd reports the lease gone),
//!   publish `false` *before* etcd can expire the lease and let another
//!   replica in, then start a new term.
//! - **Stopped** (shutdown): publish `false` and revoke the lease, so another
//!   replica takes over at once instead of after the TTL.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::watch;
use tokio::time::{Instant, interval, sleep, timeout};
use tracing::{debug, info, warn};

use super::{EtcdConfig, EtcdStore};
use crate::leader::Leadership;
use crate::{Error, Result};

/// How long resigning (revoking the lease) may take at shutdown.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a new term after a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How a term ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown: leadership given up and the lease revoked.
    Stopped,
    /// Leadership (or the lease) was lost; start a new term.
    Lost(String),
}

struct Campaign {
    client: Client,
    key: Vec<u8>,
    identity: String,
    ttl: Duration,
    leading: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
}

/// Campaigns for the election `name` (one per piece of leader-only work)
/// until `shutdown` resolves, as `identity` (shown to the other replicas in
/// logs). The election key is `{prefix}/tessera.io/leaders/{name}` in etcd,
/// bound to a lease of [`EtcdConfig::leader_lease`].
pub(super) async fn campaign(
    config: &EtcdConfig,
    name: &str,
    identity: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Leadership> {
    let store = EtcdStore::connect(config).await?;
    let ttl = config.leader_lease.max(Duration::from_secs(2));
    let (leading, view) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let campaign = Campaign {
        client: store.client,
        key: format!("{}/tessera.io/leaders/{name}", config.prefix).into_bytes(),
        identity: identity.to_owned(),
        ttl,
        leading,
        stop,
    };
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
        // Keep the sender until the campaign has seen it.
        stop_tx.closed().await;
    });
    tokio::spawn(campaign.run());
    Ok(Leadership::from_receiver(view))
}

impl Campaign {
    async fn run(self) {
        let mut stop = self.stop.clone();
        let mut this = self;
        loop {
            match this.term().await {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Lost(why)) => {
                    this.leading.send_replace(false);
                    warn!(identity = %this.identity, why, "leader election term ended; campaigning again");
                }
                Err(err) => {
                    this.leading.send_replace(false);
                    warn!(identity = %this.identity, error = %err, "leader election failed; retrying");
                }
            }
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = sleep(RETRY_PAUSE) => {}
            }
        }
    }

    fn ttl_seconds(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// One term: lease, campaign, lead.
    async fn term(&mut self) -> Result<Ended> {
        let mut stop = self.stop.clone();
        let backend = |what: &str| {
            let what = what.to_owned();
            move |err: etcd_client::Error| Error::Backend(format!("leader election: {what}: {err}"))
        };
        let mut leases = self.client.lease_client();
        let granted_at = Instant::now();
        let lease = leases
            .grant(self.ttl_seconds(), None)
            .await
            .map_err(backend("granting a lease"))?
            .id();
        let (mut keeper, mut answers) = leases
            .keep_alive(lease)
            .await
            .map_err(backend("keeping the lease alive"))?;
        let mut lease = Lease {
            id: lease,
            renewed: granted_at,
            sent: granted_at,
        };
        let mut ticks = interval(self.ttl / 3);

        // Campaigning.
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    self.identity.clone(),
                    Some(PutOptions::new().with_lease(lease.id)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let response = self
                .client
                .kv_client()
                .txn(txn)
                .await
                .map_err(backend("campaigning"))?;
            if response.succeeded() {
                break;
            }
            let revision = response.header().map(|h| h.revision()).unwrap_or(0);
            let holder = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            info!(identity = %self.identity, leader = ?holder, "another replica leads; standing by");
            let mut watch = self
                .client
                .watch_client()
                .watch(
                    self.key.clone(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await
                .map_err(backend("watching the leader"))?;
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => {
                        self.resign(lease.id).await;
                        return Ok(Ended::Stopped);
                    }
                    _ = ticks.tick() => {
                        if let Some(why) = lease.renew(&mut keeper, self.ttl).await {
                            return Ok(Ended::Lost(why));
                        }
                    }
                    answer = answers.message() => {
                        if let Some(why) = lease.answered(answer) {
                            return Ok(Ended::Lost(why));
                        }
                    }
                    message = watch.message() => match message.map_err(backend("watching the leader"))? {
                        Some(response) if response.canceled() => break,
                        Some(response) if response.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                        Some(_) => {}
                        None => return Err(Error::Backend("leader election: the leader watch closed".to_owned())),
                    },
                }
            }
        }

        // Leading.
        self.leading.send_replace(true);
        info!(identity = %self.identity, key = %String::from_utf8_lossy(&self.key), "leading");
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    self.leading.send_replace(false);
                    self.resign(lease.id).await;
                    return Ok(Ended::Stopped);
                }
                _ = ticks.tick() => {
                    if let Some(why) = lease.renew(&mut keeper, self.ttl).await {
                        self.leading.send_replace(false);
                        self.resign(lease.id).await;
                        return Ok(Ended::Lost(why));
                    }
                }
                answer = answers.message() => {
                    if let Some(why) = lease.answered(answer) {
                        self.leading.send_replace(false);
                        return Ok(Ended::Lost(why));
                    }
                }
            }
        }
    }

    /// Revokes the lease (deleting the election key), best effort.
    async fn resign(&self, lease: i64) {
        let mut leases = self.client.lease_client();
        match timeout(RESIGN_TIMEOUT, leases.revoke(lease)).await {
            Ok(Ok(_)) => info!(identity = %self.identity, "resigned leadership"),
            Ok(Err(err)) => {
                debug!(error = %err, "revoking the election lease failed; it will expire")
            }
            Err(_) => debug!("revoking the election lease timed out; it will expire"),
        }
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A lease and when etcd last confirmed it.
struct Lease {
    id: i64,
    /// etcd renewed the lease after this instant (the send time of the last
    /// answered keep-alive), so it lives at least until `renewed + ttl`.
    renewed: Instant,
    /// When the last keep-alive was sent.
    sent: Instant,
}

impl Lease {
    /// Sends a keep-alive, unless the lease may already be close to expiring:
    /// then returns why leadership must be given up.
    async fn renew(&mut self, keeper: &mut LeaseKeeper, ttl: Duration) -> Option<String> {
        if self.renewed.elapsed() > ttl * 2 / 3 {
            return Some(format!(
                "the lease was not renewed for {:?}",
                self.renewed.elapsed()
            ));
        }
        self.sent = Instant::now();
        keeper
            .keep_alive()
            .await
            .err()
            .map(|err| format!("sending a keep-alive: {err}"))
    }

    /// Records a keep-alive answer; returns why the lease is lost, if it is.
    fn answered(
        &mut self,
        answer: std::result::Result<
            Option<etcd_client::LeaseKeepAliveResponse>,
            etcd_client::Error,
        >,
    ) -> Option<String> {
        match answer {
            Ok(Some(answer)) if answer.ttl() > 0 => {
                self.renewed = self.sent;
                None
            }
            Ok(Some(_)) => Some("etcd reports the lease expired".to_owned()),
            Ok(None) => Some("the keep-alive stream closed".to_owned()),
            Err(err) => Some(format!("keep-alive failed: {err}")),
        }
    }
}
