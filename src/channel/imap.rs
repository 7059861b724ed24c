//! An IMAP mailbox channel: one supervised task per mailbox.
//!
//! New mail is found by UID (above the highest committed UID of the current
//! UIDVALIDITY), sized with RFC822.SIZE, fetched with BODY.PEEK[] (so fetching
//! never sets \Seen), committed through the pipeline, and only then given the
//! mailbox's after-action. IDLE waits for new mail where the server offers it;
//! otherwise the mailbox is polled. Every command has a timeout, failures back
//! off exponentially with jitter, and an authentication failure waits longer
//! so a bad password is not hammered.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_imap::types::Fetch;
use async_imap::{Client, Session};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::oauth::{TokenSource, XOAuth2};
use crate::config::{After, ChannelConfig, FirstSync, ImapAuth, TlsMode};
pub use crate::net::{tls_config, Conn};
use crate::pipeline::{Disposition, OnBadInput, Pipeline, PipelineError, RawMessage};
use crate::store::{now_ms, Store};

/// Why a session ended; decides how long to wait before the next one.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("{0}")]
    Other(String),
    /// The database is unreachable: nothing was acknowledged; retry later.
    #[error("database unavailable: {0}")]
    Database(String),
}

fn other(context: &str) -> impl Fn(async_imap::error::Error) -> Failure + '_ {
    move |e| Failure::Other(format!("{context}: {e}"))
}

/// Runs `fut` with a deadline, naming the step that timed out.
async fn deadline<T>(
    limit: Duration,
    step: &str,
    fut: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    timeout(limit, fut)
        .await
        .map_err(|_| Failure::Other(format!("{step} timed out after {} s", limit.as_secs())))?
}

/// Oversized messages remembered in a mailbox's state.
const MAX_OVERSIZED_REPORTED: usize = 100;

/// A message left on the server because it is too large.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Oversized {
    pub uid: u32,
    pub size: u32,
    pub moved_to: Option<String>,
}

/// Per-mailbox state, kept in `channels.state` and shown by `mailroom status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImapState {
    pub uidvalidity: Option<u32>,
    /// Highest UID whose message is committed and acknowledged.
    pub last_uid: u32,
    pub connected: bool,
    pub idle: bool,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Messages waiting on the server at the last look.
    pub backlog: usize,
    #[serde(default)]
    pub oversized: Vec<Oversized>,
    /// `first_sync = "unseen"` in progress: unread mail up to this UID is
    /// still being taken; mail already read there is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_until: Option<u32>,
}

impl Store {
    pub async fn channel_state<T: for<'de> Deserialize<'de> + Default>(
        &self,
        key: &str,
    ) -> Result<T, sqlx::Error> {
        let text: Option<String> = sqlx::query_scalar("SELECT state FROM channels WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    pub async fn set_channel_state<T: Serialize>(
        &self,
        key: &str,
        state: &T,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("UPDATE channels SET state = $1, updated_at = $2 WHERE key = $3")
            .bind(serde_json::to_string(state).unwrap_or_else(|_| "{}".into()))
            .bind(now_ms())
            .bind(key)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

struct PlainAuth<'a> {
    username: &'a str,
    password: &'a str,
}

impl async_imap::Authenticator for PlainAuth<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        format!("\0{}\0{}", self.username, self.password).into_bytes()
    }
}

fn login_failure(error: async_imap::error::Error, username: &str, host: &str) -> Failure {
    match error {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
            Failure::Auth(format!("{username}@{host}: {text}"))
        }
        e => Failure::Other(format!("login: {e}")),
    }
}

/// Failed sessions in a row after which an instance gives a mailbox's
/// lease up (another host may reach the server).
const GIVE_UP_AFTER: u32 = 3;

/// Why `run_holding` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Stopped,
    GaveUp,
}

