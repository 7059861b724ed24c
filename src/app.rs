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
//! A reload (SIGHUP, `mailroom reload`) prepares what the new config needs
//! (its channels, listeners, the directory in the store), then drains
//! stages 1–3 as for a stop and starts them again; the store's tasks, the
//! pool and the bound sockets stay. A config that cannot be prepared
//! changes nothing.
//!
//! systemd: `READY=1` once every task runs; `WATCHDOG=1` from the supervisor
//! loop, and only while the database answers; `STOPPING=1` at the drain.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
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
    /// The listeners stay bound for the life of the process (a reload
    /// serves the same socket again; connections wait in its backlog).
    http: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    ready: Arc<Readiness>,
    /// The DMARC check of agents' answers (its DNS).
    dmarc: Arc<Dmarc>,
}

/// The tasks a reload drains and starts again: all but the store's own.
struct Work {
    /// One group per channel, so a reload can leave unchanged ones running.
    channels: BTreeMap<String, Group>,
    http: Group,
    outbox: Group,
}

/// A config to apply (loaded and validated), and who wants to hear how it
/// went: the changes applied, or why it was refused.
pub struct Reload {
    pub config: Config,
    pub outcome: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
}

impl Work {
    fn new() -> Work {
        Work {
            channels: BTreeMap::new(),
            http: Group::new("http"),
            outbox: Group::new("outbox"),
        }
    }
}

/// What ends the supervisor's wait.
enum Event {
    Stop,
    Failed(anyhow::Error),
    Reload(Box<Reload>),
}

