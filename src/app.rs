//! The daemon (`mailroom run`): [`App::build`] connects, migrates, syncs the
//! config and binds the listeners (a port in use fails here, clearly);
//! [`App::run_until_stopped`] starts every task and supervises them until
//! `shutdown`, or until one of them fails (the daemon then stops with its
//! error rather than running on half-blind).
//!
//! Tasks run in named groups, stopped in order, each within a deadline,
//! naming the tasks still running when it passes; the whole drain fits in
//! one overall deadline (the longest send, at least 30 s, then 5 s for the
//! store):
//!
//! 1. `channels` (IMAP mailboxes, spools) stop taking mail; a batch in
//!    progress is committed and acknowledged first;
//! 2. `http` (listener, group commit, metrics) answers what it has;
//! 3. `outbox` finishes sends in flight and their Sent copies (it stops
//!    claiming new replies when the drain starts);
//! 4. `store` (the SQLite checkpointer), then the pool closes.
//!
//! systemd: `READY=1` once every task runs; `WATCHDOG=1` from the supervisor
//! loop, and only while the database answers; `STOPPING=1` at the drain.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::channel::imap::ImapChannel;
use crate::channel::maildir::MaildirChannel;
use crate::config::{ChannelSettings, Config, DmarcCheck};
use crate::http::{HttpState, Readiness};
use crate::net::dmarc::Dmarc;
use crate::outbound::Outbox;
use crate::pipeline::Pipeline;
use crate::store::{Directory, Store};

/// How long channels get to finish their batch after a stop.
const CHANNEL_DEADLINE: Duration = Duration::from_secs(30);

/// How long the store's own tasks get once everything else has stopped.
const STORE_DEADLINE: Duration = Duration::from_secs(5);

/// A running daemon's parts, ready to start.
pub struct App {
    config: Arc<Config>,
    store: Store,
    dir: Arc<Directory>,
    pipeline: Pipeline,
    http: Option<TcpListener>,
    metrics: Option<TcpListener>,
    ready: Arc<Readiness>,
    /// The DMARC check of agents' answers (its DNS); taken by the task.
    dmarc: Option<Dmarc>,
}

/// Tasks that are stopped together: one stop token, and each task's name.
struct Group {
    name: &'static str,
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, String>,
}

impl Group {
    fn new(name: &'static str) -> Group {
        Group {
            name,
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    fn spawn(
        &mut self,
        name: String,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end, with its name: a task ending before its group
    /// is stopped is a failure of the daemon.
    async fn next_exit(&mut self) -> anyhow::Error {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(anyhow::anyhow!("it panicked: {e}"))),
        };
        let name = self.names.remove(&id).unwrap_or_else(|| "?".into());
        match result {
            Ok(()) => anyhow::anyhow!("{} {name} stopped unexpectedly", self.name),
            Err(e) => e.context(format!("{} {name} failed", self.name)),
        }
    }

    /// Stops the group and waits up to `deadline`; tasks still running then
    /// are named in the log and aborted.
    async fn stop(&mut self, deadline: Duration) {
        self.stop.cancel();
        let drained = tokio::time::timeout(deadline, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, result),
                    Err(e) => (e.id(), Err(anyhow::anyhow!("it panicked: {e}"))),
                };
                let name = self.names.remove(&id).unwrap_or_default();
                if let Err(e) = result {
                    tracing::error!(group = self.name, task = %name, error = %format!("{e:#}"), "Task failed while stopping.");
                }
            }
        })
        .await;
        if drained.is_err() {
            let stragglers: Vec<&str> = self.names.values().map(String::as_str).collect();
            tracing::warn!(group = self.name, deadline_s = deadline.as_secs(), still_running = %stragglers.join(", "),
                "Tasks still running at the stop deadline; stopping them anyway.");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        tracing::debug!(group = self.name, "Stopped.");
    }
}

