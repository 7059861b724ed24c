//! The outbox worker: claims due rows, sends each through its relay, and
//! records what happened. Claims carry a lease (`claimed_until`) so several
//! instances share the queue (PostgreSQL: `FOR UPDATE SKIP LOCKED`) and a
//! reply claimed by an instance that died is taken over when its lease ends.
//! Outcomes of sends that finish together are recorded in one transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::Row;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::smtp::{Relay, SendOutcome};
use crate::channel::imap::ImapChannel;
use crate::config::{Config, StatusKind};
use crate::pipeline::parse::SYNTHETIC_DOMAIN;
use crate::store::directory::Directory;
use crate::store::{classify_error, now_ms, Backend, ErrorClass, Store};

/// The PostgreSQL NOTIFY channel a queued reply is announced on.
pub const NOTIFY_CHANNEL: &str = "mailroom_outbox";

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
    pub sent_copy: Option<String>,
}

/// Counts by state, for `mailroom status`.
#[derive(Debug, Default, serde::Serialize)]
pub struct OutboxCounts {
    pub queued: i64,
    pub sent: i64,
    pub failed: i64,
}

pub struct Outbox {
    store: Store,
    dir: Arc<Directory>,
    config: Arc<Config>,
    relays: HashMap<String, Arc<Relay>>,
    instance: String,
    /// Signalled when a reply is queued in this process, so it goes out at
    /// once instead of at the next poll.
    pub wake: Arc<Notify>,
}