/// One IMAP mailbox.
pub struct ImapChannel {
    pub name: String,
    pub config: ChannelConfig,
    pub max_message_bytes: u64,
    tls: Arc<rustls::ClientConfig>,
    /// XOAUTH2 access tokens, when `auth = "xoauth2"`.
    oauth: Option<TokenSource>,
    /// (instance name, lease time): poll only while holding the mailbox's
    /// lease. None: poll unconditionally (tools, tests).
    lease: Option<(String, Duration)>,
}

type ImapSession = Session<Conn>;

impl ImapChannel {
    pub fn new(
        name: &str,
        config: &ChannelConfig,
        max_message_bytes: u64,
    ) -> anyhow::Result<ImapChannel> {
        Ok(ImapChannel {
            name: name.to_string(),
            tls: tls_config(config.ca_file.as_deref())?,
            oauth: config.oauth.as_ref().map(|o| TokenSource::new(name, o)),
            config: config.clone(),
            max_message_bytes,
            lease: None,
        })
    }

    /// Polls only while `instance` holds this mailbox's lease.
    pub fn with_lease(mut self, instance: String, ttl: Duration) -> ImapChannel {
        self.lease = Some((instance, ttl));
        self
    }

    fn host(&self) -> &str {
        self.config.host.as_deref().unwrap_or("localhost")
    }

    fn port(&self) -> u16 {
        self.config.port.unwrap_or(match self.config.tls {
            TlsMode::Implicit => 993,
            _ => 143,
        })
    }

    fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.config.command_timeout_secs)
    }

    async fn tls_wrap(&self, tcp: TcpStream) -> Result<Conn, Failure> {
        let server_name = rustls::pki_types::ServerName::try_from(self.host().to_string())
            .map_err(|e| Failure::Other(format!("bad host name {}: {e}", self.host())))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                Failure::Other(format!("TLS handshake with {} failed: {e}", self.host()))
            })?;
        Ok(Conn::Tls(Box::new(stream)))
    }

    /// Connects, secures and logs in. The store keeps rotated OAuth tokens.
    pub async fn connect(&self, store: &Store) -> Result<ImapSession, Failure> {
        let limit = self.command_timeout();
        let address = format!("{}:{}", self.host(), self.port());
        let tcp = deadline(limit, "connect", async {
            TcpStream::connect(&address)
                .await
                .map_err(|e| Failure::Other(format!("cannot connect to {address}: {e}")))
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        let client = deadline(limit, "greeting", async {
            let conn = match self.config.tls {
                TlsMode::Implicit => self.tls_wrap(tcp).await?,
                _ => Conn::Plain(tcp),
            };
            let mut client = Client::new(conn);
            client
                .read_response()
                .await
                .map_err(|e| Failure::Other(format!("no greeting from {address}: {e}")))?
                .ok_or_else(|| {
                    Failure::Other(format!(
                        "{address} closed the connection before its greeting"
                    ))
                })?;
            if self.config.tls == TlsMode::Starttls {
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(other("STARTTLS"))?;
                let Conn::Plain(tcp) = client.into_inner() else {
                    unreachable!("STARTTLS starts on a plain connection")
                };
                client = Client::new(self.tls_wrap(tcp).await?);
            }
            Ok(client)
        })
        .await?;
        let username = self.config.username.clone().unwrap_or_default();
        if self.config.auth == ImapAuth::Xoauth2 {
            let source = self
                .oauth
                .as_ref()
                .ok_or_else(|| Failure::Auth("auth = \"xoauth2\" needs an oauth section".into()))?;
            let token = source.token(store).await.map_err(Failure::Auth)?;
            let result = deadline(limit, "AUTHENTICATE XOAUTH2", async {
                client
                    .authenticate(
                        "XOAUTH2",
                        XOAuth2 {
                            user: &username,
                            token: &token,
                            sent: false,
                        },
                    )
                    .await
                    .map_err(|(e, _)| login_failure(e, &username, self.host()))
            })
            .await;
            if result.is_err() {
                // Perhaps revoked early: fetch a fresh one next time.
                source.invalidate().await;
            }
            return result;
        }
        let password = self
            .config
            .password
            .as_ref()
            .map(|p| p.resolve())
            .transpose()
            .map_err(Failure::Auth)?
            .unwrap_or_default();
        deadline(limit, "login", async {
            let result = match self.config.auth {
                ImapAuth::Plain => {
                    client
                        .authenticate(
                            "PLAIN",
                            PlainAuth {
                                username: &username,
                                password: &password,
                            },
                        )
                        .await
                }
                _ => client.login(&username, &password).await,
            };
            result.map_err(|(e, _)| login_failure(e, &username, self.host()))
        })
        .await
    }

    /// For `mailroom check`: connects, logs in and selects the folder, and
    /// says what works. `Err` names the first step that failed.
    pub async fn probe(&self, store: &Store) -> Result<String, Failure> {
        let limit = self.command_timeout();
        let mut session = self.connect(store).await?;
        let capabilities = deadline(limit, "CAPABILITY", async {
            session.capabilities().await.map_err(other("CAPABILITY"))
        })
        .await?;
        let mailbox = deadline(limit, "SELECT", async {
            session
                .select(&self.config.folder)
                .await
                .map_err(|e| Failure::Other(format!("folder {:?}: {e}", self.config.folder)))
        })
        .await?;
        let _ = timeout(Duration::from_secs(2), session.logout()).await;
        let transport = match self.config.tls {
            TlsMode::Implicit => "TLS verified",
            TlsMode::Starttls => "STARTTLS verified",
            TlsMode::None => "plaintext",
        };
        let idle = if capabilities.has_str("IDLE") {
            "IDLE supported"
        } else {
            "no IDLE: polling"
        };
        Ok(format!(
            "{transport}, login ok, folder {:?} has {} messages, {idle}",
            self.config.folder, mailbox.exists
        ))
    }

    /// Appends a message to `folder` as read (a reply's copy in the team
    /// mailbox's Sent folder), creating the folder when it is missing.
    pub async fn append_copy(
        &self,
        store: &Store,
        folder: &str,
        raw: &[u8],
    ) -> Result<(), Failure> {
        let limit = self.command_timeout();
        let mut session = self.connect(store).await?;
        let appended = deadline(limit, "APPEND", async {
            match session.append(folder, Some("(\\Seen)"), None, raw).await {
                Ok(()) => Ok(()),
                // Not there yet (TRYCREATE): create it once and try again.
                Err(async_imap::error::Error::No(_) | async_imap::error::Error::Append) => {
                    session.create(folder).await.map_err(other("CREATE"))?;
                    session
                        .append(folder, Some("(\\Seen)"), None, raw)
                        .await
                        .map_err(other("APPEND"))
                }
                Err(e) => Err(other("APPEND")(e)),
            }
        })
        .await;
        let _ = timeout(Duration::from_secs(2), session.logout()).await;
        appended
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
            if !crate::store::lease::acquire(&store, &name, &holder, ttl, &shutdown).await {
                return Ok(());
            }
            tracing::info!(mailbox = %self.name, %holder, "Mailbox lease taken.");
            let session = shutdown.child_token();
            // If this task is dropped (aborted), the renewals stop with it.
            let _stop_renewing = session.clone().drop_guard();
            let lost = Arc::new(AtomicBool::new(false));
            crate::store::lease::keep(
                store.clone(),
                name.clone(),
                holder.clone(),
                ttl,
                session.clone(),
                lost.clone(),
            );
            let ended = self.run_holding(&pipeline, &session, Some(&lost)).await;
            session.cancel(); // stops the renewals
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
        let pipeline = pipeline.clone();
        let shutdown = shutdown.clone();
        let store = pipeline.store().clone();
        let mut failures: u32 = 0;
        let still_ours = || !lost.is_some_and(|l| l.load(Ordering::SeqCst));
        tracing::info!(mailbox = %self.name, host = self.host(), folder = %self.config.folder, "Starting IMAP mailbox.");
        loop {
            let mut healthy = false;
            let result = self.session(&pipeline, &shutdown, &mut healthy, lost).await;
            if healthy {
                failures = 0;
            }
            // A state that cannot be read is not overwritten (with defaults).
            let read: Result<ImapState, _> = store.channel_state(&self.name).await;
            let error = match result {
                Ok(()) => {
                    if let (Ok(mut state), true) = (read, still_ours()) {
                        state.connected = false;
                        state.idle = false;
                        let _ = store.set_channel_state(&self.name, &state).await;
                    }
                    return Ok(Ended::Stopped);
                }
                Err(e) => e,
            };
            failures += 1;
            if let (Ok(mut state), true) = (read, still_ours()) {
                state.connected = false;
                state.idle = false;
                state.last_error = Some(error.to_string());
                state.last_error_at = Some(now_ms());
                let _ = store.set_channel_state(&self.name, &state).await;
            }
            if lost.is_some() && failures >= GIVE_UP_AFTER {
                tracing::warn!(mailbox = %self.name, failures, error = %error, "Giving the mailbox lease up so another instance can try.");
                return Ok(Ended::GaveUp);
            }
            let wait = match &error {
                // A wrong password will not fix itself in a second; do not hammer the server.
                Failure::Auth(_) => Duration::from_secs(300).max(retry_delay(failures)),
                _ => retry_delay(failures),
            };
            tracing::error!(mailbox = %self.name, error = %error, retry_in_s = wait.as_secs_f32(), "IMAP mailbox failed.");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection's life: select, sync, wait (IDLE or poll), repeat.
    async fn session(
        &self,
        pipeline: &Pipeline,
        shutdown: &CancellationToken,
        healthy: &mut bool,
        lost: Option<&AtomicBool>,
    ) -> Result<(), Failure> {
        let limit = self.command_timeout();
        let store = pipeline.store();
        let mut session = self.connect(store).await?;
        let capabilities = deadline(limit, "CAPABILITY", async {
            session.capabilities().await.map_err(other("CAPABILITY"))
        })
        .await?;
        let can = |name: &str| capabilities.has_str(name);
        let (can_idle, can_move, can_uidplus) = (can("IDLE"), can("MOVE"), can("UIDPLUS"));
        for folder in [&self.config.move_to, &self.config.oversize_folder]
            .into_iter()
            .flatten()
        {
            // Creating a folder that exists fails harmlessly.
            let _ = deadline(limit, "CREATE", async { Ok(session.create(folder).await) }).await;
        }
        let mailbox = deadline(limit, "SELECT", async {
            session
                .select(&self.config.folder)
                .await
                .map_err(other("SELECT"))
        })
        .await?;

        let db = |e: sqlx::Error| Failure::Database(e.to_string());
        let mut state: ImapState = store.channel_state(&self.name).await.map_err(db)?;
        let uidvalidity = mailbox.uid_validity.unwrap_or(0);
        if state.uidvalidity != Some(uidvalidity) {
            let first_connect = state.uidvalidity.is_none();
            if !first_connect {
                tracing::warn!(mailbox = %self.name, old = ?state.uidvalidity, new = uidvalidity,
                    "UIDVALIDITY changed; re-scanning the folder (already stored messages are recognised).");
            }
            state.uidvalidity = Some(uidvalidity);
            state.last_uid = 0;
            state.unseen_until = None;
            if self.config.first_sync != FirstSync::All {
                // The highest UID already there: from UIDNEXT, or by asking.
                let existing = match mailbox.uid_next {
                    Some(next) => next.saturating_sub(1),
                    None => deadline(limit, "UID SEARCH", async {
                        session.uid_search("ALL").await.map_err(other("UID SEARCH"))
                    })
                    .await?
                    .into_iter()
                    .max()
                    .unwrap_or(0),
                };
                match (first_connect, self.config.first_sync) {
                    (true, FirstSync::New) => {
                        tracing::info!(mailbox = %self.name, skipped_up_to = existing, "First connect: taking only mail that arrives from now on.");
                        state.last_uid = existing;
                    }
                    // A first connect with "unseen", or a UIDVALIDITY change
                    // with "unseen" or "new": the old mail was (mostly) never
                    // taken, so only unread mail is; what is stored already is
                    // recognised as a duplicate.
                    _ => {
                        tracing::info!(mailbox = %self.name, "Taking unread mail and mail that arrives from now on.");
                        state.unseen_until = Some(existing);
                    }
                }
            }
        }
        state.connected = true;
        state.idle = can_idle && self.config.idle;
        state.last_error = None;
        store
            .set_channel_state(&self.name, &state)
            .await
            .map_err(db)?;
        *healthy = true;
        tracing::info!(mailbox = %self.name, uidvalidity, idle = state.idle, "IMAP mailbox connected.");

        let actions = AfterActions {
            after: self.config.after_action(),
            move_to: self.config.move_to.clone(),
            can_move,
            can_uidplus,
        };
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
                    _ = tokio::time::sleep(self.config.poll_interval()) => {}
                }
            }
        }
    }

    /// Waits in IDLE until the server reports a change, 25 minutes pass (the
    /// server may drop an IDLE after 30), or shutdown.
    async fn idle(
        &self,
        session: ImapSession,
        shutdown: &CancellationToken,
    ) -> Result<ImapSession, Failure> {
        let limit = self.command_timeout();
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

    /// Takes every message above `last_uid`, in batches: size check, fetch,
    /// commit, after-action, then advance `last_uid`. Returns how many it took.
    async fn sync(
        &self,
        session: &mut ImapSession,
        pipeline: &Pipeline,
        state: &mut ImapState,
        actions: &AfterActions,
        shutdown: &CancellationToken,
        lost: Option<&AtomicBool>,
    ) -> Result<usize, Failure> {
        let limit = self.command_timeout();
        let lease_lost = || lost.is_some_and(|l| l.load(Ordering::SeqCst));
        let store = pipeline.store();
        let db = |e: sqlx::Error| Failure::Database(e.to_string());
        let mut searches = vec![format!("UID {}:*", state.last_uid.saturating_add(1))];
        // First sync of `first_sync = "unseen"`: unread mail up to the mark,
        // and everything after it.
        if let Some(until) = state.unseen_until {
            searches[0] = format!("UID {}:*", until.saturating_add(1));
            if state.last_uid < until {
                searches.push(format!("UID {}:{until} UNSEEN", state.last_uid + 1));
            }
        }
        let floor = state.unseen_until.unwrap_or(0).max(state.last_uid);
        let mut uids: Vec<u32> = Vec::new();
        for (i, query) in searches.iter().enumerate() {
            let found = deadline(limit, "UID SEARCH", async {
                session.uid_search(query).await.map_err(other("UID SEARCH"))
            })
            .await?;
            // "n:*" always matches the highest UID, even when it is below n.
            uids.extend(found.into_iter().filter(|&u| {
                if i == 0 {
                    u > floor
                } else {
                    u > state.last_uid
                }
            }));
        }
        uids.sort_unstable();
        uids.dedup();
        state.backlog = uids.len();
        tracing::debug!(mailbox = %self.name, found = uids.len(), "Searched.");
        let mut taken = 0;
        for chunk in uids.chunks(self.config.fetch_batch) {
            // Stopping (or the lease is gone): take nothing more.
            if shutdown.is_cancelled() {
                break;
            }
            let set = uid_set(chunk);
            let sizes: Vec<Fetch> = deadline(limit, "UID FETCH (RFC822.SIZE)", async {
                let stream = session
                    .uid_fetch(&set, "(UID RFC822.SIZE)")
                    .await
                    .map_err(other("UID FETCH"))?;
                stream.try_collect().await.map_err(other("UID FETCH"))
            })
            .await?;
            let mut wanted = Vec::new();
            let mut total: u64 = 0;
            for fetch in &sizes {
                let (Some(uid), Some(size)) = (fetch.uid, fetch.size) else {
                    continue;
                };
                if u64::from(size) > self.max_message_bytes {
                    self.set_aside(session, state, actions, uid, size).await?;
                } else {
                    wanted.push(uid);
                    total += u64::from(size);
                }
            }
            let mut raws = Vec::with_capacity(wanted.len());
            let mut fetched = Vec::with_capacity(wanted.len());
            if !wanted.is_empty() {
                // A big batch (tens of MB of attachments) gets time in proportion.
                let fetch_limit = limit + Duration::from_secs(total / (512 * 1024));
                let bodies: Vec<Fetch> = deadline(fetch_limit, "UID FETCH (BODY.PEEK[])", async {
                    let stream = session
                        .uid_fetch(uid_set(&wanted), "(UID BODY.PEEK[])")
                        .await
                        .map_err(other("UID FETCH"))?;
                    stream.try_collect().await.map_err(other("UID FETCH"))
                })
                .await?;
                for fetch in &bodies {
                    let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) else {
                        continue;
                    };
                    fetched.push(uid);
                    raws.push(RawMessage {
                        channel: self.name.clone(),
                        source: Some(format!(
                            "imap:{}:{}:{uid}",
                            self.name,
                            state.uidvalidity.unwrap_or(0)
                        )),
                        data: Arc::new(body.to_vec()),
                    });
                }
            }
            tracing::debug!(mailbox = %self.name, fetched = raws.len(), "Fetched.");
            if !raws.is_empty() {
                let dispositions = match pipeline.process(raws, OnBadInput::Quarantine).await {
                    Ok(d) => d,
                    Err(PipelineError::Unavailable(e)) => return Err(Failure::Database(e)),
                    Err(e) => return Err(Failure::Other(e.to_string())),
                };
                for (uid, disposition) in fetched.iter().zip(&dispositions) {
                    if let Disposition::Quarantined { id, reason } = disposition {
                        tracing::warn!(mailbox = %self.name, uid, quarantine = id, %reason, "Message quarantined.");
                    }
                }
                // Committed (or kept in the quarantine): now acknowledge on the server.
                tracing::debug!(mailbox = %self.name, "Committed.");
                actions.apply(session, &uid_set(&fetched), limit).await?;
                tracing::debug!(mailbox = %self.name, "Acknowledged.");
                taken += fetched.len();
            }
            state.last_uid = *chunk.last().expect("chunks are not empty");
            state.last_success = Some(now_ms());
            state.backlog = state.backlog.saturating_sub(chunk.len());
            // The new holder writes the state now; ours would move it back.
            if lease_lost() {
                break;
            }
            store
                .set_channel_state(&self.name, state)
                .await
                .map_err(db)?;
        }
        if let (Some(until), false) = (state.unseen_until, shutdown.is_cancelled()) {
            // The unread mail is in; read mail below the mark stays behind.
            state.last_uid = state.last_uid.max(until);
            state.unseen_until = None;
            store
                .set_channel_state(&self.name, state)
                .await
                .map_err(db)?;
        }
        if taken > 0 {
            tracing::info!(mailbox = %self.name, messages = taken, last_uid = state.last_uid, "Mailbox synced.");
        }
        Ok(taken)
    }

    /// An oversized message stays on the server (moved aside if configured)
    /// and is reported; it is never silently dropped.
    async fn set_aside(
        &self,
        session: &mut ImapSession,
        state: &mut ImapState,
        actions: &AfterActions,
        uid: u32,
        size: u32,
    ) -> Result<(), Failure> {
        let moved_to = self.config.oversize_folder.clone();
        if let Some(folder) = &moved_to {
            actions
                .move_to(session, &uid.to_string(), folder, self.command_timeout())
                .await?;
        }
        tracing::warn!(mailbox = %self.name, uid, size, limit = self.max_message_bytes, moved_to = ?moved_to,
            "Message over ingest.max_message_bytes left on the server.");
        if !state.oversized.iter().any(|o| o.uid == uid) {
            state.oversized.push(Oversized {
                uid,
                size,
                moved_to,
            });
            // The log has them all; the state keeps the latest for `mailroom status`.
            let excess = state.oversized.len().saturating_sub(MAX_OVERSIZED_REPORTED);
            state.oversized.drain(..excess);
        }
        Ok(())
    }
}

