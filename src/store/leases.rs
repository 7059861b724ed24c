//! Leases: one instance at a time owns a named piece of work (an IMAP
//! mailbox). Expiry is computed with the database's clock, so instances on
//! hosts whose clocks disagree still agree on when a lease ends. Works the
//! same on SQLite (one file, several processes) and PostgreSQL.

use std::time::Duration;

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
        let now = match self.backend() {
            Backend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        };
        let mut w = self.begin_write().await?;
        let taken: Option<String> = sqlx::query_scalar(&format!(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {now} + $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < {now}
             RETURNING holder"
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl.as_millis() as i64)
        .fetch_optional(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(taken.is_some())
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
        sqlx::query_as("SELECT holder, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
    }
}
