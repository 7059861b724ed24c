//! Messages that could not be parsed or applied, kept whole with the reason
//! until ops retry or drop them.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, Store};
use crate::pipeline::parse::sha256_hex;

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    pub channel: Option<String>,
    pub source: Option<String>,
    pub reason: String,
    pub size: i64,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, channel_key, source, reason, size, attempts, created_at, updated_at";

fn entry(row: &sqlx::any::AnyRow) -> Result<QuarantineEntry, sqlx::Error> {
    Ok(QuarantineEntry {
        id: row.try_get(0)?,
        channel: row.try_get(1)?,
        source: row.try_get(2)?,
        reason: row.try_get(3)?,
        size: row.try_get(4)?,
        attempts: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}

impl Store {
    /// Stores the raw message (once per content) and its reason. Quarantining
    /// the same bytes again bumps its attempt count and updates the reason.
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
        sqlx::query("INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
            .bind(&sha)
            .bind(raw.len() as i64)
            .bind(raw.to_vec())
            .execute(&mut *w.tx)
            .await?;
        let id: i64 = sqlx::query(
            "INSERT INTO quarantine (channel_key, source, reason, raw_sha256, size, attempts, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $6)
             ON CONFLICT (raw_sha256) DO UPDATE SET reason = excluded.reason,
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
        .await?
        .try_get(0)?;
        w.commit().await?;
        Ok(id)
    }

    pub async fn quarantine_list(&self) -> Result<Vec<QuarantineEntry>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM quarantine ORDER BY id"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(entry).collect()
    }

    /// The entry and its raw bytes.
    pub async fn quarantine_get(
        &self,
        id: i64,
    ) -> Result<Option<(QuarantineEntry, Vec<u8>)>, sqlx::Error> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {COLUMNS}, raw_sha256 FROM quarantine WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        else {
            return Ok(None);
        };
        let sha: String = row.try_get(8)?;
        let data: Vec<u8> = sqlx::query("SELECT data FROM blobs WHERE sha256 = $1")
            .bind(sha)
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        Ok(Some((entry(&row)?, data)))
    }

    /// Removes the entry; returns whether it existed. The raw blob stays when a
    /// stored message still refers to it.
    pub async fn quarantine_drop(&self, id: i64) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let Some(row) = sqlx::query("DELETE FROM quarantine WHERE id = $1 RETURNING raw_sha256")
            .bind(id)
            .fetch_optional(&mut *w.tx)
            .await?
        else {
            return Ok(false);
        };
        let sha: String = row.try_get(0)?;
        sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1
               AND NOT EXISTS (SELECT 1 FROM messages WHERE raw_sha256 = $1)
               AND NOT EXISTS (SELECT 1 FROM attachments WHERE sha256 = $1)",
        )
        .bind(sha)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(true)
    }
}
