//! The loop every controller runs: a full pass, then the watch events after
//! it (and the controller's own timer, if it keeps one); after a failed
//! watch or reconcile, another full pass.

use std::future::Future;

use futures::StreamExt;
use tessera_api::{ApiError, Registry};
use tessera_store::{Revision, WatchEvent};

/// What a controller does: a full pass over everything it owns, and the
/// reaction to one watch event.
pub(crate) trait Controller: Send + Sync {
    /// Its name, for logs.
    const NAME: &'static str;
    /// The store prefixes it watches.
    fn prefixes(&self) -> Vec<String>;
    /// Brings everything to the desired state.
    fn full_pass(&self) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Reacts to one change.
    fn on_event(&self, event: WatchEvent) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// When [`Controller::on_timer`] is next due, if ever (asked after every
    /// full pass, event and timer).
    fn next_timer(&self) -> Option<tokio::time::Instant> {
        None
    }
    /// Acts on what is due by now.
    fn on_timer(&self) -> impl Future<Output = Result<(), ApiError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Runs `controller` until `shutdown`. `done_at` is the revision of a full
/// pass already made (by bootstrap), if any. The revision is read before each
/// full pass, so changes made during the pass are replayed, never missed.
pub(crate) async fn follow<C: Controller>(registry: &Registry, controller: &C, mut done_at: Option<Revision>, shutdown: impl Future<Output = ()>) {
    let name = C::NAME;
    let prefixes = controller.prefixes();
    tokio::pin!(shutdown);
    loop {
        let after = match done_at.take() {
            Some(revision) => revision,
            None => {
                let pass = async {
                    let revision = registry.store().revision().await.map_err(|e| ApiError::internal(e.to_string()))?;
                    controller.full_pass().await?;
                    Ok::<_, ApiError>(revision)
                };
                let result = tokio::select! {
                    _ = &mut shutdown => return,
                    result = pass => result,
                };
                match result {
                    Ok(revision) => revision,
                    Err(e) => {
                        tracing::warn!(controller = name, error = %e, "full pass failed; retrying");
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
        };
        let mut streams = Vec::with_capacity(prefixes.len());
        for prefix in &prefixes {
            match registry.store().watch(prefix, after).await {
                Ok(stream) => streams.push(stream),
                Err(e) => {
                    tracing::warn!(controller = name, error = %e, "watch failed; starting over");
                    break;
                }
            }
        }
        if streams.len() < prefixes.len() {
            continue;
        }
        let mut events = futures::stream::select_all(streams);
        loop {
            let timer = controller.next_timer();
            let event = tokio::select! {
                _ = &mut shutdown => return,
                event = events.next() => event,
                () = sleep_until(timer), if timer.is_some() => {
                    if let Err(e) = controller.on_timer().await {
                        tracing::warn!(controller = name, error = %e, "timed reconcile failed; starting over");
                        break;
                    }
                    continue;
                }
            };
            match event {
                Some(Ok(event)) => {
                    if let Err(e) = controller.on_event(event).await {
                        tracing::warn!(controller = name, error = %e, "reconcile failed; starting over");
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(controller = name, error = %e, "watch ended; starting over");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
