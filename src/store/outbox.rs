//! The outbox: one row per outbound message to send, with its envelope (Bcc
//! recipients are not in the MIME), attempts and the relay's last answer.
//! Rows are claimed with a lease (`claimed_by`, `claimed_until`; PostgreSQL:
//! `FOR UPDATE SKIP LOCKED`), so several instances share the queue and a
//! claim held by a crashed process is taken over when it ends.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AnyConnection;

use super::directory::Directory;
use super::{blobs, events, now_ms, Backend, Store, Tx};
use crate::config::StatusKind;
use crate::mail::address::list_from_json;
use crate::mail::ids::SYNTHETIC_DOMAIN;

/// The PostgreSQL NOTIFY channel a queued reply is announced on.
pub const NOTIFY_CHANNEL: &str = "mailroom_outbox";

/// Where a reply's Sent copy goes, and how that went (`pending`, `done`,
/// `failed: …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentCopyState {
    pub channel: String,
    pub folder: String,
    pub state: String,
}

/// A claimed outbox row with the bytes to send.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub message: i64,
    pub ticket: i64,
    pub relay: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub raw: Arc<Vec<u8>>,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub sent_copy: Option<SentCopyState>,
    /// `reply` or `notification` (nothing recorded on the ticket for it).
    pub kind: String,
}

impl Claimed {
    fn is_reply(&self) -> bool {
        self.kind == "reply"
    }
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: i64,
    message_id: i64,
    ticket_id: i64,
    relay: String,
    mail_from: String,
    rcpt_to: String,
    raw_sha256: String,
    attempts: i64,
    sent_copy: Option<String>,
    kind: String,
}

/// What became of one send attempt, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted, with the relay's answer.
    Sent(String),
    /// Try again at `at` (unix ms); the answer is kept.
    Retry { answer: String, at: i64 },
    /// Never going to be delivered: failed, with the reason.
    Failed(String),
}

/// Counts by state, for `mailroom status`.
#[derive(Debug, Default, Serialize)]
pub struct OutboxCounts {
    pub queued: i64,
    pub sent: i64,
    pub failed: i64,
    /// Queued rows claimed right now (being sent, or left by a process
    /// that died: claimable again when the claim runs out).
    pub claimed: i64,
}

/// Claims that an earlier process of this instance left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftClaims {
    pub holder: String,
    pub replies: i64,
    /// When the last of them is claimable again.
    pub until: i64,
}

/// One row as `mailroom outbox list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    pub message: i64,
    pub ticket: i64,
    pub state: String,
    pub attempts: i64,
    pub rcpt_to: Vec<String>,
    pub last_answer: Option<String>,
    pub next_attempt_at: i64,
    pub relay: String,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    message_id: i64,
    number: i64,
    state: String,
    attempts: i64,
    rcpt_to: String,
    last_answer: Option<String>,
    next_attempt_at: i64,
    relay: String,
}