impl Outbox {
    pub fn new(store: Store, dir: Arc<Directory>, config: Arc<Config>) -> Outbox {
        let relays = config
            .relays
            .iter()
            .map(|(name, relay)| (name.clone(), Arc::new(Relay::new(name, relay))))
            .collect();
        Outbox {
            instance: config.instance.holder_id(),
            store,
            dir,
            config,
            relays,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Sends until `shutdown`; a send in progress is finished and recorded first.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Replies queued by other instances or `mailroom reply` wake us at
        // once on PostgreSQL; `poll_interval_ms` remains the fallback.
        self.store.on_notify(NOTIFY_CHANNEL, self.wake.clone());
        // A warning only: the database may be briefly away, and the worker
        // copes with that on its own.
        let queued_relays = sqlx::query("SELECT DISTINCT relay FROM outbox WHERE state = 'queued'")
            .fetch_all(self.store.pool())
            .await
            .unwrap_or_default();
        for row in queued_relays {
            let relay: String = row.try_get(0).unwrap_or_default();
            if !self.relays.contains_key(&relay) {
                tracing::error!(%relay, "Replies are queued for a relay that is not configured; they wait until it is added back.");
            }
        }
        self.pump(Some(shutdown)).await;
        Ok(())
    }

    /// Sends everything due now and returns how many rows were handled
    /// (`mailroom outbox flush`, tests).
    pub async fn run_until_idle(self: &Arc<Self>) -> usize {
        self.pump(None).await
    }

    async fn pump(self: &Arc<Self>, shutdown: Option<CancellationToken>) -> usize {
        let mut inflight: JoinSet<(Claimed, SendOutcome)> = JoinSet::new();
        // Sends in flight per relay. Rows are claimed per relay, only as many
        // as it has free slots, so a claimed row starts sending at once and
        // its lease never runs down while it waits behind others.
        let mut busy: HashMap<String, usize> = HashMap::new();
        // Which relay each task sends to, so a task that panics still frees
        // its slot.
        let mut task_relay: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut handled = 0;
        let mut stopping = false;
        let mut failures = 0u32;
        loop {
            let mut idle_for = Duration::from_millis(self.config.outbox.poll_interval_ms);
            let mut claimed_any = false;
            let mut next_due: Option<i64> = None;
            if !stopping {
                for (name, relay) in &self.relays {
                    let free = (relay.pool_size()).saturating_sub(*busy.get(name).unwrap_or(&0));
                    if free == 0 {
                        continue;
                    }
                    match self.claim(name, free).await {
                        Ok((rows, due)) => {
                            failures = 0;
                            next_due = match (next_due, due) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            };
                            for row in rows {
                                claimed_any = true;
                                *busy.entry(name.clone()).or_default() += 1;
                                let me = self.clone();
                                let task = inflight.spawn(async move { me.send(row).await });
                                task_relay.insert(task.id(), name.clone());
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            idle_for = crate::pipeline::backoff(failures);
                            tracing::error!(relay = %name, error = %e, "Cannot claim outbox rows; retrying.");
                            // `flush`: finish what is in flight, then stop.
                            if shutdown.is_none() {
                                stopping = true;
                            }
                        }
                    }
                }
                if let Some(due) = next_due {
                    // At least a few ms: a due row locked by another
                    // instance's claim in progress must not make this spin.
                    let wait = (due - now_ms()).max(10) as u64;
                    idle_for = idle_for.min(Duration::from_millis(wait));
                }
                if !claimed_any && inflight.is_empty() && shutdown.is_none() {
                    return handled;
                }
            }
            let stop = async {
                match &shutdown {
                    Some(s) if !stopping => s.cancelled().await,
                    _ => std::future::pending().await,
                }
            };
            if inflight.is_empty() {
                if stopping {
                    return handled;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(idle_for) => {}
                    _ = stop => stopping = true,
                }
                continue;
            }
            tokio::select! {
                Some(joined) = inflight.join_next_with_id() => {
                    let mut joins = vec![joined];
                    while let Some(joined) = inflight.try_join_next_with_id() {
                        joins.push(joined);
                    }
                    let mut done = Vec::new();
                    for joined in joins {
                        let id = match &joined {
                            Ok((id, _)) => *id,
                            Err(e) => e.id(),
                        };
                        if let Some(relay) = task_relay.remove(&id) {
                            if let Some(n) = busy.get_mut(&relay) {
                                *n = n.saturating_sub(1);
                            }
                        }
                        match joined {
                            Ok((_, result)) => done.push(result),
                            // The claim stays until its lease ends; then the
                            // reply is tried again.
                            Err(e) => tracing::error!(error = %e, "A send task failed."),
                        }
                    }
                    handled += done.len();
                    self.record_all(done).await;
                }
                _ = self.wake.notified() => {}
                // Rows of other relays fall due while sends are in flight.
                _ = tokio::time::sleep(idle_for) => {}
                _ = stop => stopping = true,
            }
        }
    }

    /// Sends one claimed row, waiting for a free slot on its relay.
    async fn send(self: Arc<Self>, row: Claimed) -> (Claimed, SendOutcome) {
        let Some(relay) = self.relays.get(&row.relay).cloned() else {
            let outcome = SendOutcome::Temporary(format!(
                "relay {:?} is not configured any more; add it back or re-queue the reply",
                row.relay
            ));
            return (row, outcome);
        };
        let _slot = relay.slots.clone().acquire_owned().await;
        let outcome = relay
            .send(&self.store, &row.mail_from, &row.rcpt_to, &row.raw)
            .await;
        (row, outcome)
    }

    /// Claims up to `limit` due rows of `relay`; also says when its next one
    /// falls due.
    async fn claim(
        &self,
        relay: &str,
        limit: usize,
    ) -> Result<(Vec<Claimed>, Option<i64>), sqlx::Error> {
        let now = now_ms();
        let lease = now + (self.config.outbox.lease_secs * 1000) as i64;
        let lock = match self.store.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE outbox SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1, updated_at = $3
             WHERE id IN (SELECT id FROM outbox
                          WHERE state = 'queued' AND relay = $5 AND next_attempt_at <= $3
                            AND (claimed_until IS NULL OR claimed_until < $3)
                          ORDER BY next_attempt_at, id LIMIT $4 {lock})
             RETURNING id, message_id, ticket_id, relay, mail_from, rcpt_to, raw_sha256, attempts, sent_copy"
        );
        let mut w = self.store.begin_write().await?;
        let rows = sqlx::query(&sql)
            .bind(&self.instance)
            .bind(lease)
            .bind(now)
            .bind(limit as i64)
            .bind(relay)
            .fetch_all(&mut *w.tx)
            .await?;
        let next_due = if rows.is_empty() {
            sqlx::query(
                "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at
                                 THEN claimed_until ELSE next_attempt_at END)
                 FROM outbox WHERE state = 'queued' AND relay = $1",
            )
            .bind(relay)
            .fetch_one(&mut *w.tx)
            .await?
            .try_get::<Option<i64>, _>(0)?
        } else {
            None
        };
        let mut claimed = Vec::with_capacity(rows.len());
        let mut blobs: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        for row in &rows {
            let sha: String = row.try_get(6)?;
            if !blobs.contains_key(&sha) {
                let data: Vec<u8> = sqlx::query("SELECT data FROM blobs WHERE sha256 = $1")
                    .bind(&sha)
                    .fetch_one(&mut *w.tx)
                    .await?
                    .try_get(0)?;
                blobs.insert(sha.clone(), Arc::new(data));
            }
            claimed.push(Claimed {
                id: row.try_get(0)?,
                message: row.try_get(1)?,
                ticket: row.try_get(2)?,
                relay: row.try_get(3)?,
                mail_from: row.try_get(4)?,
                rcpt_to: serde_json::from_str(&row.try_get::<String, _>(5)?).unwrap_or_default(),
                raw: blobs[&sha].clone(),
                attempts: row.try_get(7)?,
                sent_copy: row.try_get(8)?,
            });
        }
        w.commit().await?;
        Ok((claimed, next_due))
    }

    /// Records outcomes; retried with backoff while the database is down, as
    /// a lost "sent" record would send the reply again after the lease. If
    /// the batch keeps failing for another reason, rows are recorded one by
    /// one so one bad row does not hold up the others.
    async fn record_all(self: &Arc<Self>, done: Vec<(Claimed, SendOutcome)>) {
        let mut attempt = 0;
        loop {
            match self.record(&done).await {
                Ok(()) => break,
                Err(e) if classify_error(&e) == ErrorClass::Permanent || attempt >= 20 => {
                    tracing::error!(error = %e, "Cannot record outbox results together; recording one by one.");
                    for one in &done {
                        if let Err(e) = self.record(std::slice::from_ref(one)).await {
                            tracing::error!(message = one.0.message, error = %e, "Cannot record an outbox result; its lease will expire and it may be sent again.");
                        }
                    }
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::error!(error = %e, attempt, "Cannot record outbox results; retrying.");
                    tokio::time::sleep(crate::pipeline::backoff(attempt)).await;
                }
            }
        }
        for (row, outcome) in done {
            let result = match &outcome {
                SendOutcome::Sent(_) => "sent",
                SendOutcome::Temporary(_)
                    if row.attempts < i64::from(self.config.outbox.max_attempts) =>
                {
                    "retry"
                }
                _ => "failed",
            };
            metrics::counter!("mailroom_replies_total", "relay" => row.relay.clone(), "result" => result)
                .increment(1);
            match &outcome {
                SendOutcome::Sent(answer) => {
                    tracing::info!(message = row.message, ticket = row.ticket, relay = %row.relay, %answer, "Reply sent.");
                    if let Some(copy) = row.sent_copy.clone() {
                        let me = self.clone();
                        tokio::spawn(async move { me.append_sent_copy(&row, &copy).await });
                    }
                }
                SendOutcome::Temporary(answer) => {
                    tracing::warn!(message = row.message, attempts = row.attempts, relay = %row.relay, %answer, "Reply not sent yet; will retry.")
                }
                SendOutcome::Permanent(answer) => {
                    tracing::error!(message = row.message, relay = %row.relay, %answer, "Reply refused by the relay.")
                }
            }
        }
    }

    fn retry_delay(&self, attempts: i64) -> i64 {
        let c = &self.config.outbox;
        let shift = (attempts.max(1) - 1).min(30) as u32;
        c.retry_base_ms
            .saturating_mul(1u64 << shift)
            .min(c.retry_max_ms.max(c.retry_base_ms)) as i64
    }

    async fn record(&self, done: &[(Claimed, SendOutcome)]) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut w = self.store.begin_write().await?;
        let tx = &mut w.tx;
        for (row, outcome) in done {
            let final_failure = match outcome {
                SendOutcome::Sent(answer) => {
                    // Recorded even if the claim was lost meanwhile: it was sent.
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
                        continue;
                    }
                    sqlx::query(
                        "UPDATE messages SET delivery_state = 'sent', delivery_detail = $1, sent_at = $2 WHERE id = $3",
                    )
                    .bind(answer)
                    .bind(now)
                    .bind(row.message)
                    .execute(&mut **tx)
                    .await?;
                    event(
                        tx,
                        row.ticket,
                        "reply_sent",
                        json!({ "message": row.message, "answer": answer }),
                        now,
                    )
                    .await?;
                    None
                }
                SendOutcome::Temporary(answer)
                    if row.attempts < i64::from(self.config.outbox.max_attempts) =>
                {
                    let next = now + self.retry_delay(row.attempts);
                    let owned = sqlx::query(
                        "UPDATE outbox SET last_answer = $1, next_attempt_at = $2, claimed_by = NULL,
                           claimed_until = NULL, updated_at = $3
                         WHERE id = $4 AND state = 'queued' AND claimed_by = $5",
                    )
                    .bind(answer)
                    .bind(next)
                    .bind(now)
                    .bind(row.id)
                    .bind(&self.instance)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if owned == 0 {
                        continue; // another sender holds it now
                    }
                    sqlx::query("UPDATE messages SET delivery_detail = $1 WHERE id = $2")
                        .bind(format!("attempt {} failed: {answer}", row.attempts))
                        .bind(row.message)
                        .execute(&mut **tx)
                        .await?;
                    None
                }
                SendOutcome::Temporary(answer) => Some(format!(
                    "gave up after {} attempts; last answer: {answer}",
                    row.attempts
                )),
                SendOutcome::Permanent(answer) => Some(answer.clone()),
            };
            if let Some(reason) = final_failure {
                self.fail(tx, row, &reason, now).await?;
            }
        }
        w.commit().await
    }

    /// A reply that will never be delivered: marked failed, explained in an
    /// internal note, and the ticket moved back to an open status so nobody
    /// thinks the customer was answered.
    async fn fail(
        &self,
        tx: &mut crate::store::Tx,
        row: &Claimed,
        reason: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        // Only the current claimant may fail a reply: a sender whose lease
        // ran out must not overwrite another sender's success.
        let owned = sqlx::query(
            "UPDATE outbox SET state = 'failed', last_answer = $1, claimed_by = NULL, claimed_until = NULL,
               updated_at = $2 WHERE id = $3 AND state = 'queued' AND claimed_by = $4",
        )
        .bind(reason)
        .bind(now)
        .bind(row.id)
        .bind(&self.instance)
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
        note_failure(tx, &self.dir, row.ticket, row.message, reason, now).await
    }

    async fn append_sent_copy(&self, row: &Claimed, copy: &str) {
        let target: serde_json::Value = serde_json::from_str(copy).unwrap_or_default();
        let (Some(channel), Some(folder)) = (target["channel"].as_str(), target["folder"].as_str())
        else {
            return;
        };
        let result = match self.config.channels.get(channel) {
            None => Err(format!("channel {channel} is not configured")),
            Some(config) => match ImapChannel::new(channel, config, u64::MAX) {
                Err(e) => Err(e.to_string()),
                Ok(imap) => imap
                    .append_copy(&self.store, folder, &row.raw)
                    .await
                    .map_err(|e| e.to_string()),
            },
        };
        let state = match &result {
            Ok(()) => "done".to_string(),
            Err(e) => {
                tracing::warn!(message = row.message, %channel, %folder, error = %e, "Could not put the sent reply in the Sent folder.");
                format!("failed: {e}")
            }
        };
        let update = async {
            let mut w = self.store.begin_write().await?;
            sqlx::query("UPDATE outbox SET sent_copy = $1 WHERE id = $2")
                .bind(json!({ "channel": channel, "folder": folder, "state": state }).to_string())
                .bind(row.id)
                .execute(&mut *w.tx)
                .await?;
            w.commit().await
        };
        if let Err(e) = update.await {
            tracing::warn!(error = %e, "Cannot record the Sent copy's state.");
        }
    }
}

