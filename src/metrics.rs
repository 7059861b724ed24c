//! Prometheus metrics, served on their own listener (`[metrics] bind`) so
//! they can stay on an internal address. Counters are kept in-process
//! (the `metrics` facade); queue depths are read from the store at scrape
//! time, so they are right across instances.
//!
//! - `mailroom_messages_total{outcome}`: created, appended, duplicate,
//!   recorded, quarantined, refused.
//! - `mailroom_replies_total{relay,result}`: sent, retry, failed.
//! - `mailroom_http_requests_total{status}`.
//! - `mailroom_outbox_replies{state}` (queued, failed),
//!   `mailroom_quarantine_messages`, `mailroom_mailbox_connected{channel}`,
//!   `mailroom_mailbox_backlog{channel}`, `mailroom_database_up`.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::channels::ImapState;
use crate::store::Store;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (tests): keep using ours for rendering.
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!("mailroom_messages_total", "Inbound messages by outcome.");
            metrics::describe_counter!("mailroom_replies_total", "Reply send attempts by result.");
            metrics::describe_counter!("mailroom_http_requests_total", "HTTP requests by status.");
            metrics::describe_gauge!("mailroom_outbox_replies", "Replies queued or failed.");
            metrics::describe_gauge!(
                "mailroom_database_up",
                "1 when the last scrape could read the database."
            );
            metrics::describe_gauge!(
                "mailroom_quarantine_messages",
                "Messages in the quarantine."
            );
            metrics::describe_gauge!(
                "mailroom_mailbox_connected",
                "1 while an IMAP mailbox is connected."
            );
            metrics::describe_gauge!(
                "mailroom_mailbox_backlog",
                "Messages waiting in an IMAP mailbox."
            );
            metrics::describe_counter!(
                "mailroom_mailbox_passed_over_total",
                "Messages an IMAP mailbox passed over after the server kept refusing them (they stay on the server)."
            );
            metrics::describe_gauge!(
                "mailroom_automatic_mail_held",
                "Notifications held back by the per-address rate limit."
            );
            metrics::describe_counter!(
                "mailroom_automatic_mail_held_total",
                "Notifications held back by the per-address rate limit, since start."
            );
            metrics::describe_gauge!(
                "mailroom_agent_mail",
                "Agents' emailed answers by state (pending, unverified)."
            );
            handle
        })
        .clone()
}

struct Exposition {
    handle: PrometheusHandle,
    store: Store,
    config: Config,
}

async fn scrape(State(state): State<Arc<Exposition>>) -> Response {
    // The counters are worth having while the database is down; the gauges
    // read from it keep their last values and `mailroom_database_up` says 0.
    let up = match refresh(&state).await {
        Ok(()) => 1.0,
        Err(e) => {
            tracing::warn!(error = %e, "Metrics: cannot read queue depths from the database.");
            0.0
        }
    };
    metrics::gauge!("mailroom_database_up").set(up);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.handle.render(),
    )
        .into_response()
}

/// Reads the queue depths from the store into gauges.
async fn refresh(state: &Exposition) -> Result<(), sqlx::Error> {
    // Queued and failed only: sent rows grow for ever (the counter
    // `mailroom_replies_total{result="sent"}` covers them).
    for label in ["queued", "failed"] {
        let n = state.store.outbox_count(label).await?;
        metrics::gauge!("mailroom_outbox_replies", "state" => label).set(n as f64);
    }
    let auto = state
        .store
        .automatic_mail_counts(crate::store::now_ms())
        .await?;
    metrics::gauge!("mailroom_automatic_mail_held").set(auto.held as f64);
    metrics::gauge!("mailroom_agent_mail", "state" => "pending")
        .set(auto.agent_mail_pending as f64);
    metrics::gauge!("mailroom_agent_mail", "state" => "unverified")
        .set(auto.agent_mail_unverified as f64);
    let quarantined = state.store.quarantine_count().await?;
    metrics::gauge!("mailroom_quarantine_messages").set(quarantined as f64);
    for (name, channel) in &state.config.channels {
        if channel.imap().is_none() {
            continue;
        }
        let s: ImapState = state.store.channel_state(name).await?;
        metrics::gauge!("mailroom_mailbox_connected", "channel" => name.clone())
            .set(if s.connected { 1.0 } else { 0.0 });
        metrics::gauge!("mailroom_mailbox_backlog", "channel" => name.clone())
            .set(s.backlog as f64);
    }
    Ok(())
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = Arc::new(Exposition {
        handle: install(),
        store,
        config,
    });
    tracing::info!(address = %listener.local_addr()?, "Metrics listener ready.");
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