impl App {
    /// Connects, migrates, syncs the config and binds the listeners.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        let dir = Arc::new(store.sync_config(&config).await?);
        let pipeline = Pipeline::new(store.clone(), dir.clone(), config.ingest.clone());
        let bind = |key: &'static str, address: Option<String>| async move {
            match address {
                None => Ok(None),
                Some(address) => TcpListener::bind(&address)
                    .await
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {address}: {e}")),
            }
        };
        let http = bind("http.bind", config.http.bind.clone()).await?;
        let metrics = bind("metrics.bind", config.metrics.bind.clone()).await?;
        let dmarc = match config.agent_mail.dmarc {
            DmarcCheck::Off => Dmarc::offline(&[]),
            _ => Dmarc::system_or_waiting(),
        };
        Ok(App {
            config: Arc::new(config),
            store,
            dir,
            pipeline,
            http,
            metrics,
            ready: Arc::new(Readiness::starting()),
            dmarc: Some(dmarc),
        })
    }

    /// Checks DMARC against these records instead of the DNS (tests).
    pub fn with_dmarc(mut self, dmarc: Dmarc) -> App {
        self.dmarc = Some(dmarc);
        self
    }

    /// Where the HTTP listener accepts (useful with port 0).
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs every task until `shutdown` (or a task fails), then stops them
    /// in order; the error is the failed task's.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut channels = Group::new("channel");
        let mut http = Group::new("http");
        let mut outbox = Group::new("outbox");
        let mut store = Group::new("store");
        self.start_channels(&mut channels)?;
        let wake = self.start_outbox(&mut outbox);
        self.start_http(&mut http, wake);
        let store_for_checkpoints = self.store.clone();
        let stop = store.stop.clone();
        store.spawn("checkpoint".into(), async move {
            store_for_checkpoints.checkpoint_until(&stop).await;
            Ok(())
        });
        let tasks = channels.tasks.len() + http.tasks.len() + outbox.tasks.len();
        tracing::info!(
            tasks,
            database = self.store.backend().as_str(),
            "mailroom started."
        );
        self.ready.set_started();
        // systemd (Type=notify): migrations ran, every task runs, the
        // listener is bound. Outside systemd these are no-ops.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let failure = self
            .supervise(
                &shutdown,
                [&mut channels, &mut http, &mut outbox, &mut store],
            )
            .await;
        self.ready.set_draining();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        // The whole drain fits in one deadline (the unit's TimeoutStopSec is
        // set above it), so a send is never cut off by a SIGKILL. The
        // outbox claims nothing new from now on; its sends in flight go on
        // while the channels and the listener drain.
        let overall = tokio::time::Instant::now() + self.send_deadline();
        let left = |stage: Duration| {
            stage.min(overall.saturating_duration_since(tokio::time::Instant::now()))
        };
        outbox.stop.cancel();
        channels.stop(left(CHANNEL_DEADLINE)).await;
        let request_timeout = Duration::from_secs(self.config.http.request_timeout_secs + 5);
        http.stop(left(request_timeout)).await;
        outbox.stop(left(self.send_deadline())).await;
        store.stop(STORE_DEADLINE).await;
        self.store.close().await;
        tracing::info!("mailroom stopped.");
        failure.map_or(Ok(()), Err)
    }

    /// Waits for `shutdown` or the first task to end (a failure), feeding
    /// the systemd watchdog meanwhile while the database answers.
    async fn supervise(
        &self,
        shutdown: &CancellationToken,
        groups: [&mut Group; 4],
    ) -> Option<anyhow::Error> {
        let [a, b, c, d] = groups;
        let watchdog = sd_notify::watchdog_enabled();
        let mut tick = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::info!("Stop requested; draining.");
                    return None;
                }
                e = a.next_exit() => return Some(e),
                e = b.next_exit() => return Some(e),
                e = c.next_exit() => return Some(e),
                e = d.next_exit() => return Some(e),
                _ = tick.tick(), if watchdog.is_some() => {
                    let limit = watchdog.unwrap_or_default() / 4;
                    match tokio::time::timeout(limit, self.store.ping()).await {
                        Ok(true) => {
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                        _ => tracing::warn!("The database does not answer; not feeding the watchdog."),
                    }
                }
            }
        }
    }

    /// A send in progress gets its whole relay timeout: cut off, it would be
    /// sent again after a restart.
    fn send_deadline(&self) -> Duration {
        let longest_send = self
            .config
            .relays
            .values()
            .map(|r| Duration::from_secs(r.timeout_secs + 10))
            .max()
            .unwrap_or_default();
        CHANNEL_DEADLINE.max(longest_send)
    }

    fn start_channels(&self, group: &mut Group) -> anyhow::Result<()> {
        let config = &self.config;
        for (name, channel) in &config.channels {
            let (pipeline, stop) = (self.pipeline.clone(), group.stop.clone());
            match &channel.settings {
                ChannelSettings::Maildir(maildir) => {
                    let spool = MaildirChannel::new(name, maildir, config.ingest.batch_size);
                    group.spawn(name.clone(), spool.run(pipeline, stop));
                }
                ChannelSettings::Imap(_) => {
                    let lease = Duration::from_secs(config.instance.mailbox_lease_secs);
                    let mailbox = ImapChannel::new(name, channel, config.ingest.max_message_bytes)?
                        .with_lease(config.instance.holder_id(), lease);
                    group.spawn(name.clone(), mailbox.run(pipeline, stop));
                }
                // Fed by `mailroom ingest` or by the HTTP listener: nothing to run.
                ChannelSettings::Pipe | ChannelSettings::Webhook(_) | ChannelSettings::Form(_) => {}
            }
        }
        Ok(())
    }

    /// The outbox sends queued replies through the configured relays;
    /// returns what wakes it at once.
    fn start_outbox(&mut self, group: &mut Group) -> Arc<tokio::sync::Notify> {
        let outbox = Arc::new(Outbox::new(
            self.store.clone(),
            self.dir.clone(),
            self.config.clone(),
        ));
        let wake = outbox.wake.clone();
        if !self.config.relays.is_empty() {
            let stop = group.stop.clone();
            group.spawn("sender".into(), outbox.run(stop));
        }
        let stop = group.stop.clone();
        group.spawn(
            "agent-mail".into(),
            crate::desk::agent_mail::run(
                self.store.clone(),
                self.dir.clone(),
                self.config.clone(),
                self.dmarc.take().unwrap_or_else(|| Dmarc::offline(&[])),
                wake.clone(),
                stop,
            ),
        );
        wake
    }

    fn start_http(&mut self, group: &mut Group, wake: Arc<tokio::sync::Notify>) {
        if let Some(listener) = self.http.take() {
            let state = HttpState::new(self.pipeline.clone(), (*self.config).clone())
                .with_outbox(wake)
                .with_readiness(self.ready.clone());
            let stop = group.stop.clone();
            group.spawn(
                "listener".into(),
                crate::http::serve_on(listener, Arc::new(state), stop),
            );
        }
        if let Some(listener) = self.metrics.take() {
            crate::metrics::install();
            let (store, config, stop) = (
                self.store.clone(),
                (*self.config).clone(),
                group.stop.clone(),
            );
            group.spawn(
                "metrics".into(),
                crate::metrics::serve(listener, store, config, stop),
            );
        }
    }
}
