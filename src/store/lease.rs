//! Leases: one instance at a time owns a named piece of work (an IMAP
//! mailbox). The holder renews its lease; when it dies, the lease expires
//! and another instance takes the work over. Works the same on SQLite (one
//! file, several processes) and PostgreSQL (several hosts).

use std::time::Duration;

use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{now_ms, Store};

impl Store {
    /// Takes `name` for `holder` until now + `ttl`, or renews it. False when
    /// another holder's lease is still live.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
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
/// the lease is lost (another instance took it) or cannot be renewed for
/// two thirds of its life, cancels `done` so the work stops before anyone
/// else can start it.
pub fn keep(store: Store, name: String, holder: String, ttl: Duration, done: CancellationToken) {
    tokio::spawn(async move {
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(ttl / 3) => {}
            }
            match store.take_lease(&name, &holder, ttl).await {
                Ok(true) => renewed_at = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(%name, "Lease lost to another instance; stopping this work.");
                    done.cancel();
                    return;
                }
                Err(e) if renewed_at.elapsed() >= ttl * 2 / 3 => {
                    tracing::warn!(%name, error = %e, "Cannot renew the lease in time; stopping this work.");
                    done.cancel();
                    return;
                }
                Err(e) => tracing::warn!(%name, error = %e, "Cannot renew the lease; retrying."),
            }
        }
    });
}
