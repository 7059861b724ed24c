//! An IMAP mailbox channel: one task per mailbox.
//!
//! New mail is found by UID (above the highest committed UID of the current
//! UIDVALIDITY), sized with RFC822.SIZE, fetched with BODY.PEEK[] (so fetching
//! never sets \Seen), committed through the pipeline, and only then given the
//! mailbox's after-action (`sync.rs`). IDLE waits for new mail where the
//! server offers it; otherwise the mailbox is polled. Every command has a
//! timeout, failures back off exponentially with jitter, and an
//! authentication failure waits longer so a bad password is not hammered.

mod sync;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{ChannelConfig, FirstSync};
use crate::net::imap::{deadline, ImapClient, ImapError, ImapSession};
use crate::pipeline::Pipeline;
use crate::retry::Backoff;
use crate::store::{now_ms, Store};

pub use crate::store::channels::{ImapState, Oversized, Refused};
pub use sync::uid_set;

/// Why a session ended; decides how long to wait before the next one.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Imap(#[from] ImapError),
    /// The database is unreachable: nothing was acknowledged; retry later.
    #[error("database unavailable: {0}")]
    Database(String),
    /// The server will not give this message (a NO to its FETCH, or the UID
    /// left out while it is still there); everything below it is in.
    #[error(
        "the server did not give message UID {uid} (it refused or failed the FETCH); \
         the mailbox waits below it and asks again at the next attempt"
    )]
    Refused { uid: u32 },
}

/// Maps an async-imap error to a session failure, naming the step.
fn other(context: &str) -> impl Fn(async_imap::error::Error) -> Failure + '_ {
    crate::net::imap::other(context)
}

fn db(e: sqlx::Error) -> Failure {
    Failure::Database(e.to_string())
}

/// Failed sessions in a row after which an instance gives a mailbox's
/// lease up (another host may reach the server).
const GIVE_UP_AFTER: u32 = 3;

/// A wrong password will not fix itself in a second: wait at least this.
const AUTH_RETRY: Duration = Duration::from_secs(300);

/// Why `run_holding` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Stopped,
    GaveUp,
}

/// One IMAP mailbox.
pub struct ImapChannel {
    pub name: String,
    client: ImapClient,
    max_message_bytes: u64,
    /// (holder id, lease time): poll only while holding the mailbox's
    /// lease. None: poll unconditionally (tools, tests).
    lease: Option<(String, Duration)>,
}

impl ImapChannel {
    /// The mailbox of channel `name`; an error if it is not an IMAP channel
    /// or its CA file cannot be read.
    pub fn new(
        name: &str,
        config: &ChannelConfig,
        max_message_bytes: u64,
    ) -> anyhow::Result<ImapChannel> {
        let imap = config
            .imap()
            .ok_or_else(|| anyhow::anyhow!("channel {name} is not an imap channel"))?;
        Ok(ImapChannel {
            name: name.to_string(),
            client: ImapClient::new(name, imap)?,
            max_message_bytes,
            lease: None,
        })
    }

    /// Polls only while `holder` holds this mailbox's lease.
    pub fn with_lease(mut self, holder: String, ttl: Duration) -> ImapChannel {
        self.lease = Some((holder, ttl));
        self
    }

    /// For `mailroom check`: connects, logs in and selects the folder.
    pub async fn probe(&self, store: &Store) -> Result<String, ImapError> {
        self.client.probe(store).await
    }