/// A channel that runs as a task, built before anything is stopped so a
/// reload with a channel that cannot start changes nothing.
enum Runner {
    Spool(MaildirChannel),
    Mailbox(Box<ImapChannel>),
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
        let http = bind("http.bind", config.http.bind.as_deref()).await?;
        let metrics = bind("metrics.bind", config.metrics.bind.as_deref()).await?;
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
            dmarc: Arc::new(dmarc),
        })
    }

    /// Checks DMARC against these records instead of the DNS (tests).
    pub fn with_dmarc(mut self, dmarc: Dmarc) -> App {
        self.dmarc = Arc::new(dmarc);
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
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.run_with_reloads(shutdown, None).await
    }

    /// As [`App::run_until_stopped`], applying each config received on
    /// `reloads` (already loaded and validated) while running.
    pub async fn run_with_reloads(
        mut self,
        shutdown: CancellationToken,
        mut reloads: Option<mpsc::UnboundedReceiver<Reload>>,
    ) -> anyhow::Result<()> {
        let mut store = Group::new("store");
        let runners = build_channels(&self.config)?;
        let mut work = self.start_work(runners)?;
        let store_for_checkpoints = self.store.clone();
        let stop = store.stop.clone();
        store.spawn("checkpoint".into(), async move {
            store_for_checkpoints.checkpoint_until(&stop).await;
            Ok(())
        });
        let tasks = work.channels.len() + work.http.tasks.len() + work.outbox.tasks.len();
        tracing::info!(
            tasks,
            database = self.store.backend().as_str(),
            "mailroom started."
        );
        self.ready.set_started();
        // systemd (Type=notify): migrations ran, every task runs, the
        // listener is bound. Outside systemd these are no-ops.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let failure = loop {
            match self
                .next_event(&shutdown, &mut work, &mut store, &mut reloads)
                .await
            {
                Event::Stop => break None,
                Event::Failed(e) => break Some(e),
                Event::Reload(reload) => {
                    let Reload { config, outcome } = *reload;
                    let (running, result) = self.reload(config, work).await;
                    if let Some(outcome) = outcome {
                        let _ = outcome.send(result);
                    }
                    match running {
                        Ok(running) => work = running,
                        Err(e) => {
                            work = Work::new();
                            break Some(e);
                        }
                    }
                }
            }
        };
        self.ready.set_draining();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.drain(work).await;
        store.stop(STORE_DEADLINE).await;
        self.store.close().await;
        tracing::info!("mailroom stopped.");
        failure.map_or(Ok(()), Err)
    }

    /// Stops the work in order. The whole drain fits in one deadline (the
    /// unit's TimeoutStopSec is set above it), so a send is never cut off
    /// by a SIGKILL. The outbox claims nothing new from the start; its
    /// sends in flight go on while the channels and the listener drain.
    async fn drain(&self, mut work: Work) {
        let overall = tokio::time::Instant::now() + self.send_deadline();
        let left = |stage: Duration| {
            stage.min(overall.saturating_duration_since(tokio::time::Instant::now()))
        };
        work.outbox.stop.cancel();
        stop_channels(work.channels.values_mut(), left(CHANNEL_DEADLINE)).await;
        let request_timeout = Duration::from_secs(self.config.http.request_timeout_secs + 5);
        work.http.stop(left(request_timeout)).await;
        work.outbox.stop(left(self.send_deadline())).await;
    }

    /// Applies a new config: everything that can fail (channels that
    /// cannot start, a listener that cannot bind, the database) is done
    /// first, and on failure the running work goes on untouched. Then the
    /// work drains as for a stop (batches committed, sends finished,
    /// requests answered) and starts again with the new config. Only a
    /// failure to start again (rare: it was all prepared) stops the daemon.
    async fn reload(
        &mut self,
        config: Config,
        work: Work,
    ) -> (anyhow::Result<Work>, Result<String, String>) {
        let prepared = async {
            let runners = build_channels(&config)?;
            let http = rebind("http.bind", &self.config.http.bind, &config.http.bind).await?;
            let metrics = rebind(
                "metrics.bind",
                &self.config.metrics.bind,
                &config.metrics.bind,
            )
            .await?;
            let dir = self.store.sync_config(&config).await?;
            anyhow::Ok((runners, http, metrics, dir))
        };
        let (runners, http, metrics, dir) = match prepared.await {
            Ok(prepared) => prepared,
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(error = %reason, "Reload refused; the running config stays.");
                return (Ok(work), Err(reason));
            }
        };
        let changes = describe_changes(&self.config, &config);
        for kept in restart_only(&self.config, &config) {
            tracing::warn!(
                setting = kept,
                "Reload: this setting takes effect at the next restart; the running value stays."
            );
        }
        // Unchanged mailboxes go on as they are (no reconnect, no lost IDLE).
        let mut work = work;
        let mut kept = BTreeMap::new();
        for name in unchanged_channels(&self.config, &config) {
            if let Some(group) = work.channels.remove(&name) {
                kept.insert(name, group);
            }
        }
        let kept_names: Vec<&str> = kept.keys().map(String::as_str).collect();
        tracing::info!(%changes, kept_running = %kept_names.join(", "),
            "Reloading: draining the changed channels, the listener and the outbox.");
        self.drain(work).await;
        let mut config = config;
        // Kept as they run (see restart_only).
        config.database = self.config.database.clone();
        config.log = self.config.log.clone();
        config.instance = self.config.instance.clone();
        if let Some(http) = http {
            self.http = http;
        }
        if let Some(metrics) = metrics {
            self.metrics = metrics;
        }
        self.dir = Arc::new(dir);
        self.pipeline = Pipeline::new(self.store.clone(), self.dir.clone(), config.ingest.clone());
        self.config = Arc::new(config);
        let runners = runners
            .into_iter()
            .filter(|(name, _)| !kept.contains_key(name))
            .collect();
        match self.start_work(runners) {
            Ok(mut work) => {
                work.channels.extend(kept);
                tracing::info!(%changes, "Config reloaded.");
                (Ok(work), Ok(changes))
            }
            Err(e) => {
                stop_channels(kept.values_mut(), CHANNEL_DEADLINE).await;
                let reason = format!("cannot start again after the reload: {e:#}");
                (Err(anyhow::anyhow!(reason.clone())), Err(reason))
            }
        }
    }

    /// Waits for `shutdown`, a reload or the first task to end (a failure),
    /// feeding the systemd watchdog meanwhile while the database answers.
    async fn next_event(
        &self,
        shutdown: &CancellationToken,
        work: &mut Work,
        store: &mut Group,
        reloads: &mut Option<mpsc::UnboundedReceiver<Reload>>,
    ) -> Event {
        let watchdog = sd_notify::watchdog_enabled();
        let mut tick = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::info!("Stop requested; draining.");
                    return Event::Stop;
                }
                e = next_channel_exit(&mut work.channels) => return Event::Failed(e),
                e = work.http.next_exit() => return Event::Failed(e),
                e = work.outbox.next_exit() => return Event::Failed(e),
                e = store.next_exit() => return Event::Failed(e),
                reload = next_reload(reloads) => return Event::Reload(Box::new(reload)),
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

    fn start_work(&mut self, runners: Vec<(String, Runner)>) -> anyhow::Result<Work> {
        let mut work = Work::new();
        for (name, runner) in runners {
            let mut group = Group::new("channel");
            let (pipeline, stop) = (self.pipeline.clone(), group.stop.clone());
            match runner {
                Runner::Spool(spool) => group.spawn(name.clone(), spool.run(pipeline, stop)),
                Runner::Mailbox(mailbox) => group.spawn(name.clone(), mailbox.run(pipeline, stop)),
            }
            work.channels.insert(name, group);
        }
        let wake = self.start_outbox(&mut work.outbox);
        self.start_http(&mut work.http, wake)?;
        Ok(work)
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
                self.dmarc.clone(),
                wake.clone(),
                stop,
            ),
        );
        wake
    }

    fn start_http(
        &mut self,
        group: &mut Group,
        wake: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<()> {
        if let Some(listener) = &self.http {
            let listener = serve_again(listener)?;
            let state = HttpState::new(self.pipeline.clone(), (*self.config).clone())
                .with_outbox(wake)
                .with_readiness(self.ready.clone());
            let stop = group.stop.clone();
            group.spawn(
                "listener".into(),
                crate::http::serve_on(listener, Arc::new(state), stop),
            );
        }
        if let Some(listener) = &self.metrics {
            let listener = serve_again(listener)?;
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
        Ok(())
    }
}

/// The channels that run as tasks. Fed by `mailroom ingest` or by the HTTP
/// listener, the others have nothing to run.
fn build_channels(config: &Config) -> anyhow::Result<Vec<(String, Runner)>> {
    let mut runners = Vec::new();
    for (name, channel) in &config.channels {
        let runner = match &channel.settings {
            ChannelSettings::Maildir(maildir) => {
                Runner::Spool(MaildirChannel::new(name, maildir, config.ingest.batch_size))
            }
            ChannelSettings::Imap(_) => {
                let lease = Duration::from_secs(config.instance.mailbox_lease_secs);
                let mailbox = ImapChannel::new(name, channel, config.ingest.max_message_bytes)?
                    .with_lease(config.instance.holder_id(), lease);
                Runner::Mailbox(Box::new(mailbox))
            }
            ChannelSettings::Pipe | ChannelSettings::Webhook(_) | ChannelSettings::Form(_) => {
                continue
            }
        };
        runners.push((name.clone(), runner));
    }
    Ok(runners)
}

/// The first channel task to end (a failure); never, with no channels.
async fn next_channel_exit(channels: &mut BTreeMap<String, Group>) -> anyhow::Error {
    if channels.is_empty() {
        return std::future::pending().await;
    }
    let exits = channels.values_mut().map(|g| Box::pin(g.next_exit()));
    futures::future::select_all(exits).await.0
}

/// Stops channel groups side by side, each within `deadline`.
async fn stop_channels<'a>(groups: impl Iterator<Item = &'a mut Group>, deadline: Duration) {
    futures::future::join_all(groups.map(|g| g.stop(deadline))).await;
}

