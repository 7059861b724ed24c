//! Working under a lease: wait until this instance holds it, then renew it
//! while the work runs, and stop the work before anyone else can have
//! started it when the lease is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Waits until `holder` has the lease `name` (or `stop`); false on stop.
pub async fn acquire(
    store: &Store,
    name: &str,
    holder: &str,
    ttl: Duration,
    stop: &CancellationToken,
) -> bool {
    let mut waiting_logged = false;
    loop {
        match store.take_lease(name, holder, ttl).await {
            Ok(true) => return true,
            Ok(false) if !waiting_logged => {
                let current = store.lease_holder(name).await.ok().flatten();
                let current = current.map(|(h, _)| h).unwrap_or_default();
                tracing::info!(%name, holder = %current, "Standing by: another instance holds this lease.");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%name, error = %e, "Cannot take the lease; retrying."),
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
    }
}

/// Renews the lease every third of `ttl` until `done` is cancelled; run it
/// beside the work it guards. When the lease is lost (another instance took
/// it), or no renewal succeeded within two thirds of its life (each attempt
/// is time-boxed, and measured from before it started), sets `lost` and
/// cancels `done`, so the work stops at its next safe point.
pub async fn renew(
    store: &Store,
    name: &str,
    holder: &str,
    ttl: Duration,
    done: &CancellationToken,
    lost: &AtomicBool,
) {
    let mut last_renewal_start = tokio::time::Instant::now();
    let give_up = |reason: &str| {
        tracing::warn!(%name, %reason, "Lease no longer held; stopping this work.");
        lost.store(true, Ordering::SeqCst);
        done.cancel();
    };
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let started = tokio::time::Instant::now();
        let renewed = tokio::time::timeout(ttl / 3, store.take_lease(name, holder, ttl)).await;
        match renewed {
            Ok(Ok(true)) => last_renewal_start = started,
            Ok(Ok(false)) => return give_up("another instance took it"),
            Ok(Err(_)) | Err(_) if last_renewal_start.elapsed() >= ttl * 2 / 3 => {
                return give_up("it could not be renewed in time")
            }
            Ok(Err(e)) => tracing::warn!(%name, error = %e, "Cannot renew the lease; retrying."),
            Err(_) => tracing::warn!(%name, "Renewing the lease timed out; retrying."),
        }
    }
}
