//! Tickets: the read-outs for ops, tests and benchmarks (list, one ticket
//! with its messages, the JSON Lines export, counts) and status changes.

use std::collections::HashMap;

use futures::TryStreamExt;
use serde::Serialize;

use super::messages::MessageView;
use super::{now_ms, Store};

#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct TicketSummary {
    pub id: i64,
    pub number: i64,
    pub subject: String,
    pub status: String,
    pub status_kind: String,
    pub team: String,
    #[sqlx(skip)]
    pub contacts: Vec<String>,
    pub message_count: i64,
    pub follow_up_of: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TicketView {
    #[serde(flatten)]
    pub ticket: TicketSummary,
    /// Where this ticket was merged into, by number (it lives on there).
    pub merged_into: Option<i64>,
    /// Tickets shown to be the same conversation (a late parent), for an
    /// agent to merge.
    pub related: Vec<Related>,
    pub messages: Vec<MessageView>,
}

/// Counts of the main tables, for summaries and tests.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    pub tickets: i64,
    pub messages: i64,
    pub contacts: i64,
    pub quarantined: i64,
    pub receipts: i64,
}

/// Which tickets a read-out wants.
enum Filter<'a> {
    All,
    Status(&'a str),
    Number(i64),
}

const SUMMARY: &str =
    "SELECT t.id, t.number, t.subject, s.name AS status, s.kind AS status_kind, tm.key AS team,
       t.follow_up_of, t.created_at, t.updated_at,
       (SELECT COUNT(*) FROM messages m WHERE m.ticket_id = t.id) AS message_count
     FROM tickets t JOIN statuses s ON s.id = t.status_id JOIN teams tm ON tm.id = t.team_id
     WHERE t.deleted_at IS NULL";

impl Store {
    async fn summaries(&self, filter: Filter<'_>) -> Result<Vec<TicketSummary>, sqlx::Error> {
        let condition = match filter {
            Filter::All => "",
            Filter::Status(_) => "AND (s.name = $1 OR s.kind = $1)",
            Filter::Number(_) => "AND t.number = $1",
        };
        let sql = format!("{SUMMARY} {condition} ORDER BY t.number");
        let query = sqlx::query_as::<_, TicketSummary>(&sql);
        let query = match filter {
            Filter::All => query,
            Filter::Status(s) => query.bind(s),
            Filter::Number(n) => query.bind(n),
        };
        let mut tickets = query.fetch_all(self.pool()).await?;
        // One query for all contacts instead of one per ticket.
        let index: HashMap<i64, usize> =
            tickets.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        // One ticket (show, the API): its contacts only.
        let only = match (&filter, tickets.as_slice()) {
            (Filter::Number(_), [one]) => Some(one.id),
            _ => None,
        };
        let sql = format!(
            "SELECT tc.ticket_id, c.email FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
             {} ORDER BY tc.ticket_id, CASE tc.role WHEN 'requester' THEN 0 ELSE 1 END, c.id",
            if only.is_some() { "WHERE tc.ticket_id = $1" } else { "" }
        );
        let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
        if let Some(id) = only {
            query = query.bind(id);
        }
        let mut contacts = query.fetch(self.pool());
        while let Some((ticket, email)) = contacts.try_next().await? {
            if let Some(&i) = index.get(&ticket) {
                tickets[i].contacts.push(email);
            }
        }
        Ok(tickets)
    }