struct AfterActions {
    after: After,
    move_to: Option<String>,
    can_move: bool,
    can_uidplus: bool,
}

impl AfterActions {
    async fn apply(
        &self,
        session: &mut ImapSession,
        set: &str,
        limit: Duration,
    ) -> Result<(), Failure> {
        match self.after {
            After::Keep => Ok(()),
            After::MarkSeen => store_flag(session, set, "\\Seen", limit).await,
            After::Move => {
                let folder = self
                    .move_to
                    .as_deref()
                    .expect("validated: move has move_to");
                self.move_to(session, set, folder, limit).await
            }
            After::Delete => {
                store_flag(session, set, "\\Deleted", limit).await?;
                self.expunge(session, set, limit).await
            }
        }
    }

    async fn move_to(
        &self,
        session: &mut ImapSession,
        set: &str,
        folder: &str,
        limit: Duration,
    ) -> Result<(), Failure> {
        if self.can_move {
            return deadline(limit, "UID MOVE", async {
                session.uid_mv(set, folder).await.map_err(other("UID MOVE"))
            })
            .await;
        }
        deadline(limit, "UID COPY", async {
            session
                .uid_copy(set, folder)
                .await
                .map_err(other("UID COPY"))
        })
        .await?;
        store_flag(session, set, "\\Deleted", limit).await?;
        self.expunge(session, set, limit).await
    }