async fn event(
    tx: &mut sqlx::AnyConnection,
    ticket: i64,
    kind: &str,
    data: serde_json::Value,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at) VALUES ($1, $2, $3, 'mailroom', $4)",
    )
    .bind(ticket)
    .bind(kind)
    .bind(data.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Puts an internal note on the ticket saying the reply failed and why, and
/// moves a waiting or closed ticket back to its pipeline's open status.
pub(crate) async fn note_failure(
    tx: &mut sqlx::AnyConnection,
    dir: &Directory,
    ticket: i64,
    message: i64,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let row = sqlx::query(
        "SELECT m.team_id, m.subject, m.to_addrs, t.status_id, t.pipeline_id
         FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE m.id = $1",
    )
    .bind(message)
    .fetch_one(&mut *tx)
    .await?;
    let (team_id, subject, to, status_id, pipeline_id): (i64, String, String, i64, i64) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    );
    let to: Vec<String> = serde_json::from_str(&to).unwrap_or_default();
    let body = format!(
        "The reply \"{subject}\" to {} was not delivered.\n\n{reason}\n\nThe customer has not received it.",
        if to.is_empty() { "its recipients".to_string() } else { to.join(", ") }
    );
    let note_id = format!("note.{message}.{now}{SYNTHETIC_DOMAIN}");
    sqlx::query(
        "INSERT INTO messages (ticket_id, team_id, direction, message_id, synthetic_id, from_addr, subject,
           body_text, flags, fingerprint, received_at)
         VALUES ($1, $2, 'internal', $3, 1, 'mailroom', $4, $5, 'delivery_failure', $3, $6)",
    )
    .bind(ticket)
    .bind(team_id)
    .bind(&note_id)
    .bind(format!("Not delivered: {subject}"))
    .bind(body)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    event(
        tx,
        ticket,
        "reply_failed",
        json!({ "message": message, "reason": reason }),
        now,
    )
    .await?;
    let is_open = dir
        .status(status_id)
        .is_some_and(|s| s.kind == StatusKind::Open);
    let reopen = dir
        .pipelines
        .values()
        .find(|p| p.id == pipeline_id)
        .map(|p| p.reopen_status);
    if let (false, Some(reopen)) = (is_open, reopen) {
        sqlx::query(
            "UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $2 WHERE id = $3",
        )
        .bind(reopen)
        .bind(now)
        .bind(ticket)
        .execute(&mut *tx)
        .await?;
        event(
            tx,
            ticket,
            "status_changed",
            json!({ "from": status_id, "to": reopen, "reason": "reply_failed" }),
            now,
        )
        .await?;
    }
    Ok(())
}