impl Store {
    /// Claims up to `limit` due rows of `relay` for `holder` until now +
    /// `lease_ms`; also says when its next row falls due if none is.
    pub async fn claim_outbox(
        &self,
        holder: &str,
        relay: &str,
        limit: usize,
        lease_ms: i64,
    ) -> Result<(Vec<Claimed>, Option<i64>), sqlx::Error> {
        let now = now_ms();
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE outbox SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1, updated_at = $3
             WHERE id IN (SELECT id FROM outbox
                          WHERE state = 'queued' AND relay = $5 AND next_attempt_at <= $3
                            AND (claimed_until IS NULL OR claimed_until < $3)
                          ORDER BY next_attempt_at, id LIMIT $4 {lock})
             RETURNING id, message_id, ticket_id, relay, mail_from, rcpt_to, raw_sha256, attempts, sent_copy, kind"
        );
        let mut w = self.begin_write().await?;
        let rows: Vec<ClaimRow> = sqlx::query_as(&sql)
            .bind(holder)
            .bind(now + lease_ms)
            .bind(now)
            .bind(limit as i64)
            .bind(relay)
            .fetch_all(&mut *w.tx)
            .await?;
        let next_due: Option<i64> = match rows.is_empty() {
            false => None,
            true => sqlx::query_scalar(
                "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at
                                     THEN claimed_until ELSE next_attempt_at END)
                     FROM outbox WHERE state = 'queued' AND relay = $1",
            )
            .bind(relay)
            .fetch_one(&mut *w.tx)
            .await?,
        };
        let mut claimed = Vec::with_capacity(rows.len());
        let mut raws: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        for row in rows {
            if !raws.contains_key(&row.raw_sha256) {
                let data = blobs::get(&mut w.tx, &row.raw_sha256).await?;
                raws.insert(row.raw_sha256.clone(), Arc::new(data));
            }
            claimed.push(Claimed {
                id: row.id,
                message: row.message_id,
                ticket: row.ticket_id,
                relay: row.relay,
                mail_from: row.mail_from,
                rcpt_to: serde_json::from_str(&row.rcpt_to).unwrap_or_default(),
                raw: raws[&row.raw_sha256].clone(),
                attempts: row.attempts,
                sent_copy: row.sent_copy.and_then(|s| serde_json::from_str(&s).ok()),
                kind: row.kind,
            });
        }
        w.commit().await?;
        Ok((claimed, next_due))
    }

    /// Records what became of claimed rows, in one transaction. A retry or
    /// failure is recorded only while `holder` still holds the claim, so a
    /// sender whose lease ran out cannot overwrite another's success; a
    /// success is recorded whoever holds it (it was sent).
    pub async fn record_deliveries(
        &self,
        dir: &Directory,
        holder: &str,
        done: &[(&Claimed, Delivery)],
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        for (row, delivery) in done {
            match delivery {
                Delivery::Sent(answer) => record_sent(&mut w.tx, row, answer, now).await?,
                Delivery::Retry { answer, at } => {
                    record_retry(&mut w.tx, row, holder, answer, *at, now).await?
                }
                Delivery::Failed(reason) => {
                    record_failed(&mut w.tx, dir, row, holder, reason, now).await?
                }
            }
        }
        w.commit().await
    }

    /// Keeps how the Sent copy of outbox row `id` went.
    pub async fn set_sent_copy(&self, id: i64, copy: &SentCopyState) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("UPDATE outbox SET sent_copy = $1 WHERE id = $2")
            .bind(serde_json::to_string(copy).unwrap_or_default())
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Relays that queued replies wait for.
    pub async fn queued_relays(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT relay FROM outbox WHERE state = 'queued'")
            .fetch_all(self.pool())
            .await
    }

    /// Rows in `state` (metrics read queued and failed: sent rows grow for ever).
    pub async fn outbox_count(&self, state: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = $1")
            .bind(state)
            .fetch_one(self.pool())
            .await
    }

    pub async fn outbox_counts(&self) -> Result<OutboxCounts, sqlx::Error> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM outbox GROUP BY state")
                .fetch_all(self.pool())
                .await?;
        let mut counts = OutboxCounts {
            claimed: sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE state = 'queued' AND claimed_until > $1",
            )
            .bind(super::now_ms())
            .fetch_one(self.pool())
            .await?,
            ..OutboxCounts::default()
        };
        for (state, n) in rows {
            match state.as_str() {
                "queued" => counts.queued = n,
                "sent" => counts.sent = n,
                "failed" => counts.failed = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Live claims held by other processes named `instance` (the part of a
    /// holder id before its first `/`) than `me`: after a crash and
    /// restart, the replies that were in flight.
    pub async fn left_claims(
        &self,
        instance: &str,
        me: &str,
    ) -> Result<Vec<LeftClaims>, sqlx::Error> {
        let prefix = format!("{instance}/");
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT claimed_by, COUNT(*), MAX(claimed_until) FROM outbox
             WHERE state = 'queued' AND claimed_until > $1 AND claimed_by <> $2
               AND substr(claimed_by, 1, $3) = $4
             GROUP BY claimed_by ORDER BY claimed_by",
        )
        .bind(super::now_ms())
        .bind(me)
        .bind(prefix.chars().count() as i32)
        .bind(&prefix)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(holder, replies, until)| LeftClaims {
                holder,
                replies,
                until,
            })
            .collect())
    }

    /// Outbox rows, newest first: queued and failed ones, or all.
    pub async fn outbox_list(&self, all: bool) -> Result<Vec<OutboxEntry>, sqlx::Error> {
        let filter = if all { "" } else { "WHERE o.state <> 'sent'" };
        let rows: Vec<EntryRow> = sqlx::query_as(&format!(
            "SELECT o.message_id, t.number, o.state, o.attempts, o.rcpt_to, o.last_answer, o.next_attempt_at, o.relay
             FROM outbox o JOIN tickets t ON t.id = o.ticket_id {filter} ORDER BY o.id DESC LIMIT 1000"
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxEntry {
                message: r.message_id,
                ticket: r.number,
                state: r.state,
                attempts: r.attempts,
                rcpt_to: serde_json::from_str(&r.rcpt_to).unwrap_or_default(),
                last_answer: r.last_answer,
                next_attempt_at: r.next_attempt_at,
                relay: r.relay,
            })
            .collect())
    }

    /// Puts a failed reply back in the queue (after fixing the relay, say).
    pub async fn outbox_retry(&self, message: i64) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = $1, updated_at = $1
             WHERE message_id = $2 AND state = 'failed'",
        )
        .bind(now)
        .bind(message)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if done > 0 {
            sqlx::query("UPDATE messages SET delivery_state = 'queued' WHERE id = $1")
                .bind(message)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await?;
        Ok(done > 0)
    }
}

