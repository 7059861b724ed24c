//! Blocked senders: an address or a whole domain. Mail from one creates no
//! ticket and triggers nothing; the pipeline keeps it in the quarantine
//! with the reason, for an admin to release.

use serde::Serialize;

use super::sql::select_in;
use super::{now_ms, Store};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BlockView {
    pub id: i64,
    /// The address or domain, lower-case.
    pub value: String,
    /// `address` or `domain`.
    pub kind: String,
    pub reason: Option<String>,
    /// Who blocked it.
    pub actor: String,
    pub created_at: i64,
}

const BLOCK: &str = "SELECT id, value, kind, reason, actor, created_at FROM blocked_senders";

impl Store {
    pub async fn blocks(&self) -> Result<Vec<BlockView>, sqlx::Error> {
        sqlx::query_as(&format!("{BLOCK} ORDER BY value"))
            .fetch_all(self.pool())
            .await
    }

    /// Blocks `value`; returns the entry and whether it is new (a second
    /// block of the same value keeps the first).
    pub async fn block(
        &self,
        value: &str,
        kind: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<(BlockView, bool), sqlx::Error> {
        let mut w = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO blocked_senders (value, kind, reason, actor, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (value) DO NOTHING",
        )
        .bind(value)
        .bind(kind)
        .bind(reason)
        .bind(actor)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?
        .rows_affected()
            == 1;
        let view = sqlx::query_as(&format!("{BLOCK} WHERE value = $1"))
            .bind(value)
            .fetch_one(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok((view, created))
    }

    pub async fn unblock(&self, value: &str) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM blocked_senders WHERE value = $1")
            .bind(value)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    /// Which of these addresses and domains are blocked: one look-up per
    /// ingest batch (nothing to do when the table is empty).
    pub async fn blocked_among(&self, values: &[String]) -> Result<Vec<BlockView>, sqlx::Error> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool().acquire().await?;
        select_in(
            &mut conn,
            self.backend(),
            &format!("{BLOCK} WHERE value IN ({{}})"),
            values,
        )
        .await
    }
}