    /// Tickets, optionally only those in a status (by name or by kind).
    pub async fn ticket_list(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<TicketSummary>, sqlx::Error> {
        self.summaries(status.map_or(Filter::All, Filter::Status))
            .await
    }

    /// A ticket by number, with its messages.
    pub async fn ticket_show(&self, number: i64) -> Result<Option<TicketView>, sqlx::Error> {
        let Some(ticket) = self.summaries(Filter::Number(number)).await?.pop() else {
            return Ok(None);
        };
        let view = self.view(ticket).await?;
        Ok(Some(view))
    }

    async fn view(&self, ticket: TicketSummary) -> Result<TicketView, sqlx::Error> {
        let messages = self.ticket_messages(ticket.id).await?;
        let related = self.related_tickets(ticket.id).await?;
        let merged_into = sqlx::query_scalar(
            "SELECT t2.number FROM tickets t JOIN tickets t2 ON t2.id = t.merged_into WHERE t.id = $1",
        )
        .bind(ticket.id)
        .fetch_optional(self.pool())
        .await?;
        Ok(TicketView {
            ticket,
            merged_into,
            related,
            messages,
        })
    }

    /// Every ticket with its messages, in ticket-number order.
    pub async fn export(&self) -> Result<Vec<TicketView>, sqlx::Error> {
        let mut out = Vec::new();
        for ticket in self.summaries(Filter::All).await? {
            out.push(self.view(ticket).await?);
        }
        Ok(out)
    }

    /// The number of the ticket with this id.
    pub async fn ticket_number(&self, id: i64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT number FROM tickets WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    pub async fn counts(&self) -> Result<Counts, sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM tickets) AS tickets, (SELECT COUNT(*) FROM messages) AS messages,
                    (SELECT COUNT(*) FROM contacts) AS contacts, (SELECT COUNT(*) FROM quarantine) AS quarantined,
                    (SELECT COUNT(*) FROM receipts) AS receipts",
        )
        .fetch_one(self.pool())
        .await
    }

    /// Moves a ticket to a status of its pipeline (by name) and records the
    /// change. Returns false when the ticket or status does not exist.
    pub async fn set_ticket_status(
        &self,
        number: i64,
        status: &str,
        actor: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let Some((ticket_id, from, to)) = sqlx::query_as::<_, (i64, i64, i64)>(
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
        sqlx::query("UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $2 WHERE id = $3")
            .bind(to)
            .bind(now)
            .bind(ticket_id)
            .execute(&mut *w.tx)
            .await?;
        let data = serde_json::json!({ "from": from, "to": to });
        super::events::insert(&mut w.tx, ticket_id, "status_changed", &data, actor, now).await?;
        w.commit().await?;
        Ok(true)
    }
}

/// Merges `ticket` into `into`: it resolves to `into` from now on (threading,
/// replies, read-outs follow `merged_into`), and its contacts take part in
/// `into`. Events are the caller's: a person or a late parent did it. Only
/// a live ticket into a live one (the caller locked both): false, and
/// nothing changed, otherwise.
pub async fn merge_into(
    conn: &mut sqlx::AnyConnection,
    ticket: i64,
    into: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let merged = sqlx::query(
        "UPDATE tickets SET merged_into = $1, updated_at = $2
         WHERE id = $3 AND merged_into IS NULL AND deleted_at IS NULL
           AND EXISTS (SELECT 1 FROM tickets t WHERE t.id = $1 AND t.merged_into IS NULL AND t.deleted_at IS NULL)",
    )
    .bind(into)
    .bind(now)
    .bind(ticket)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !merged {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO ticket_contacts (ticket_id, contact_id, role)
         SELECT $1, contact_id, 'participant' FROM ticket_contacts WHERE ticket_id = $2
         ON CONFLICT (ticket_id, contact_id) DO NOTHING",
    )
    .bind(into)
    .bind(ticket)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tickets SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(into)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// A ticket a person acts on: its id, team and whether it is live.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TicketRef {
    pub id: i64,
    pub number: i64,
    pub team_id: i64,
    pub merged_into: Option<i64>,
    pub deleted_at: Option<i64>,
}

/// The related tickets recorded on a ticket's timeline (late parents that
/// showed two tickets are one conversation), by number, oldest first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Related {
    pub ticket: i64,
    pub reason: String,
}

impl Store {
    /// Two tickets by number, locked in id order for the rest of the
    /// transaction on PostgreSQL (as an ingest batch's merge locks them, so
    /// the two cannot deadlock).
    pub async fn tickets_for_update(
        &self,
        tx: &mut super::Tx,
        numbers: [i64; 2],
    ) -> Result<Vec<TicketRef>, sqlx::Error> {
        let lock = match self.backend() {
            super::Backend::Postgres => "FOR UPDATE",
            super::Backend::Sqlite => "",
        };
        sqlx::query_as(&format!(
            "SELECT id, number, team_id, merged_into, deleted_at FROM tickets
             WHERE number IN ($1, $2) ORDER BY id {lock}"
        ))
        .bind(numbers[0])
        .bind(numbers[1])
        .fetch_all(&mut **tx)
        .await
    }

    /// The tickets a ticket's timeline links it to.
    pub async fn related_tickets(&self, ticket: i64) -> Result<Vec<Related>, sqlx::Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT data FROM ticket_events WHERE ticket_id = $1 AND kind = 'related_ticket' ORDER BY id",
        )
        .bind(ticket)
        .fetch_all(self.pool())
        .await?;
        let mut related: Vec<Related> = Vec::new();
        for (data,) in rows {
            let value: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
            if let (Some(number), Some(reason)) =
                (value["ticket"].as_i64(), value["reason"].as_str())
            {
                if !related.iter().any(|r| r.ticket == number) {
                    related.push(Related {
                        ticket: number,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        Ok(related)
    }
}
