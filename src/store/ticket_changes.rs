//! What agents change on tickets by hand: create one, edit its subject and
//! properties, status, owner, team and pipeline, followers, soft delete,
//! restore and purge, and the timeline read-out. Each write runs in the
//! caller's transaction, which also records the event.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Backend, Store, Tx};

/// A ticket made by hand.
pub struct NewTicket<'a> {
    pub subject: &'a str,
    pub team_id: i64,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub owner: Option<i64>,
    pub company_id: Option<i64>,
    pub properties: &'a BTreeMap<String, Value>,
    /// Contact ids; the first is the requester.
    pub contacts: &'a [i64],
    pub now: i64,
}

/// A ticket for restore and purge.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeletedTicket {
    pub id: i64,
    pub team_id: i64,
}

/// One entry of a ticket's timeline.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventView {
    pub id: i64,
    pub kind: String,
    #[sqlx(rename = "data")]
    #[serde(skip)]
    pub data_json: String,
    #[sqlx(skip)]
    #[schema(value_type = Object)]
    pub data: Value,
    /// Who: `agent:<key>`, `ops`, `pipeline` …
    pub actor: Option<String>,
    pub created_at: i64,
}

impl Store {
    /// Creates a ticket and returns its (id, number). The number comes from
    /// the shared counter (row-locked on PostgreSQL until commit).
    pub async fn create_ticket(
        &self,
        tx: &mut Tx,
        ticket: &NewTicket<'_>,
    ) -> Result<(i64, i64), sqlx::Error> {
        let number: i64 = sqlx::query_scalar(
            "UPDATE counters SET value = value + 1 WHERE name = 'ticket_number' RETURNING value",
        )
        .fetch_one(&mut **tx)
        .await?;
        let properties = serde_json::to_string(ticket.properties).unwrap_or_else(|_| "{}".into());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tickets (number, subject, team_id, pipeline_id, status_id, owner_agent_id, company_id,
                 properties, reply_token, created_at, updated_at, status_changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10) RETURNING id",
        )
        .bind(number)
        .bind(ticket.subject)
        .bind(ticket.team_id)
        .bind(ticket.pipeline_id)
        .bind(ticket.status_id)
        .bind(ticket.owner)
        .bind(ticket.company_id)
        .bind(properties)
        .bind(hex::encode(rand::random::<[u8; 16]>()))
        .bind(ticket.now)
        .fetch_one(&mut **tx)
        .await?;
        for (i, contact) in ticket.contacts.iter().enumerate() {
            let role = if i == 0 { "requester" } else { "participant" };
            self.add_ticket_contact(tx, id, *contact, role).await?;
        }
        Ok((id, number))
    }

    /// Makes a contact take part in a ticket (the requester when it has none).
    pub async fn add_ticket_contact(
        &self,
        tx: &mut Tx,
        ticket: i64,
        contact: i64,
        role: &str,
    ) -> Result<bool, sqlx::Error> {
        let added = sqlx::query(
            "INSERT INTO ticket_contacts (ticket_id, contact_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (ticket_id, contact_id) DO NOTHING",
        )
        .bind(ticket)
        .bind(contact)
        .bind(role)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        Ok(added)
    }

    /// Sets subject and properties (each when given).
    pub async fn edit_ticket(
        &self,
        tx: &mut Tx,
        id: i64,
        subject: Option<&str>,
        properties: Option<&BTreeMap<String, Value>>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let properties = properties.map(|p| serde_json::to_string(p).unwrap_or_default());
        sqlx::query(
            "UPDATE tickets SET subject = COALESCE($1, subject), properties = COALESCE($2, properties),
               updated_at = $3 WHERE id = $4",
        )
        .bind(subject)
        .bind(properties)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Moves a ticket to a status (and sets its properties with it).
    pub async fn change_status(
        &self,
        tx: &mut Tx,
        id: i64,
        status: i64,
        properties: &BTreeMap<String, Value>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE tickets SET status_id = $1, properties = $2, status_changed_at = $3, updated_at = $3
             WHERE id = $4",
        )
        .bind(status)
        .bind(serde_json::to_string(properties).unwrap_or_default())
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn set_owner(
        &self,
        tx: &mut Tx,
        id: i64,
        owner: Option<i64>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE tickets SET owner_agent_id = $1, updated_at = $2 WHERE id = $3")
            .bind(owner)
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Puts a ticket in another team and pipeline, at `status` of it. Its
    /// messages stay where they are; they were received by the old team.
    pub async fn move_ticket(
        &self,
        tx: &mut Tx,
        id: i64,
        team: i64,
        pipeline: i64,
        status: i64,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE tickets SET team_id = $1, pipeline_id = $2, status_id = $3, status_changed_at = $4,
               updated_at = $4 WHERE id = $5",
        )
        .bind(team)
        .bind(pipeline)
        .bind(status)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Adds or removes a follower; true when that changed something.
    pub async fn set_follower(
        &self,
        tx: &mut Tx,
        ticket: i64,
        agent: i64,
        follow: bool,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let query = match follow {
            true => sqlx::query(
                "INSERT INTO followers (ticket_id, agent_id, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (ticket_id, agent_id) DO NOTHING",
            )
            .bind(ticket)
            .bind(agent)
            .bind(now),
            false => sqlx::query("DELETE FROM followers WHERE ticket_id = $1 AND agent_id = $2")
                .bind(ticket)
                .bind(agent),
        };
        Ok(query.execute(&mut **tx).await?.rows_affected() == 1)
    }

    /// The agent keys following a ticket.
    pub async fn followers(&self, ticket: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT a.key FROM followers f JOIN agents a ON a.id = f.agent_id WHERE f.ticket_id = $1
             ORDER BY a.key",
        )
        .bind(ticket)
        .fetch_all(self.pool())
        .await
    }

    /// Soft delete (`Some(now)`) or restore (`None`).
    pub async fn set_deleted(
        &self,
        tx: &mut Tx,
        id: i64,
        deleted: Option<i64>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE tickets SET deleted_at = $1, updated_at = $2 WHERE id = $3")
            .bind(deleted)
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A ticket by number, deleted ones only unless `live_too` (locked on
    /// PostgreSQL).
    pub async fn deleted_ticket(
        &self,
        tx: &mut Tx,
        number: i64,
        live_too: bool,
    ) -> Result<Option<DeletedTicket>, sqlx::Error> {
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE",
            Backend::Sqlite => "",
        };
        let deleted = match live_too {
            true => "",
            false => "AND deleted_at IS NOT NULL",
        };
        sqlx::query_as(&format!(
            "SELECT id, team_id FROM tickets WHERE number = $1 {deleted} {lock}"
        ))
        .bind(number)
        .fetch_optional(&mut **tx)
        .await
    }

    /// Removes a deleted ticket and everything on it for good. Receipts stay
    /// (without the ticket), so the same mail delivered again is still a
    /// duplicate and does not come back as a new ticket.
    pub async fn purge_ticket(&self, tx: &mut Tx, id: i64) -> Result<(), sqlx::Error> {
        const STATEMENTS: &[&str] = &[
            "UPDATE receipts SET ticket_id = NULL, message_id = NULL WHERE ticket_id = $1
               OR message_id IN (SELECT id FROM messages WHERE ticket_id = $1)",
            "UPDATE tickets SET merged_into = NULL WHERE merged_into = $1",
            "UPDATE tickets SET follow_up_of = NULL WHERE follow_up_of = $1",
            "DELETE FROM notifications WHERE ticket_id = $1",
            "DELETE FROM comments WHERE ticket_id = $1",
            "DELETE FROM followers WHERE ticket_id = $1",
            "DELETE FROM drafts WHERE ticket_id = $1",
            "DELETE FROM ticket_events WHERE ticket_id = $1",
            "DELETE FROM ticket_contacts WHERE ticket_id = $1",
            "DELETE FROM message_refs WHERE ticket_id = $1",
            "DELETE FROM outbox WHERE ticket_id = $1",
            "DELETE FROM attachments WHERE message_id IN (SELECT id FROM messages WHERE ticket_id = $1)",
            "DELETE FROM messages WHERE ticket_id = $1",
            "DELETE FROM tickets WHERE id = $1",
        ];
        for sql in STATEMENTS {
            sqlx::query(sql).bind(id).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// A ticket's timeline, oldest first.
    pub async fn ticket_events(&self, ticket: i64) -> Result<Vec<EventView>, sqlx::Error> {
        let mut events: Vec<EventView> = sqlx::query_as(
            "SELECT id, kind, data, actor, created_at FROM ticket_events WHERE ticket_id = $1 ORDER BY id",
        )
        .bind(ticket)
        .fetch_all(self.pool())
        .await?;
        for event in &mut events {
            event.data = serde_json::from_str(&event.data_json).unwrap_or(Value::Null);
        }
        Ok(events)
    }

    /// A ticket's properties as stored.
    pub async fn ticket_properties(
        &self,
        ticket: i64,
    ) -> Result<BTreeMap<String, Value>, sqlx::Error> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT properties FROM tickets WHERE id = $1")
                .bind(ticket)
                .fetch_optional(self.pool())
                .await?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }
}
