//! The outbox worker: claims due rows, sends each through its relay, and
//! records what happened (`store::outbox` holds the claims and records).
//! Outcomes of sends that finish together are recorded in one transaction.
//! A sent reply's copy is appended to the team mailbox's Sent folder; at a
//! stop, sends in flight and Sent copies are finished first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::smtp::{Relay, SendOutcome};
use crate::config::Config;
use crate::net::imap::ImapClient;
use crate::retry::Backoff;
use crate::store::directory::Directory;
use crate::store::outbox::{Claimed, Delivery, SentCopyState, NOTIFY_CHANNEL};
use crate::store::{classify_error, now_ms, ErrorClass, Store};

pub struct Outbox {
    store: Store,
    dir: Arc<Directory>,
    config: Arc<Config>,
    relays: HashMap<String, Arc<Relay>>,
    /// The IMAP logins Sent copies go through, by channel: built once, so
    /// the trusted roots are read once and OAuth tokens are reused.
    sent_copies: HashMap<String, Result<ImapClient, String>>,
    /// This process's identity in claims.
    instance: String,
    /// Signalled when a reply is queued in this process, so it goes out at
    /// once instead of at the next poll.
    pub wake: Arc<Notify>,
}

/// The work in flight while the outbox runs.
#[derive(Default)]
struct InFlight {
    sends: JoinSet<(Claimed, SendOutcome)>,
    /// Sends in flight per relay. Rows are claimed per relay, only as many
    /// as it has free slots, so a claimed row starts sending at once and
    /// its lease never runs down while it waits behind others.
    busy: HashMap<String, usize>,
    /// Which relay each send task is for, so one that panics still frees
    /// its slot.
    relay_of: HashMap<Id, String>,
    /// Sent copies being appended; finished before a stop completes.
    copies: JoinSet<()>,
    /// Rows handled (sent, retried or failed).
    handled: usize,
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
            sent_copies: sent_copy_clients(&config),
            store,
            dir,
            config,
            relays,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Sends until `shutdown`; sends in progress and Sent copies are
    /// finished and recorded first.
    /// After a crash: the replies an earlier process of this instance had
    /// in flight wait for their claims to run out (another process with
    /// the name may still be sending them); say so, and until when.
    async fn report_left_claims(&self) {
        let me = &self.instance;
        let name = me.split('/').next().unwrap_or(me);
        let Ok(left) = self.store.left_claims(name, me).await else {
            return;
        };
        let now = crate::store::now_ms();
        for claims in left {
            tracing::warn!(
                holder = %claims.holder,
                replies = claims.replies,
                retried_in_s = (claims.until - now).max(0) / 1000,
                "Replies claimed by an earlier process of this instance (stopped or crashed); \
                 they are sent when its claims run out (outbox.lease_secs). `mailroom status` shows them as claimed."
            );
        }
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A warning only: the database may be briefly away, and the worker
        // copes with that on its own.
        for relay in self.store.queued_relays().await.unwrap_or_default() {
            if !self.relays.contains_key(&relay) {
                tracing::error!(%relay, "Replies are queued for a relay that is not configured; they wait until it is added back.");
            }
        }
        self.report_left_claims().await;
        // Replies queued by other instances or `mailroom reply` wake us at
        // once on PostgreSQL; `poll_interval_ms` remains the fallback.
        let listening = CancellationToken::new();
        let listen = self.store.listen(NOTIFY_CHANNEL, &self.wake, &listening);
        let pump = async {
            self.pump(Some(&shutdown)).await;
            listening.cancel();
        };
        tokio::join!(pump, listen);
        Ok(())
    }

    /// Sends everything due now and returns how many rows were handled
    /// (`mailroom outbox flush`, tests).
    pub async fn run_until_idle(self: &Arc<Self>) -> usize {
        self.pump(None).await
    }

