//! Read-only views for ops, tests and benchmarks: ticket lists, one ticket
//! with its messages, and the JSON Lines export.

use serde::Serialize;
use sqlx::Row;

use super::Store;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TicketSummary {
    pub id: i64,
    pub number: i64,
    pub subject: String,
    pub status: String,
    pub status_kind: String,
    pub team: String,
    pub contacts: Vec<String>,
    pub message_count: i64,
    pub follow_up_of: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageView {
    pub id: i64,
    pub message_id: String,
    pub direction: String,
    pub from: String,
    pub from_name: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub received_at: i64,
    pub sent_at: Option<i64>,
    pub flags: Vec<String>,
    pub attachments: Vec<String>,
    pub body_text: String,
    pub has_html: bool,
    /// Outbound messages: `queued`, `sent` or `failed`, and the relay's
    /// answer or the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TicketView {
    #[serde(flatten)]
    pub ticket: TicketSummary,
    pub messages: Vec<MessageView>,
}

enum Bind {
    Text(String),
    Int(i64),
}

const SUMMARY: &str =
    "SELECT t.id, t.number, t.subject, s.name, s.kind, tm.key, t.follow_up_of, t.created_at,
       t.updated_at, (SELECT COUNT(*) FROM messages m WHERE m.ticket_id = t.id)
     FROM tickets t JOIN statuses s ON s.id = t.status_id JOIN teams tm ON tm.id = t.team_id";

fn addresses(json: &str) -> Vec<String> {
    serde_json::from_str::<Vec<serde_json::Value>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            v.get("address")
                .and_then(|a| a.as_str())
                .map(str::to_string)
        })
        .collect()
}

impl Store {
    async fn summaries(
        &self,
        filter: &str,
        bind: Option<Bind>,
    ) -> Result<Vec<TicketSummary>, sqlx::Error> {
        let sql = format!("{SUMMARY} WHERE t.deleted_at IS NULL {filter} ORDER BY t.number");
        let query = sqlx::query(&sql);
        let query = match bind {
            Some(Bind::Text(s)) => query.bind(s),
            Some(Bind::Int(i)) => query.bind(i),
            None => query,
        };
        let rows = query.fetch_all(self.pool()).await?;
        let mut tickets = Vec::with_capacity(rows.len());
        for row in rows {
            tickets.push(TicketSummary {
                id: row.try_get(0)?,
                number: row.try_get(1)?,
                subject: row.try_get(2)?,
                status: row.try_get(3)?,
                status_kind: row.try_get(4)?,
                team: row.try_get(5)?,
                follow_up_of: row.try_get(6)?,
                created_at: row.try_get(7)?,
                updated_at: row.try_get(8)?,
                message_count: row.try_get(9)?,
                contacts: Vec::new(),
            });
        }
        // One query for all contacts instead of one per ticket.
        let mut contacts = sqlx::query(
            "SELECT tc.ticket_id, c.email FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
             ORDER BY tc.ticket_id, CASE tc.role WHEN 'requester' THEN 0 ELSE 1 END, c.id",
        )
        .fetch(self.pool());
        let index: std::collections::HashMap<i64, usize> =
            tickets.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        use futures::TryStreamExt;
        while let Some(row) = contacts.try_next().await? {
            if let Some(&i) = index.get(&row.try_get::<i64, _>(0)?) {
                tickets[i].contacts.push(row.try_get(1)?);
            }
        }
        Ok(tickets)
    }