impl Store {
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, sqlx::Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM outbox GROUP BY state")
            .fetch_all(self.pool())
            .await?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let n: i64 = row.try_get(1)?;
            match row.try_get::<String, _>(0)?.as_str() {
                "queued" => counts.queued = n,
                "sent" => counts.sent = n,
                "failed" => counts.failed = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Outbox rows, newest first: queued and failed ones, or all.
    pub async fn outbox_list(&self, all: bool) -> Result<Vec<serde_json::Value>, sqlx::Error> {
        let filter = if all { "" } else { "WHERE o.state <> 'sent'" };
        let rows = sqlx::query(&format!(
            "SELECT o.message_id, t.number, o.state, o.attempts, o.rcpt_to, o.last_answer, o.next_attempt_at, o.relay
             FROM outbox o JOIN tickets t ON t.id = o.ticket_id {filter} ORDER BY o.id DESC LIMIT 1000"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(json!({
                    "message": r.try_get::<i64, _>(0)?,
                    "ticket": r.try_get::<i64, _>(1)?,
                    "state": r.try_get::<String, _>(2)?,
                    "attempts": r.try_get::<i64, _>(3)?,
                    "rcpt_to": serde_json::from_str::<serde_json::Value>(&r.try_get::<String, _>(4)?).unwrap_or_default(),
                    "last_answer": r.try_get::<Option<String>, _>(5)?,
                    "next_attempt_at": r.try_get::<i64, _>(6)?,
                    "relay": r.try_get::<String, _>(7)?,
                }))
            })
            .collect()
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
