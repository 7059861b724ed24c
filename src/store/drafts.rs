//! One draft per agent per ticket, kept as one JSON document so an
//! autosave is a single upsert. Only its author reads it; the agent's
//! queued reply on the ticket removes it (`store::replies`).

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Store, Tx};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DraftRow {
    pub ticket: i64,
    pub content: String,
    pub updated_at: i64,
}

/// A draft as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DraftView {
    pub ticket: i64,
    /// What the agent saved (see the PUT request body).
    #[schema(value_type = Object)]
    pub content: Box<RawValue>,
    pub updated_at: i64,
}

impl DraftRow {
    pub fn view(self) -> DraftView {
        let content = RawValue::from_string(self.content)
            .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid JSON"));
        DraftView {
            ticket: self.ticket,
            content,
            updated_at: self.updated_at,
        }
    }
}

impl Store {
    /// Saves the draft; true when it was new.
    pub async fn put_draft(
        &self,
        ticket: i64,
        agent: i64,
        content: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let existed: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM drafts WHERE ticket_id = $1 AND agent_id = $2")
                .bind(ticket)
                .bind(agent)
                .fetch_optional(&mut *w.tx)
                .await?;
        sqlx::query(
            "INSERT INTO drafts (ticket_id, agent_id, content, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (ticket_id, agent_id) DO UPDATE SET content = excluded.content,
               updated_at = excluded.updated_at",
        )
        .bind(ticket)
        .bind(agent)
        .bind(content)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(existed.is_none())
    }

    pub async fn draft(&self, ticket: i64, agent: i64) -> Result<Option<DraftRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT t.number AS ticket, d.content, d.updated_at FROM drafts d JOIN tickets t ON t.id = d.ticket_id
             WHERE d.ticket_id = $1 AND d.agent_id = $2",
        )
        .bind(ticket)
        .bind(agent)
        .fetch_optional(self.pool())
        .await
    }

    /// An agent's drafts on live tickets, latest first.
    pub async fn drafts_of(&self, agent: i64) -> Result<Vec<DraftRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT t.number AS ticket, d.content, d.updated_at FROM drafts d JOIN tickets t ON t.id = d.ticket_id
             WHERE d.agent_id = $1 AND t.deleted_at IS NULL ORDER BY d.updated_at DESC",
        )
        .bind(agent)
        .fetch_all(self.pool())
        .await
    }

    /// Removes the draft (in the caller's transaction); true when there was one.
    pub async fn delete_draft(
        &self,
        tx: &mut Tx,
        ticket: i64,
        agent: i64,
    ) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM drafts WHERE ticket_id = $1 AND agent_id = $2")
            .bind(ticket)
            .bind(agent)
            .execute(&mut **tx)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }
}
