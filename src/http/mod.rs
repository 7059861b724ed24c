//! The HTTP listener: `/healthz`, `/readyz`, web forms (`POST /forms/{name}`),
//! inbound-mail webhooks (`POST /inbound/{channel}` with a raw RFC 5322
//! body) and the agent API under `/api/v1` (see `api`). A webhook answers
//! 2xx only after the message is committed, and 503 when the database is
//! unavailable so the sender retries.

pub mod api;
pub mod auth;
pub mod forms;
pub mod serve;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::{
    CommitQueue, CommitWorker, Disposition, Hints, Pipeline, PipelineError, RawMessage,
};

/// What `/readyz` reports beside the database: whether the process has
/// started its work (every channel task runs) and is not draining.
#[derive(Debug)]
pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Not started yet: the daemon says when it is.
    pub fn starting() -> Readiness {
        Readiness {
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// A listener on its own has nothing else to start.
    pub fn started() -> Readiness {
        let ready = Readiness::starting();
        ready.set_started();
        ready
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Stopping: a load balancer should send its traffic elsewhere.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// What every handler shares.
pub struct HttpState {
    pub pipeline: Pipeline,
    /// Group commit for submissions arriving concurrently.
    pub commits: CommitQueue,
    /// The group commit's worker, run by `serve_on` beside the listener.
    commit_worker: std::sync::Mutex<Option<CommitWorker>>,
    pub config: Config,
    /// Whether the process has started its work; `/readyz` reports it.
    pub ready: Arc<Readiness>,
    /// Signatures already used (see `auth`).
    pub replays: auth::ReplayGuard,
    /// Per-IP submission limits for browser forms.
    pub rate_limiter: forms::RateLimiter,
    /// Agent API tokens (resolved once) → agent key.
    pub agent_tokens: Vec<(String, String)>,
    /// Wakes the outbox worker when a reply is queued; none when this
    /// process does not send (replies then wait for the next poll).
    pub outbox_wake: Option<Arc<tokio::sync::Notify>>,
}

impl HttpState {
    pub fn new(pipeline: Pipeline, config: Config) -> HttpState {
        let (commits, worker) = CommitQueue::new(pipeline.clone(), 128);
        let replays = auth::ReplayGuard::new(pipeline.store().clone());
        HttpState {
            commits,
            commit_worker: std::sync::Mutex::new(Some(worker)),
            pipeline,
            ready: Arc::new(Readiness::started()),
            replays,
            rate_limiter: forms::RateLimiter::new(&config),
            agent_tokens: config
                .agents
                .iter()
                .filter_map(|(key, a)| {
                    let token = a.api_token.as_ref()?.resolve().ok()?;
                    (!token.is_empty()).then(|| (token, key.clone()))
                })
                .collect(),
            outbox_wake: None,
            config,
        }
    }

    /// Lets replies queued through the API wake this outbox at once.
    pub fn with_outbox(mut self, wake: Arc<tokio::sync::Notify>) -> HttpState {
        self.outbox_wake = Some(wake);
        self
    }

    /// Reports this readiness (the daemon's) on `/readyz`.
    pub fn with_readiness(mut self, ready: Arc<Readiness>) -> HttpState {
        self.ready = ready;
        self
    }
}

/// The OpenAPI document of `/api/v1`, made from the same annotations as
/// the routes.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api::routes().1
}

async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

pub fn router(state: Arc<HttpState>) -> Router {
    let (api_routes, _) = api::routes();
    let limit = state.config.http.max_body_bytes;
    let timeout = Duration::from_secs(state.config.http.request_timeout_secs);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/inbound/{channel}", post(inbound))
        .route("/forms/{name}", post(forms::submit))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(api_routes)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |request, next| {
            receive_within(timeout, limit, request, next)
        }))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_response(
                    |response: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                        metrics::counter!("mailroom_http_requests_total", "status" => response.status().as_str().to_string()).increment(1);
                        tracing::info!(status = response.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "Request served.");
                    },
                ),
        )
        .with_state(state)
}