    /// Tickets, optionally only those in a status (by name or by kind).
    pub async fn ticket_list(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<TicketSummary>, sqlx::Error> {
        match status {
            Some(s) => {
                self.summaries(
                    "AND (s.name = $1 OR s.kind = $1)",
                    Some(Bind::Text(s.to_string())),
                )
                .await
            }
            None => self.summaries("", None).await,
        }
    }

    /// A ticket by number (or id, which the CLI accepts as `#id`), with its messages.
    pub async fn ticket_show(&self, number: i64) -> Result<Option<TicketView>, sqlx::Error> {
        let Some(ticket) = self
            .summaries("AND t.number = $1", Some(Bind::Int(number)))
            .await
            .map(|mut v| v.pop())?
        else {
            return Ok(None);
        };
        let messages = self.ticket_messages(ticket.id).await?;
        Ok(Some(TicketView { ticket, messages }))
    }

    pub async fn ticket_messages(&self, ticket_id: i64) -> Result<Vec<MessageView>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, message_id, direction, from_addr, from_name, to_addrs, cc_addrs, subject, received_at,
               sent_at, flags, body_text, body_html, delivery_state, delivery_detail
             FROM messages WHERE ticket_id = $1 ORDER BY id",
        )
        .bind(ticket_id)
        .fetch_all(self.pool())
        .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let attachments =
                sqlx::query("SELECT filename FROM attachments WHERE message_id = $1 ORDER BY id")
                    .bind(id)
                    .fetch_all(self.pool())
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<Vec<String>, _>>()?;
            let flags: String = row.try_get(10)?;
            messages.push(MessageView {
                id,
                message_id: row.try_get(1)?,
                direction: row.try_get(2)?,
                from: row.try_get(3)?,
                from_name: row.try_get(4)?,
                to: addresses(&row.try_get::<String, _>(5)?),
                cc: addresses(&row.try_get::<String, _>(6)?),
                subject: row.try_get(7)?,
                received_at: row.try_get(8)?,
                sent_at: row.try_get(9)?,
                flags: flags
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(str::to_string)
                    .collect(),
                body_text: row.try_get(11)?,
                has_html: row.try_get::<Option<String>, _>(12)?.is_some(),
                delivery_state: row.try_get(13)?,
                delivery_detail: row.try_get(14)?,
                attachments,
            });
        }
        Ok(messages)
    }

    /// Every ticket with its messages, in ticket-number order.
    pub async fn export(&self) -> Result<Vec<TicketView>, sqlx::Error> {
        let mut out = Vec::new();
        for ticket in self.summaries("", None).await? {
            let messages = self.ticket_messages(ticket.id).await?;
            out.push(TicketView { ticket, messages });
        }
        Ok(out)
    }

    /// Counts of the main tables, for summaries and tests.
    pub async fn counts(&self) -> Result<Counts, sqlx::Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tickets), (SELECT COUNT(*) FROM messages),
                    (SELECT COUNT(*) FROM contacts), (SELECT COUNT(*) FROM quarantine),
                    (SELECT COUNT(*) FROM receipts)",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(Counts {
            tickets: row.try_get(0)?,
            messages: row.try_get(1)?,
            contacts: row.try_get(2)?,
            quarantined: row.try_get(3)?,
            receipts: row.try_get(4)?,
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub tickets: i64,
    pub messages: i64,
    pub contacts: i64,
    pub quarantined: i64,
    pub receipts: i64,
}

impl Store {
    /// Moves a ticket to a status of its pipeline (by name) and records the
    /// change. Returns false when the ticket or status does not exist.
    pub async fn set_ticket_status(
        &self,
        number: i64,
        status: &str,
        actor: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = super::now_ms();
        let mut w = self.begin_write().await?;
        let Some(row) = sqlx::query(
            "SELECT t.id, t.status_id, s.id FROM tickets t JOIN statuses s ON s.pipeline_id = t.pipeline_id
             WHERE t.number = $1 AND s.name = $2",
        )
        .bind(number)
        .bind(status)
        .fetch_optional(&mut *w.tx)
        .await?
        else {
            return Ok(false);
        };
        let (ticket_id, from, to): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        sqlx::query("UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $2 WHERE id = $3")
            .bind(to)
            .bind(now)
            .bind(ticket_id)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at) VALUES ($1, 'status_changed', $2, $3, $4)")
            .bind(ticket_id)
            .bind(serde_json::json!({ "from": from, "to": to }).to_string())
            .bind(actor)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(true)
    }
}
