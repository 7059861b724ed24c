//! `mailroom run`: connect, migrate, start every channel, and stop them
//! gracefully on SIGINT/SIGTERM (a batch in progress is committed and
//! acknowledged first). If a channel task fails, the daemon stops with its
//! error rather than running on half-blind.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channel::imap::ImapChannel;
use crate::channel::maildir::MaildirChannel;

use crate::config::{ChannelKind, Config};
use crate::http::HttpState;
use crate::outbound::Outbox;
use crate::pipeline::Pipeline;
use crate::store::Store;

/// How long running tasks get to finish after a stop signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.database).await?;
    store.migrate().await?;
    let dir = Arc::new(store.sync_config(&config).await?);
    let pipeline = Pipeline::new(store.clone(), dir.clone(), config.ingest.clone());
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();

    for (name, channel) in &config.channels {
        match channel.kind {
            ChannelKind::Maildir => {
                let maildir = MaildirChannel {
                    name: name.clone(),
                    path: channel.path.clone().expect("validated: maildir has a path"),
                    poll_interval: channel.poll_interval(),
                    after: channel.after_action(),
                    batch_size: config.ingest.batch_size,
                };
                let (pipeline, token, name) =
                    (pipeline.clone(), shutdown.child_token(), name.clone());
                tasks.spawn(async move { (name, maildir.run(pipeline, token).await) });
            }
            ChannelKind::Imap => {
                let mailbox = ImapChannel::new(name, channel, config.ingest.max_message_bytes)?
                    .with_lease(
                        config.instance.holder_id(),
                        Duration::from_secs(config.instance.mailbox_lease_secs),
                    );
                let (pipeline, token, name) =
                    (pipeline.clone(), shutdown.child_token(), name.clone());
                tasks.spawn(async move { (name, mailbox.run(pipeline, token).await) });
            }
            // Fed by `mailroom ingest` or by the HTTP listener: nothing to run.
            ChannelKind::Pipe | ChannelKind::Webhook | ChannelKind::Form => {}
        }
    }
    // The outbox sends queued replies through the configured relays.
    let outbox = Arc::new(Outbox::new(
        store.clone(),
        dir.clone(),
        Arc::new(config.clone()),
    ));
    let wake = outbox.wake.clone();
    if !config.relays.is_empty() {
        let token = shutdown.child_token();
        let outbox = outbox.clone();
        tasks.spawn(async move { ("outbox".to_string(), outbox.run(token).await) });
    }
    if let Some(bind) = &config.http.bind {
        // Bound here, so a port in use stops the start with a clear error
        // and READY=1 below means the listener accepts.
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("http.bind: cannot listen on {bind}: {e}"))?;
        let state = Arc::new(HttpState::new(pipeline.clone(), config.clone()).with_outbox(wake));
        let token = shutdown.child_token();
        tasks.spawn(async move {
            let served = crate::http::serve_on(listener, state, token).await;
            ("http".to_string(), served)
        });
    }
    if let Some(bind) = &config.metrics.bind {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("metrics.bind: cannot listen on {bind}: {e}"))?;
        crate::metrics::install();
        let (store, config, token) = (store.clone(), config.clone(), shutdown.child_token());
        tasks.spawn(async move {
            let served = crate::metrics::serve(listener, store, config, token).await;
            ("metrics".to_string(), served)
        });
    }
    tracing::info!(tasks = tasks.len(), database = ?store.backend(), "mailroom started.");
    // systemd (Type=notify): migrations ran, every task runs, the listener
    // is bound. Outside systemd these are no-ops.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval / 2).await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }

    let failure = tokio::select! {
        _ = stop_signal() => {
            tracing::info!("Stop requested; draining.");
            None
        }
        Some(joined) = tasks.join_next(), if !tasks.is_empty() => Some(match joined {
            Ok((name, Ok(()))) => anyhow::anyhow!("channel {name} stopped unexpectedly"),
            Ok((name, Err(e))) => e.context(format!("channel {name} failed")),
            Err(e) => anyhow::anyhow!("a channel task panicked: {e}"),
        }),
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    // A send in progress gets its whole relay timeout: cut off, it would be
    // sent again after a restart.
    let longest_send = config
        .relays
        .values()
        .map(|r| Duration::from_secs(r.timeout_secs + 10))
        .max()
        .unwrap_or_default();
    let drained = tokio::time::timeout(DRAIN_DEADLINE.max(longest_send), async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(e))) = joined {
                tracing::error!(channel = %name, error = %e, "Channel failed while stopping.");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "Tasks still running at the drain deadline; stopping anyway."
        );
    }
    store.close().await;
    tracing::info!("mailroom stopped.");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