/// Reads the whole request body within `timeout` (408 otherwise, nothing
/// stored) and at most `limit` bytes (413). The handler then runs without
/// a deadline of its own: once a submission is received, cutting it short
/// could answer 408 for a message that is committed a moment later, and a
/// retry would make a second ticket. Handlers are bounded by the database's
/// own timeouts instead (503 when it does not answer).
async fn receive_within(
    timeout: Duration,
    limit: usize,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(body, limit).collect();
    let bytes = match tokio::time::timeout(timeout, limited).await {
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request was not received within {} s",
                    timeout.as_secs()
                ),
            )
        }
        Ok(Err(e)) => {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            return match too_large {
                true => problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than http.max_body_bytes ({limit})"),
                ),
                false => problem(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request: {e}"),
                ),
            };
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Serves on an already bound listener until `shutdown` (tests bind port
/// 0). Requests in progress are answered first, and the group commit's
/// worker commits what they submitted before this returns.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "HTTP listener ready.");
    let worker = state.commit_worker.lock().ok().and_then(|mut w| w.take());
    let commits_done = CancellationToken::new();
    let limits = serve::Limits::from_config(&state.config.http);
    let serve = async {
        let served = serve::serve(listener, router(state), limits, shutdown).await;
        commits_done.cancel();
        served
    };
    let commit = async {
        if let Some(worker) = worker {
            worker.run(&commits_done).await;
        }
    };
    let (served, ()) = tokio::join!(serve, commit);
    Ok(served?)
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let database = state.pipeline.store().ping().await;
    let started = state.ready.started.load(Ordering::SeqCst);
    let draining = state.ready.draining.load(Ordering::SeqCst);
    let status = if database && started && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "database": database, "channels_started": started, "draining": draining });
    (status, Json(body)).into_response()
}

/// An error answer: a status and a sentence saying what to fix.
pub fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn unavailable(message: String) -> Response {
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("5"));
    response
}

async fn inbound(
    State(state): State<Arc<HttpState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(config) = state
        .config
        .channels
        .get(&channel)
        .and_then(|c| c.webhook())
    else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no webhook channel named {channel:?}"),
        );
    };
    let credentials = auth::Credentials {
        bearer: config.auth_token.as_ref(),
        signing_secret: config.signing_secret.as_ref(),
    };
    let accepted = match auth::check(&credentials, &headers, &body, &state.replays).await {
        Ok(accepted) => accepted,
        Err(denied) => return denied.into_response(),
    };
    let raw = RawMessage {
        channel: channel.clone(),
        source: Some("http".into()),
        data: Arc::new(body.to_vec()),
    };
    let result = state.commits.submit(raw, Hints::default()).await;
    if matches!(result, Err(PipelineError::Unavailable(_))) {
        state.replays.forget(&accepted);
    }
    match result {
        Ok(Disposition::Applied(outcome)) => {
            let status = match outcome {
                crate::pipeline::Outcome::Created { .. } => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            (status, Json(json!(outcome))).into_response()
        }
        other => not_applied(other),
    }
}

/// The answer for a submission that was not applied: kept in the quarantine
/// (202), unusable (422), or the database is unavailable (503, retry later).
pub(crate) fn not_applied(result: Result<Disposition, PipelineError>) -> Response {
    match result {
        Ok(Disposition::Applied(outcome)) => (StatusCode::OK, Json(json!(outcome))).into_response(),
        Ok(Disposition::Quarantined { id, reason }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "outcome": "quarantined", "quarantine_id": id, "reason": reason })),
        )
            .into_response(),
        Ok(Disposition::Refused { reason }) => problem(StatusCode::UNPROCESSABLE_ENTITY, reason),
        Err(PipelineError::Unavailable(e)) => {
            unavailable(format!("database unavailable, retry later: {e}"))
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
