//! Messages that could not be parsed or applied, kept whole with the reason
//! until ops retry or drop them.

use serde::Serialize;

use super::{blobs, now_ms, Store};
use crate::crypto::sha256_hex;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QuarantineEntry {
    pub id: i64,
    #[sqlx(rename = "channel_key")]
    pub channel: Option<String>,
    pub source: Option<String>,
    pub reason: String,
    pub size: i64,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, channel_key, source, reason, size, attempts, created_at, updated_at";

impl Store {
    /// Stores the raw message (once per content) and its reason. Quarantining
    /// the same bytes again bumps its attempt count, updates the reason and
    /// adds the new source to the ones recorded (a second file with the
    /// same bytes is named too).
    pub async fn quarantine_put(
        &self,
        channel: &str,
        source: Option<&str>,
        reason: &str,
        raw: &[u8],
    ) -> Result<i64, sqlx::Error> {
        let sha = sha256_hex(raw);
        let now = now_ms();
        let mut w = self.begin_write().await?;
        blobs::put(&mut w.tx, &sha, raw).await?;
        let known: Option<Option<String>> =
            sqlx::query_scalar("SELECT source FROM quarantine WHERE raw_sha256 = $1")
                .bind(&sha)
                .fetch_optional(&mut *w.tx)
                .await?;
        let source = merged_sources(known.flatten().as_deref(), source);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO quarantine (channel_key, source, reason, raw_sha256, size, attempts, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $6)
             ON CONFLICT (raw_sha256) DO UPDATE SET reason = excluded.reason, source = excluded.source,
               attempts = quarantine.attempts + 1, updated_at = excluded.updated_at
             RETURNING id",
        )
        .bind(channel)
        .bind(source)
        .bind(reason)
        .bind(&sha)
        .bind(raw.len() as i64)
        .bind(now)
        .fetch_one(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(id)
    }

    pub async fn quarantine_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM quarantine")
            .fetch_one(self.pool())
            .await
    }

    pub async fn quarantine_list(&self) -> Result<Vec<QuarantineEntry>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM quarantine ORDER BY id"))
            .fetch_all(self.pool())
            .await
    }

    /// The entry and its raw bytes.
    pub async fn quarantine_get(
        &self,
        id: i64,
    ) -> Result<Option<(QuarantineEntry, Vec<u8>)>, sqlx::Error> {
        let entry: Option<QuarantineEntry> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM quarantine WHERE id = $1"))
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let sha: String = sqlx::query_scalar("SELECT raw_sha256 FROM quarantine WHERE id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        let mut conn = self.pool().acquire().await?;
        let data = blobs::get(&mut conn, &sha).await?;
        Ok(Some((entry, data)))
    }

    /// Removes the entry; returns whether it existed. The raw blob stays when a
    /// stored message still refers to it.
    pub async fn quarantine_drop(&self, id: i64) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let sha: Option<String> =
            sqlx::query_scalar("DELETE FROM quarantine WHERE id = $1 RETURNING raw_sha256")
                .bind(id)
                .fetch_optional(&mut *w.tx)
                .await?;
        let Some(sha) = sha else {
            return Ok(false);
        };
        blobs::drop_unused(&mut w.tx, &sha).await?;
        w.commit().await?;
        Ok(true)
    }
}

/// The sources recorded for one content: each once, `; `-separated, the
/// list capped so a message quarantined from many places stays readable.
fn merged_sources(known: Option<&str>, new: Option<&str>) -> Option<String> {
    const MAX_CHARS: usize = 2000;
    match (known, new) {
        (None, new) => new.map(str::to_string),
        (Some(known), None) => Some(known.to_string()),
        (Some(known), Some(new)) if known.split("; ").any(|s| s == new) => Some(known.to_string()),
        (Some(known), Some(_)) if known.chars().count() >= MAX_CHARS => Some(known.to_string()),
        (Some(known), Some(new)) => Some(format!("{known}; {new}")),
    }
}

#[cfg(test)]
mod tests {
    use super::merged_sources;

    #[test]
    fn each_source_is_recorded_once() {
        assert_eq!(merged_sources(None, Some("a")).as_deref(), Some("a"));
        assert_eq!(
            merged_sources(Some("a"), Some("b")).as_deref(),
            Some("a; b")
        );
        assert_eq!(
            merged_sources(Some("a; b"), Some("a")).as_deref(),
            Some("a; b")
        );
        assert_eq!(merged_sources(Some("a"), None).as_deref(), Some("a"));
    }
}