async fn record_sent(
    tx: &mut Tx,
    row: &Claimed,
    answer: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let owned = sqlx::query(
        "UPDATE outbox SET state = 'sent', last_answer = $1, claimed_by = NULL, claimed_until = NULL,
           updated_at = $2 WHERE id = $3 AND state = 'queued'",
    )
    .bind(answer)
    .bind(now)
    .bind(row.id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if owned == 0 {
        tracing::warn!(
            message = row.message,
            "Reply was already recorded by another sender."
        );
        return Ok(());
    }
    sqlx::query(
        "UPDATE messages SET delivery_state = 'sent', delivery_detail = $1, sent_at = $2 WHERE id = $3",
    )
    .bind(answer)
    .bind(now)
    .bind(row.message)
    .execute(&mut **tx)
    .await?;
    if !row.is_reply() {
        return Ok(());
    }
    let data = json!({ "message": row.message, "answer": answer });
    events::insert(tx, row.ticket, "reply_sent", &data, "mailroom", now).await
}

async fn record_retry(
    tx: &mut Tx,
    row: &Claimed,
    holder: &str,
    answer: &str,
    at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let owned = sqlx::query(
        "UPDATE outbox SET last_answer = $1, next_attempt_at = $2, claimed_by = NULL,
           claimed_until = NULL, updated_at = $3
         WHERE id = $4 AND state = 'queued' AND claimed_by = $5",
    )
    .bind(answer)
    .bind(at)
    .bind(now)
    .bind(row.id)
    .bind(holder)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if owned == 0 {
        return Ok(()); // another sender holds it now
    }
    sqlx::query("UPDATE messages SET delivery_detail = $1 WHERE id = $2")
        .bind(format!("attempt {} failed: {answer}", row.attempts))
        .bind(row.message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A reply that will never be delivered: marked failed, explained in an
/// internal note, and the ticket moved back to an open status so nobody
/// thinks the customer was answered.
async fn record_failed(
    tx: &mut Tx,
    dir: &Directory,
    row: &Claimed,
    holder: &str,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let owned = sqlx::query(
        "UPDATE outbox SET state = 'failed', last_answer = $1, claimed_by = NULL, claimed_until = NULL,
           updated_at = $2 WHERE id = $3 AND state = 'queued' AND claimed_by = $4",
    )
    .bind(reason)
    .bind(now)
    .bind(row.id)
    .bind(holder)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if owned == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE messages SET delivery_state = 'failed', delivery_detail = $1 WHERE id = $2",
    )
    .bind(reason)
    .bind(row.message)
    .execute(&mut **tx)
    .await?;
    if !row.is_reply() {
        tracing::warn!(
            message = row.message,
            reason,
            "Notification mail was not delivered."
        );
        return Ok(());
    }
    note_failure(tx, dir, row.ticket, row.message, reason, now).await
}

#[derive(sqlx::FromRow)]
struct FailedReply {
    team_id: i64,
    subject: String,
    to_addrs: String,
    status_id: i64,
    pipeline_id: i64,
}

/// Puts an internal note on the ticket saying the reply failed and why, and
/// moves a waiting or closed ticket back to its pipeline's open status.
/// Used for final send failures and for bounces.
pub async fn note_failure(
    conn: &mut AnyConnection,
    dir: &Directory,
    ticket: i64,
    message: i64,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let reply: FailedReply = sqlx::query_as(
        "SELECT m.team_id, m.subject, m.to_addrs, t.status_id, t.pipeline_id
         FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE m.id = $1",
    )
    .bind(message)
    .fetch_one(&mut *conn)
    .await?;
    let to: Vec<String> = list_from_json(&reply.to_addrs)
        .into_iter()
        .map(|m| m.address)
        .collect();
    let subject = &reply.subject;
    let recipients = match to.is_empty() {
        true => "its recipients".to_string(),
        false => to.join(", "),
    };
    let body = format!(
        "The reply \"{subject}\" to {recipients} was not delivered.\n\n{reason}\n\nThe customer has not received it."
    );
    let note_id = format!("note.{message}.{now}{SYNTHETIC_DOMAIN}");
    sqlx::query(
        "INSERT INTO messages (ticket_id, team_id, direction, message_id, synthetic_id, from_addr, subject,
           body_text, flags, fingerprint, received_at)
         VALUES ($1, $2, 'internal', $3, 1, 'mailroom', $4, $5, 'delivery_failure', $3, $6)",
    )
    .bind(ticket)
    .bind(reply.team_id)
    .bind(&note_id)
    .bind(format!("Not delivered: {subject}"))
    .bind(body)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let data = json!({ "message": message, "reason": reason });
    events::insert(conn, ticket, "reply_failed", &data, "mailroom", now).await?;
    let is_open = dir
        .status(reply.status_id)
        .is_some_and(|s| s.kind == StatusKind::Open);
    let reopen = dir
        .pipeline_by_id(reply.pipeline_id)
        .map(|p| p.reopen_status);
    if let (false, Some(reopen)) = (is_open, reopen) {
        sqlx::query(
            "UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $2 WHERE id = $3",
        )
        .bind(reopen)
        .bind(now)
        .bind(ticket)
        .execute(&mut *conn)
        .await?;
        let data = json!({ "from": reply.status_id, "to": reopen, "reason": "reply_failed" });
        events::insert(conn, ticket, "status_changed", &data, "mailroom", now).await?;
    }
    Ok(())
}