    async fn pump(self: &Arc<Self>, shutdown: Option<&CancellationToken>) -> usize {
        let mut work = InFlight::default();
        let mut stopping = false;
        let mut failures = 0u32;
        loop {
            let mut idle_for = Duration::from_millis(self.config.outbox.poll_interval_ms);
            if !stopping {
                let claimed = self.claim_free_slots(&mut work, &mut failures).await;
                match claimed {
                    Err(wait) => {
                        idle_for = wait;
                        // `flush`: finish what is in flight, then stop.
                        stopping = shutdown.is_none();
                    }
                    Ok((claimed_any, next_due)) => {
                        if let Some(due) = next_due {
                            // At least a few ms: a due row locked by another
                            // instance's claim in progress must not make this spin.
                            let wait = (due - now_ms()).max(10) as u64;
                            idle_for = idle_for.min(Duration::from_millis(wait));
                        }
                        if !claimed_any && work.sends.is_empty() && shutdown.is_none() {
                            break;
                        }
                    }
                }
            }
            if stopping && work.sends.is_empty() {
                break;
            }
            let stop = async {
                match shutdown {
                    Some(s) if !stopping => s.cancelled().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = work.sends.join_next_with_id(), if !work.sends.is_empty() => {
                    self.finished(&mut work, joined).await;
                }
                Some(_) = work.copies.join_next(), if !work.copies.is_empty() => {}
                _ = self.wake.notified() => {}
                // Rows of other relays fall due while sends are in flight.
                _ = tokio::time::sleep(idle_for) => {}
                _ = stop => stopping = true,
            }
        }
        // Sent copies of what was sent: their state must not stay pending.
        while work.copies.join_next().await.is_some() {}
        work.handled
    }

    /// Claims, for each relay with free slots, that many due rows and starts
    /// sending them. Ok: whether anything was claimed, and when the next row
    /// falls due; Err: the claim failed, wait this long.
    async fn claim_free_slots(
        self: &Arc<Self>,
        work: &mut InFlight,
        failures: &mut u32,
    ) -> Result<(bool, Option<i64>), Duration> {
        let lease_ms = (self.config.outbox.lease_secs * 1000) as i64;
        let mut claimed_any = false;
        let mut next_due: Option<i64> = None;
        let mut failed = None;
        for (name, relay) in &self.relays {
            let free = relay
                .pool_size()
                .saturating_sub(*work.busy.get(name).unwrap_or(&0));
            if free == 0 {
                continue;
            }
            let (rows, due) = match self
                .store
                .claim_outbox(&self.instance, name, free, lease_ms)
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    // The other relays still get their turn.
                    tracing::error!(relay = %name, error = %e, "Cannot claim outbox rows; retrying.");
                    failed = Some(e);
                    continue;
                }
            };
            next_due = match (next_due, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for row in rows {
                claimed_any = true;
                *work.busy.entry(name.clone()).or_default() += 1;
                let me = self.clone();
                let task = work.sends.spawn(async move { me.send(row).await });
                work.relay_of.insert(task.id(), name.clone());
            }
        }
        if failed.is_some() && !claimed_any {
            *failures += 1;
            return Err(Backoff::STORE.delay(*failures));
        }
        *failures = 0;
        Ok((claimed_any, next_due))
    }