/// The channels a reload may leave running: the same settings (secrets
/// compared by value) and nothing the inbound pipeline reads changed.
fn unchanged_channels(running: &Config, wanted: &Config) -> Vec<String> {
    let rest = |c: &Config| {
        let mut c = c.clone();
        c.channels.clear();
        format!("{c:?}")
    };
    if rest(running) != rest(wanted) {
        return Vec::new();
    }
    running
        .channels
        .iter()
        .filter(|(name, old)| {
            wanted.channels.get(*name).is_some_and(|new| {
                format!("{old:?}") == format!("{new:?}") && old.secrets() == new.secrets()
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

async fn bind(key: &str, address: Option<&str>) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {address}: {e}"))?;
    Ok(Some(listener.into_std()?))
}

/// A listener for a changed address (`Some(None)` when it was removed);
/// `None` when the address stays.
async fn rebind(
    key: &str,
    running: &Option<String>,
    wanted: &Option<String>,
) -> anyhow::Result<Option<Option<std::net::TcpListener>>> {
    if running == wanted {
        return Ok(None);
    }
    bind(key, wanted.as_deref()).await.map(Some)
}

/// The same bound socket for another serving task.
fn serve_again(listener: &std::net::TcpListener) -> anyhow::Result<TcpListener> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// The next config to apply; once the sender is gone, never.
async fn next_reload(reloads: &mut Option<mpsc::UnboundedReceiver<Reload>>) -> Reload {
    if let Some(receiver) = reloads {
        if let Some(reload) = receiver.recv().await {
            return reload;
        }
    }
    *reloads = None;
    std::future::pending().await
}

/// Settings a reload does not change (the store's pool, the log
/// subscriber and this process's identity are made once); named so the
/// operator knows a restart is needed.
fn restart_only(running: &Config, wanted: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.database, &wanted.database);
    let mut kept = Vec::new();
    if a.url.resolve().ok() != b.url.resolve().ok()
        || a.max_connections != b.max_connections
        || a.connect_timeout_secs != b.connect_timeout_secs
    {
        kept.push("database");
    }
    if format!("{:?}", running.log) != format!("{:?}", wanted.log) {
        kept.push("log");
    }
    if format!("{:?}", running.instance) != format!("{:?}", wanted.instance) {
        kept.push("instance");
    }
    kept
}

/// "channels +new -old ~changed; teams …": what a reload changes, for the log.
fn describe_changes(running: &Config, wanted: &Config) -> String {
    fn diff<V: std::fmt::Debug>(
        what: &str,
        a: &std::collections::BTreeMap<String, V>,
        b: &std::collections::BTreeMap<String, V>,
    ) -> Option<String> {
        let mut parts = Vec::new();
        for key in b.keys().filter(|k| !a.contains_key(*k)) {
            parts.push(format!("+{key}"));
        }
        for key in a.keys().filter(|k| !b.contains_key(*k)) {
            parts.push(format!("-{key}"));
        }
        for (key, value) in b {
            if a.get(key)
                .is_some_and(|old| format!("{old:?}") != format!("{value:?}"))
            {
                parts.push(format!("~{key}"));
            }
        }
        (!parts.is_empty()).then(|| format!("{what} {}", parts.join(" ")))
    }
    let parts: Vec<String> = [
        diff("channels", &running.channels, &wanted.channels),
        diff("teams", &running.teams, &wanted.teams),
        diff("agents", &running.agents, &wanted.agents),
        diff("relays", &running.relays, &wanted.relays),
        diff("pipelines", &running.pipelines, &wanted.pipelines),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "no channel, team, agent, relay or pipeline changed".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(password: &str, extra: &str) -> Config {
        Config::from_toml(&format!(
            r#"
[database]
url = "sqlite::memory:"
[pipelines.support]
statuses = [{{ name = "open", kind = "open" }}, {{ name = "closed", kind = "closed" }}]
[teams.support]
addresses = [{{ address = "support@example.com" }}]
[channels.inbox]
kind = "imap"
team = "support"
pipeline = "support"
host = "imap.example.com"
username = "support"
password = "{password}"
[channels.spool]
kind = "maildir"
team = "support"
pipeline = "support"
path = "/var/spool/mailroom"
{extra}
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_reload_keeps_only_channels_that_did_not_change_secrets_included() {
        let running = config("one", "");
        assert_eq!(
            unchanged_channels(&running, &config("one", "")),
            ["inbox", "spool"]
        );
        // The inline password is redacted in Debug; its value still counts.
        assert_eq!(unchanged_channels(&running, &config("two", "")), ["spool"]);
        // Anything the pipeline reads changed: every channel restarts.
        let team = "[teams.sales]\naddresses = [{ address = \"sales@example.com\" }]";
        assert!(unchanged_channels(&running, &config("one", team)).is_empty());
    }
}
