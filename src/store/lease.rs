//! Leases: one instance at a time owns a named piece of work (an IMAP
//! mailbox). The holder renews its lease; when it dies, the lease expires
//! and another instance takes the work over. Works the same on SQLite (one
//! file, several processes) and PostgreSQL (several hosts).

use std::time::Duration;

use sqlx::Row;
use tokio_util::sync::CancellationToken;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Backend, Store};

impl Store {
    /// Takes `name` for `holder` until now + `ttl`, or renews it. False when
    /// another holder's lease is still live.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        // The database's clock, not ours: instances on hosts whose clocks
        // disagree still agree on when a lease ends.
        let now = match self.backend() {
            Backend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        };
        let mut w = self.begin_write().await?;
        let taken = sqlx::query(&format!(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {now} + $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < {now}
             RETURNING holder"
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl.as_millis() as i64)
        .fetch_optional(&mut *w.tx)
        .await?
        .is_some();
        w.commit().await?;
        Ok(taken)
    }

    /// Gives `name` up, if `holder` still has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Who holds `name`, and until when (unix ms).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
        sqlx::query("SELECT holder, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }
}

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
                tracing::info!(%name, holder = ?current.map(|c| c.0), "Standing by: another instance holds this lease.");
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

/// Renews the lease every third of `ttl` until `done` is cancelled. When
/// the lease is lost (another instance took it), or no renewal succeeded
/// within two thirds of its life (each attempt is time-boxed, and measured
/// from before it started), sets `lost` and cancels `done`, so the work
/// stops before anyone else can have started it.
pub fn keep(
    store: Store,
    name: String,
    holder: String,
    ttl: Duration,
    done: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
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
            let renewed =
                tokio::time::timeout(ttl / 3, store.take_lease(&name, &holder, ttl)).await;
            match renewed {
                Ok(Ok(true)) => last_renewal_start = started,
                Ok(Ok(false)) => return give_up("another instance took it"),
                Ok(Err(_)) | Err(_) if last_renewal_start.elapsed() >= ttl * 2 / 3 => {
                    return give_up("it could not be renewed in time")
                }
                Ok(Err(e)) => {
                    tracing::warn!(%name, error = %e, "Cannot renew the lease; retrying.")
                }
                Err(_) => tracing::warn!(%name, "Renewing the lease timed out; retrying."),
            }
        }
    });
}