    /// Collects the sends that have finished (this one and any others done
    /// by now), frees their slots and records them together.
    async fn finished(
        self: &Arc<Self>,
        work: &mut InFlight,
        first: Result<(Id, (Claimed, SendOutcome)), tokio::task::JoinError>,
    ) {
        let mut joins = vec![first];
        while let Some(joined) = work.sends.try_join_next_with_id() {
            joins.push(joined);
        }
        let mut done = Vec::new();
        for joined in joins {
            let id = match &joined {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            if let Some(relay) = work.relay_of.remove(&id) {
                if let Some(n) = work.busy.get_mut(&relay) {
                    *n = n.saturating_sub(1);
                }
            }
            match joined {
                Ok((_, result)) => done.push(result),
                // The claim stays until its lease ends; then the reply is
                // tried again.
                Err(e) => tracing::error!(error = %e, "A send task failed."),
            }
        }
        work.handled += done.len();
        let deliveries: Vec<(Claimed, SendOutcome, Delivery)> = done
            .into_iter()
            .map(|(row, outcome)| {
                let delivery = self.delivery(&row, &outcome);
                (row, outcome, delivery)
            })
            .collect();
        self.record_all(&deliveries).await;
        for (row, outcome, delivery) in deliveries {
            report(&row, &outcome, &delivery);
            if let (Delivery::Sent(_), Some(copy)) = (&delivery, row.sent_copy.clone()) {
                let me = self.clone();
                work.copies
                    .spawn(async move { me.append_sent_copy(&row, copy).await });
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

    /// How an attempt is recorded: a temporary failure is retried with
    /// backoff until `max_attempts`, then fails like a permanent one.
    fn delivery(&self, row: &Claimed, outcome: &SendOutcome) -> Delivery {
        let c = &self.config.outbox;
        match outcome {
            SendOutcome::Sent(answer) => Delivery::Sent(answer.clone()),
            SendOutcome::Temporary(answer) if row.attempts < i64::from(c.max_attempts) => {
                let backoff = Backoff::exact(
                    Duration::from_millis(c.retry_base_ms),
                    Duration::from_millis(c.retry_max_ms),
                );
                let wait = backoff.delay(row.attempts.clamp(1, i64::from(u32::MAX)) as u32);
                Delivery::Retry {
                    answer: answer.clone(),
                    at: now_ms() + wait.as_millis() as i64,
                }
            }
            SendOutcome::Temporary(answer) => Delivery::Failed(format!(
                "gave up after {} attempts; last answer: {answer}",
                row.attempts
            )),
            SendOutcome::Permanent(answer) => Delivery::Failed(answer.clone()),
        }
    }

    /// Records outcomes; retried with backoff while the database is down, as
    /// a lost "sent" record would send the reply again after the lease. If
    /// the batch keeps failing for another reason, rows are recorded one by
    /// one so one bad row does not hold up the others.
    async fn record_all(&self, done: &[(Claimed, SendOutcome, Delivery)]) {
        let deliveries: Vec<(&Claimed, Delivery)> = done
            .iter()
            .map(|(row, _, delivery)| (row, delivery.clone()))
            .collect();
        let mut attempt = 0;
        loop {
            let recorded = self
                .store
                .record_deliveries(&self.dir, &self.instance, &deliveries)
                .await;
            let e = match recorded {
                Ok(()) => return,
                Err(e) => e,
            };
            if classify_error(&e) == ErrorClass::Permanent || attempt >= 20 {
                tracing::error!(error = %e, "Cannot record outbox results together; recording one by one.");
                for one in &deliveries {
                    let single = std::slice::from_ref(one);
                    if let Err(e) = self
                        .store
                        .record_deliveries(&self.dir, &self.instance, single)
                        .await
                    {
                        tracing::error!(message = one.0.message, error = %e, "Cannot record an outbox result; its lease will expire and it may be sent again.");
                    }
                }
                return;
            }
            attempt += 1;
            tracing::error!(error = %e, attempt, "Cannot record outbox results; retrying.");
            tokio::time::sleep(Backoff::STORE.delay(attempt)).await;
        }
    }

    /// APPENDs a sent reply to the Sent folder through its IMAP channel's
    /// login, and keeps how that went; a failed copy never resends the mail.
    async fn append_sent_copy(&self, row: &Claimed, mut copy: SentCopyState) {
        let result = match self.sent_copies.get(&copy.channel) {
            None => Err(format!("channel {} is not an imap channel", copy.channel)),
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(client)) => client
                .append_copy(&self.store, &copy.folder, &row.raw)
                .await
                .map_err(|e| e.to_string()),
        };
        copy.state = match &result {
            Ok(()) => "done".to_string(),
            Err(e) => {
                tracing::warn!(message = row.message, channel = %copy.channel, folder = %copy.folder, error = %e, "Could not put the sent reply in the Sent folder.");
                format!("failed: {e}")
            }
        };
        if let Err(e) = self.store.set_sent_copy(row.id, &copy).await {
            tracing::warn!(error = %e, "Cannot record the Sent copy's state.");
        }
    }
}

/// Counts and logs one recorded attempt.
fn report(row: &Claimed, outcome: &SendOutcome, delivery: &Delivery) {
    let result = match delivery {
        Delivery::Sent(_) => "sent",
        Delivery::Retry { .. } => "retry",
        Delivery::Failed(_) => "failed",
    };
    metrics::counter!("mailroom_replies_total", "relay" => row.relay.clone(), "result" => result)
        .increment(1);
    match outcome {
        SendOutcome::Sent(answer) => {
            tracing::info!(message = row.message, ticket = row.ticket, relay = %row.relay, %answer, "Reply sent.")
        }
        SendOutcome::Temporary(answer) => {
            tracing::warn!(message = row.message, attempts = row.attempts, relay = %row.relay, %answer, "Reply not sent yet; will retry.")
        }
        SendOutcome::Permanent(answer) => {
            tracing::error!(message = row.message, relay = %row.relay, %answer, "Reply refused by the relay.")
        }
    }
}

/// An IMAP client for every channel a team address puts Sent copies in.
fn sent_copy_clients(config: &Config) -> HashMap<String, Result<ImapClient, String>> {
    let channels = config
        .teams
        .values()
        .flat_map(|t| &t.addresses)
        .filter_map(|a| a.sent_copy.as_ref())
        .map(|c| c.channel.as_str());
    channels
        .filter_map(|name| {
            let imap = config.channels.get(name)?.imap()?;
            let client = ImapClient::new(name, imap).map_err(|e| format!("{e:#}"));
            Some((name.to_string(), client))
        })
        .collect()
}
