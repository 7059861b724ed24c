//! Internal comments on tickets (never sent, never in anything a contact
//! receives) and the agents' notifications they make.

use serde::Serialize;

use super::{Store, Tx};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CommentView {
    pub id: i64,
    /// `agent:<key>` or `ops`.
    pub author: String,
    pub body: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: i64,
    /// `mention`.
    pub kind: String,
    /// The ticket's number.
    pub ticket: i64,
    pub comment: Option<i64>,
    /// Who caused it.
    pub actor: String,
    /// Where the ticket is in the API.
    #[sqlx(skip)]
    pub link: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

/// A notification to store: for `agent`, about `ticket`, caused by `actor`.
pub struct Notice<'a> {
    pub agent: i64,
    pub ticket: i64,
    /// `mention`.
    pub kind: &'a str,
    pub comment: Option<i64>,
    pub actor: &'a str,
    pub now: i64,
}

impl Store {
    pub async fn add_comment(
        &self,
        tx: &mut Tx,
        ticket: i64,
        author: Option<i64>,
        actor: &str,
        body: &str,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query("UPDATE tickets SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(ticket)
            .execute(&mut **tx)
            .await?;
        sqlx::query_scalar(
            "INSERT INTO comments (ticket_id, author_agent_id, actor, body, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(ticket)
        .bind(author)
        .bind(actor)
        .bind(body)
        .bind(now)
        .fetch_one(&mut **tx)
        .await
    }

    pub async fn comments(&self, ticket: i64) -> Result<Vec<CommentView>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, actor AS author, body, created_at FROM comments WHERE ticket_id = $1 ORDER BY id",
        )
        .bind(ticket)
        .fetch_all(self.pool())
        .await
    }

    /// One notification per agent per comment and kind, however often the
    /// comment names them.
    pub async fn add_notification(
        &self,
        tx: &mut Tx,
        notice: &Notice<'_>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO notifications (agent_id, ticket_id, kind, comment_id, actor, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (agent_id, comment_id, kind) DO NOTHING",
        )
        .bind(notice.agent)
        .bind(notice.ticket)
        .bind(notice.kind)
        .bind(notice.comment)
        .bind(notice.actor)
        .bind(notice.now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// An agent's notifications, newest first (`unread`: only those).
    pub async fn notifications(
        &self,
        agent: i64,
        unread: bool,
        limit: i64,
    ) -> Result<Vec<NotificationView>, sqlx::Error> {
        let condition = if unread { "AND n.read_at IS NULL" } else { "" };
        let mut rows: Vec<NotificationView> = sqlx::query_as(&format!(
            "SELECT n.id, n.kind, t.number AS ticket, n.comment_id AS comment, n.actor, n.created_at, n.read_at
             FROM notifications n JOIN tickets t ON t.id = n.ticket_id
             WHERE n.agent_id = $1 AND t.deleted_at IS NULL {condition} ORDER BY n.id DESC LIMIT $2"
        ))
        .bind(agent)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        for row in &mut rows {
            row.link = format!("/api/v1/tickets/{}", row.ticket);
        }
        Ok(rows)
    }

    /// Marks an agent's notification read; false when it is not theirs.
    pub async fn mark_read(&self, agent: i64, id: i64, now: i64) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let found = sqlx::query(
            "UPDATE notifications SET read_at = COALESCE(read_at, $1) WHERE id = $2 AND agent_id = $3",
        )
        .bind(now)
        .bind(id)
        .bind(agent)
        .execute(&mut *w.tx)
        .await?
        .rows_affected()
            == 1;
        w.commit().await?;
        Ok(found)
    }
}