    /// Expunges only our UIDs: a plain EXPUNGE would also remove what other
    /// clients had marked deleted. Without UIDPLUS the messages stay flagged.
    async fn expunge(
        &self,
        session: &mut ImapSession,
        set: &str,
        limit: Duration,
    ) -> Result<(), Failure> {
        if !self.can_uidplus {
            tracing::warn!(
                "Server lacks UIDPLUS: messages are flagged \\Deleted but not expunged."
            );
            return Ok(());
        }
        deadline(limit, "UID EXPUNGE", async {
            let stream = session
                .uid_expunge(set)
                .await
                .map_err(other("UID EXPUNGE"))?;
            let _: Vec<u32> = stream.try_collect().await.map_err(other("UID EXPUNGE"))?;
            Ok(())
        })
        .await
    }
}

async fn store_flag(
    session: &mut ImapSession,
    set: &str,
    flag: &str,
    limit: Duration,
) -> Result<(), Failure> {
    deadline(limit, "UID STORE", async {
        let stream = session
            .uid_store(set, format!("+FLAGS.SILENT ({flag})"))
            .await
            .map_err(other("UID STORE"))?;
        let _: Vec<Fetch> = stream.try_collect().await.map_err(other("UID STORE"))?;
        Ok(())
    })
    .await
}

/// A compact UID set: runs of consecutive UIDs become `a:b`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted: Vec<u32> = uids
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    sorted.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// 1 s, 2 s, 4 s … capped at 5 minutes, with jitter so many mailboxes that
/// failed together do not retry together.
fn retry_delay(failures: u32) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << failures.saturating_sub(1).min(9))
        .min(300_000);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base - base / 8 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 10]), "1:3,5,9:10");
        assert_eq!(uid_set(&[7]), "7");
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert!(retry_delay(1) < Duration::from_secs(2));
        assert!(retry_delay(4) >= Duration::from_secs(7));
        assert!(retry_delay(30) <= Duration::from_secs(300 + 75));
    }
}
