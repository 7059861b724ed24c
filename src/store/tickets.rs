//! Tickets: the read-outs for ops, tests and benchmarks (list, one ticket
//! with its messages, the JSON Lines export, counts) and status changes.

use std::collections::HashMap;

use futures::TryStreamExt;
use serde::Serialize;

use super::messages::MessageView;
use super::sql::{contains_pattern, Binds};
use super::{now_ms, Store};

#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow, utoipa::ToSchema)]
pub struct TicketSummary {
    /// The row id (API calls take the number).
    pub id: i64,
    pub number: i64,
    pub subject: String,
    pub status: String,
    pub status_kind: String,
    pub team: String,
    pub pipeline: String,
    /// The owner's agent key.
    pub owner: Option<String>,
    pub company_id: Option<i64>,
    #[sqlx(skip)]
    pub contacts: Vec<String>,
    #[sqlx(skip)]
    pub message_count: i64,
    pub follow_up_of: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set on a deleted ticket (only admins list those).
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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

/// Which tickets a list wants; every filter is optional. Newest change
/// first, `limit` at a time, continuing after `after` (a cursor).
#[derive(Debug, Clone, Default)]
pub struct TicketQuery {
    /// Only these teams (an agent's); None for all.
    pub teams: Option<Vec<i64>>,
    pub number: Option<i64>,
    /// A status name or kind.
    pub status: Option<String>,
    pub team: Option<i64>,
    /// Some(None): tickets without an owner.
    pub owner: Option<Option<i64>>,
    pub contact: Option<i64>,
    pub company: Option<i64>,
    /// Text in the subject (case-insensitive).
    pub text: Option<String>,
    pub updated_since: Option<i64>,
    /// Deleted tickets instead of live ones.
    pub deleted: bool,
    /// (updated_at, id) of the last ticket of the previous page.
    pub after: Option<(i64, i64)>,
    /// None: every ticket, in number order (ops read-outs, the export).
    pub limit: Option<i64>,
}

const SUMMARY: &str =
    "SELECT t.id, t.number, t.subject, s.name AS status, s.kind AS status_kind, tm.key AS team,
       p.key AS pipeline, ag.key AS owner, t.company_id, t.follow_up_of, t.created_at, t.updated_at,
       t.deleted_at
     FROM tickets t JOIN statuses s ON s.id = t.status_id JOIN teams tm ON tm.id = t.team_id
     JOIN pipelines p ON p.id = t.pipeline_id LEFT JOIN agents ag ON ag.id = t.owner_agent_id";

impl Store {
    /// Tickets as `query` asks, with their contacts.
    pub async fn tickets(&self, query: &TicketQuery) -> Result<Vec<TicketSummary>, sqlx::Error> {
        let mut binds = Binds::new(self.backend());
        let mut sql = format!("{SUMMARY} WHERE ");
        sql.push_str(match query.deleted {
            true => "t.deleted_at IS NOT NULL",
            false => "t.deleted_at IS NULL",
        });
        // SQLite, without statistics, would pick a team index and sort every
        // ticket of the teams; the unary plus keeps it walking `updated_at`
        // to the first page (a help desk's teams each hold many tickets,
        // and an index on team and `updated_at` would cost every ingested
        // message an update). PostgreSQL decides from its statistics, which
        // the plus would hide from it.
        let team_column = match self.backend() {
            super::Backend::Sqlite => "+t.team_id",
            super::Backend::Postgres => "t.team_id",
        };
        if let Some(teams) = &query.teams {
            let list: Vec<String> = teams.iter().map(|t| binds.push(*t)).collect();
            match list.is_empty() {
                true => sql.push_str(" AND 1 = 0"),
                false => sql.push_str(&format!(" AND {team_column} IN ({})", list.join(", "))),
            }
        }
        if let Some(number) = query.number {
            sql.push_str(&format!(" AND t.number = {}", binds.push(number)));
        } else if query.limit.is_some() {
            // A merged ticket lives on in the other; it is found by number.
            sql.push_str(" AND t.merged_into IS NULL");
        }
        if let Some(status) = &query.status {
            let (a, b) = (binds.push(status.clone()), binds.push(status.clone()));
            sql.push_str(&format!(" AND (s.name = {a} OR s.kind = {b})"));
        }
        if let Some(team) = query.team {
            sql.push_str(&format!(" AND {team_column} = {}", binds.push(team)));
        }
        match query.owner {
            Some(None) => sql.push_str(" AND t.owner_agent_id IS NULL"),
            Some(Some(owner)) => {
                sql.push_str(&format!(" AND t.owner_agent_id = {}", binds.push(owner)))
            }
            None => {}
        }
        if let Some(contact) = query.contact {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM ticket_contacts tc WHERE tc.ticket_id = t.id AND tc.contact_id = {})",
                binds.push(contact)
            ));
        }
        if let Some(company) = query.company {
            sql.push_str(&format!(" AND t.company_id = {}", binds.push(company)));
        }
        if let Some(text) = &query.text {
            sql.push_str(&format!(
                " AND LOWER(t.subject) LIKE {} ESCAPE '\\'",
                binds.push(contains_pattern(text))
            ));
        }
        if let Some(since) = query.updated_since {
            sql.push_str(&format!(" AND t.updated_at >= {}", binds.push(since)));
        }
        if let Some((updated, id)) = query.after {
            let (a, b, c) = (binds.push(updated), binds.push(updated), binds.push(id));
            sql.push_str(&format!(
                " AND (t.updated_at < {a} OR (t.updated_at = {b} AND t.id < {c}))"
            ));
        }
        match query.limit {
            Some(limit) => sql.push_str(&format!(
                " ORDER BY t.updated_at DESC, t.id DESC LIMIT {}",
                binds.push(limit)
            )),
            None => sql.push_str(" ORDER BY t.number"),
        }
        let mut tickets: Vec<TicketSummary> = sqlx::query_as_with(&sql, binds.args)
            .fetch_all(self.pool())
            .await?;
        self.add_contacts(
            &mut tickets,
            query.limit.is_none() && query.number.is_none(),
        )
        .await?;
        Ok(tickets)
    }

    /// Fills in the tickets' contact addresses (requester first) and message
    /// counts: one query each for all (`every`: the whole table, for the
    /// export) or for these ids.
    async fn add_contacts(
        &self,
        tickets: &mut [TicketSummary],
        every: bool,
    ) -> Result<(), sqlx::Error> {
        if tickets.is_empty() {
            return Ok(());
        }
        let index: HashMap<i64, usize> =
            tickets.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let mut binds = Binds::new(self.backend());
        let condition = match every {
            true => String::new(),
            false => {
                let ids: Vec<String> = tickets.iter().map(|t| binds.push(t.id)).collect();
                format!("WHERE tc.ticket_id IN ({})", ids.join(", "))
            }
        };
        let sql = format!(
            "SELECT tc.ticket_id, c.email FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
             {condition} ORDER BY tc.ticket_id, CASE tc.role WHEN 'requester' THEN 0 ELSE 1 END, c.id"
        );
        let query = sqlx::query_as_with::<_, (i64, String), _>(&sql, binds.args);
        let mut contacts = query.fetch(self.pool());
        while let Some((ticket, email)) = contacts.try_next().await? {
            if let Some(&i) = index.get(&ticket) {
                tickets[i].contacts.push(email);
            }
        }
        drop(contacts);
        // Counted for the page only, after it is chosen.
        let mut binds = Binds::new(self.backend());
        let condition = match every {
            true => String::new(),
            false => {
                let ids: Vec<String> = tickets.iter().map(|t| binds.push(t.id)).collect();
                format!("WHERE ticket_id IN ({})", ids.join(", "))
            }
        };
        let sql =
            format!("SELECT ticket_id, COUNT(*) FROM messages {condition} GROUP BY ticket_id");
        let query = sqlx::query_as_with::<_, (Option<i64>, i64), _>(&sql, binds.args);
        let mut counts = query.fetch(self.pool());
        while let Some((ticket, count)) = counts.try_next().await? {
            if let Some(&i) = ticket.and_then(|t| index.get(&t)) {
                tickets[i].message_count = count;
            }
        }
        Ok(())
    }

    /// Tickets, optionally only those in a status (by name or by kind).
    pub async fn ticket_list(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<TicketSummary>, sqlx::Error> {
        let query = TicketQuery {
            status: status.map(str::to_string),
            ..TicketQuery::default()
        };
        self.tickets(&query).await
    }

    /// A live ticket by number, with its messages.
    pub async fn ticket_show(&self, number: i64) -> Result<Option<TicketView>, sqlx::Error> {
        let query = TicketQuery {
            number: Some(number),
            ..TicketQuery::default()
        };
        let Some(ticket) = self.tickets(&query).await?.pop() else {
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
        for ticket in self.tickets(&TicketQuery::default()).await? {
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
/// replies, read-outs follow `merged_into`), and its messages (with their
/// Message-IDs), comments, notifications, followers, drafts and contacts
/// move to `into`; its timeline stays, with the merge on it. Events are
/// the caller's: a person or a late parent did it. Only a live ticket into
/// a live one (the caller locked both): false, and nothing changed,
/// otherwise.
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
    // Everything on it moves to the survivor; what both have (a contact,
    // a follower, an agent's draft) stays as the survivor has it.
    const MOVE: &[&str] = &[
        "INSERT INTO ticket_contacts (ticket_id, contact_id, role)
         SELECT $1, contact_id, 'participant' FROM ticket_contacts WHERE ticket_id = $2
         ON CONFLICT (ticket_id, contact_id) DO NOTHING",
        "INSERT INTO followers (ticket_id, agent_id, created_at)
         SELECT $1, agent_id, created_at FROM followers WHERE ticket_id = $2
         ON CONFLICT (ticket_id, agent_id) DO NOTHING",
        "INSERT INTO drafts (ticket_id, agent_id, content, updated_at)
         SELECT $1, agent_id, content, updated_at FROM drafts WHERE ticket_id = $2
         ON CONFLICT (ticket_id, agent_id) DO NOTHING",
        "UPDATE messages SET ticket_id = $1 WHERE ticket_id = $2",
        "UPDATE message_refs SET ticket_id = $1 WHERE ticket_id = $2",
        "UPDATE outbox SET ticket_id = $1 WHERE ticket_id = $2",
        "UPDATE receipts SET ticket_id = $1 WHERE ticket_id = $2",
        "UPDATE comments SET ticket_id = $1 WHERE ticket_id = $2",
        "UPDATE notifications SET ticket_id = $1 WHERE ticket_id = $2",
    ];
    for sql in MOVE {
        sqlx::query(sql)
            .bind(into)
            .bind(ticket)
            .execute(&mut *conn)
            .await?;
    }
    for sql in [
        "DELETE FROM followers WHERE ticket_id = $1",
        "DELETE FROM drafts WHERE ticket_id = $1",
    ] {
        sqlx::query(sql).bind(ticket).execute(&mut *conn).await?;
    }
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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

impl Store {
    /// A ticket by number, read without a lock (drafts, read-outs).
    pub async fn ticket_ref(&self, number: i64) -> Result<Option<TicketRef>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, number, team_id, merged_into, deleted_at FROM tickets WHERE number = $1",
        )
        .bind(number)
        .fetch_optional(self.pool())
        .await
    }
}

impl Store {
    /// The number of the ticket `id` was merged into.
    pub async fn merged_number(&self, id: i64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT t2.number FROM tickets t JOIN tickets t2 ON t2.id = t.merged_into WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }
}