    /// Runs the mailbox until `shutdown`, only while this instance holds its
    /// lease (`imap:<channel>`): several instances on one database never
    /// poll the same mailbox at once. A standby instance takes over when
    /// the holder's lease expires, or when the holder gives the lease up
    /// after failing to reach the mailbox several times in a row (another
    /// host may reach it).
    pub async fn run(self, pipeline: Pipeline, shutdown: CancellationToken) -> anyhow::Result<()> {
        let store = pipeline.store().clone();
        let Some((holder, ttl)) = self.lease.clone() else {
            return self
                .run_holding(&pipeline, &shutdown, None)
                .await
                .map(|_| ());
        };
        let name = format!("imap:{}", self.name);
        loop {
            if !super::lease::acquire(&store, &name, &holder, ttl, &shutdown).await {
                return Ok(());
            }
            tracing::info!(mailbox = %self.name, %holder, "Mailbox lease taken.");
            let session = shutdown.child_token();
            let lost = AtomicBool::new(false);
            // The renewals run beside the work, in this task: they end when
            // the work does, and cancel it when the lease is lost.
            let work = async {
                let ended = self.run_holding(&pipeline, &session, Some(&lost)).await;
                session.cancel();
                ended
            };
            let renew = super::lease::renew(&store, &name, &holder, ttl, &session, &lost);
            let (ended, ()) = tokio::join!(work, renew);
            if shutdown.is_cancelled() || ended.is_err() {
                let _ = store.release_lease(&name, &holder).await;
                return ended.map(|_| ());
            }
            if ended.is_ok_and(|e| e == Ended::GaveUp) {
                // Let a standby that may reach the server have a go first.
                let _ = store.release_lease(&name, &holder).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(ttl) => {}
                }
            }
            // Otherwise the lease was lost: stand by until it can be taken again.
        }
    }

    /// Runs sessions until `shutdown`. With a lease (`lost` set when it is
    /// gone), nothing is written to the mailbox's state once it is lost, and
    /// after `GIVE_UP_AFTER` failed sessions in a row it returns `GaveUp`.
    async fn run_holding(
        &self,
        pipeline: &Pipeline,
        shutdown: &CancellationToken,
        lost: Option<&AtomicBool>,
    ) -> anyhow::Result<Ended> {
        let mut failures: u32 = 0;
        let host = self.client.host();
        let folder = &self.client.config().folder;
        tracing::info!(mailbox = %self.name, %host, %folder, "Starting IMAP mailbox.");
        loop {
            let mut healthy = false;
            let result = self.session(pipeline, shutdown, &mut healthy, lost).await;
            let error = result.err();
            // A refused message ends a session that otherwise works; it
            // still backs off, so the server is not asked every second.
            if healthy && !matches!(error, Some(Failure::Refused { .. })) {
                failures = 0;
            }
            self.record_session_end(pipeline.store(), error.as_ref(), lost)
                .await;
            let Some(error) = error else {
                return Ok(Ended::Stopped);
            };
            failures += 1;
            if lost.is_some() && failures >= GIVE_UP_AFTER {
                tracing::warn!(mailbox = %self.name, failures, error = %error, "Giving the mailbox lease up so another instance can try.");
                return Ok(Ended::GaveUp);
            }
            let wait = match &error {
                Failure::Imap(ImapError::Auth(_)) => {
                    AUTH_RETRY.max(Backoff::SESSION.delay(failures))
                }
                _ => Backoff::SESSION.delay(failures),
            };
            tracing::error!(mailbox = %self.name, error = %error, retry_in_s = wait.as_secs_f32(), "IMAP mailbox failed.");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Marks the mailbox disconnected (with the error, if any). A state that
    /// cannot be read is not overwritten with defaults, and nothing is
    /// written once the lease is lost: the new holder owns the state.
    async fn record_session_end(
        &self,
        store: &Store,
        error: Option<&Failure>,
        lost: Option<&AtomicBool>,
    ) {
        if lost.is_some_and(|l| l.load(Ordering::SeqCst)) {
            return;
        }
        let Ok(mut state) = store.channel_state::<ImapState>(&self.name).await else {
            return;
        };
        state.connected = false;
        state.idle = false;
        if let Some(error) = error {
            state.last_error = Some(error.to_string());
            state.last_error_at = Some(now_ms());
        }
        let _ = store.set_channel_state(&self.name, &state).await;
    }

    /// One connection's life: select, sync, wait (IDLE or poll), repeat.
    async fn session(
        &self,
        pipeline: &Pipeline,
        shutdown: &CancellationToken,
        healthy: &mut bool,
        lost: Option<&AtomicBool>,
    ) -> Result<(), Failure> {
        let store = pipeline.store();
        let (mut session, capabilities, mailbox) = self.open(store).await?;
        let mut state: ImapState = store.channel_state(&self.name).await.map_err(db)?;
        self.reconcile(&mut session, &mut state, &mailbox).await?;
        state.connected = true;
        state.idle = capabilities.idle && self.client.config().idle;
        state.last_error = None;
        store
            .set_channel_state(&self.name, &state)
            .await
            .map_err(db)?;
        *healthy = true;
        tracing::info!(mailbox = %self.name, uidvalidity = mailbox.uid_validity.unwrap_or(0), idle = state.idle, "IMAP mailbox connected.");

        let actions = sync::AfterActions::new(self.client.config(), &capabilities);
        loop {
            let taken = self
                .sync(&mut session, pipeline, &mut state, &actions, shutdown, lost)
                .await?;
            if shutdown.is_cancelled() {
                let _ = timeout(Duration::from_secs(2), session.logout()).await;
                return Ok(());
            }
            if taken > 0 {
                continue;
            }
            if state.idle {
                session = self.idle(session, shutdown).await?;
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(self.client.config().poll_interval()) => {}
                }
            }
        }
    }

    /// Logs in, learns the capabilities, creates the folders mail is moved
    /// to (an existing folder is fine) and selects the mailbox's folder.
    async fn open(
        &self,
        store: &Store,
    ) -> Result<(ImapSession, Capabilities, async_imap::types::Mailbox), Failure> {
        let config = self.client.config();
        let limit = config.command_timeout();
        let mut session = self.client.connect(store).await?;
        let capabilities = deadline(limit, "CAPABILITY", async {
            session.capabilities().await.map_err(other("CAPABILITY"))
        })
        .await?;
        let capabilities = Capabilities {
            idle: capabilities.has_str("IDLE"),
            r#move: capabilities.has_str("MOVE"),
            uidplus: capabilities.has_str("UIDPLUS"),
        };
        for folder in [&config.move_to, &config.oversize_folder]
            .into_iter()
            .flatten()
        {
            // Creating a folder that exists fails harmlessly.
            let created = async { Ok::<_, Failure>(session.create(folder).await) };
            let _ = deadline(limit, "CREATE", created).await;
        }
        let mailbox = deadline(limit, "SELECT", async {
            session
                .select(&config.folder)
                .await
                .map_err(other("SELECT"))
        })
        .await?;
        Ok((session, capabilities, mailbox))
    }

    /// Compares UIDVALIDITY with the stored state. When it changed (or on
    /// the first connect), everything is looked at again, or only what
    /// `first_sync` asks for; receipts make already stored mail duplicates.
    async fn reconcile(
        &self,
        session: &mut ImapSession,
        state: &mut ImapState,
        mailbox: &async_imap::types::Mailbox,
    ) -> Result<(), Failure> {
        let uidvalidity = mailbox.uid_validity.unwrap_or(0);
        if state.uidvalidity == Some(uidvalidity) {
            return Ok(());
        }
        let first_connect = state.uidvalidity.is_none();
        if let (false, Some(old)) = (first_connect, state.uidvalidity) {
            tracing::warn!(mailbox = %self.name, old, new = uidvalidity,
                "UIDVALIDITY changed; re-scanning the folder (already stored messages are recognised).");
        }
        state.uidvalidity = Some(uidvalidity);
        state.last_uid = 0;
        state.unseen_until = None;
        // UIDs of the old validity name other messages now.
        state.refusing = None;
        state.passed_over.clear();
        let first_sync = self.client.config().first_sync;
        if first_sync == FirstSync::All {
            return Ok(());
        }
        // The highest UID already there: from UIDNEXT, or by asking.
        let existing = match mailbox.uid_next {
            Some(next) => next.saturating_sub(1),
            None => deadline(
                self.client.config().command_timeout(),
                "UID SEARCH",
                async { session.uid_search("ALL").await.map_err(other("UID SEARCH")) },
            )
            .await?
            .into_iter()
            .max()
            .unwrap_or(0),
        };
        if first_connect && first_sync == FirstSync::New {
            tracing::info!(mailbox = %self.name, skipped_up_to = existing, "First connect: taking only mail that arrives from now on.");
            state.last_uid = existing;
        } else {
            // A first connect with "unseen", or a UIDVALIDITY change with
            // "unseen" or "new": the old mail was (mostly) never taken, so
            // only unread mail is; what is stored already is a duplicate.
            tracing::info!(mailbox = %self.name, "Taking unread mail and mail that arrives from now on.");
            state.unseen_until = Some(existing);
        }
        Ok(())
    }

    /// Waits in IDLE until the server reports a change, 25 minutes pass (the
    /// server may drop an IDLE after 30), or shutdown.
    async fn idle(
        &self,
        session: ImapSession,
        shutdown: &CancellationToken,
    ) -> Result<ImapSession, Failure> {
        let limit = self.client.config().command_timeout();
        let unsolicited = session.unsolicited_responses.clone();
        while unsolicited.try_recv().is_ok() {}
        let mut handle = session.idle();
        deadline(limit, "IDLE", async {
            handle.init().await.map_err(other("IDLE"))
        })
        .await?;
        // Mail that arrived just before IDLE started is announced before the
        // continuation, and async-imap files that under unsolicited responses.
        let mut pending = false;
        while let Ok(response) = unsolicited.try_recv() {
            if matches!(
                response,
                async_imap::types::UnsolicitedResponse::Exists(_)
                    | async_imap::types::UnsolicitedResponse::Recent(_)
            ) {
                pending = true;
            }
        }
        if !pending {
            let (wait, _stop) = handle.wait_with_timeout(Duration::from_secs(25 * 60));
            tokio::select! {
                result = wait => { result.map_err(other("IDLE"))?; }
                _ = shutdown.cancelled() => {}
            }
        }
        tracing::debug!(mailbox = %self.name, pending, "IDLE woke.");
        deadline(limit, "IDLE DONE", async {
            handle.done().await.map_err(other("IDLE DONE"))
        })
        .await
    }
}

/// What the server offers that changes how we work.
#[derive(Debug, Clone, Copy)]
struct Capabilities {
    idle: bool,
    r#move: bool,
    uidplus: bool,
}
