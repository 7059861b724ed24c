//! The agent API: `POST /api/v1/tickets/{number}/replies` queues a reply
//! (optionally setting a status in the same step), `GET /api/v1/messages/{id}`
//! tells how its delivery went, and `PUT /api/v1/teams/{team}/default-address`
//! lets a team admin choose the team's default From address.
//!
//! Every call carries `Authorization: Bearer <agent api_token>`; an agent
//! sees and acts on the tickets of its own teams only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{problem, unavailable, HttpState};
use crate::crypto::constant_time_eq;
use crate::outbound::compose::NewAttachment;
use crate::outbound::{queue_reply, Actor, ActionError, ReplyRequest};
use crate::store::{classify_error, ErrorClass};

/// The agent a bearer token belongs to, or the 401 to send.
fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<Actor, Box<Response>> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Box::new(problem(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <api_token> header",
            ))
        })?;
    // Compare with every token (constant time each) so timing does not tell
    // which agents exist.
    let mut found = None;
    for (token, agent) in &state.agent_tokens {
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            found = Some(agent);
        }
    }
    let agent =
        found.ok_or_else(|| Box::new(problem(StatusCode::UNAUTHORIZED, "unknown API token")))?;
    Actor::agent(state.pipeline.directory(), agent).ok_or_else(|| {
        Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "this token's agent is not configured any more",
        ))
    })
}

/// The agent behind the request and its JSON body, or the 401/422 to send.
fn authenticated_json<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Actor, T), Box<Response>> {
    let actor = authenticate(state, headers)?;
    let body = serde_json::from_slice(body).map_err(|e| {
        Box::new(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid JSON body: {e}"),
        ))
    })?;
    Ok((actor, body))
}

fn reply_error(e: ActionError) -> Response {
    match e {
        ActionError::NotFound(m) => problem(StatusCode::NOT_FOUND, m),
        ActionError::Forbidden(m) => problem(StatusCode::FORBIDDEN, m),
        ActionError::Invalid { field, message } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": format!("{field}: {message}"), "field": field })),
        )
            .into_response(),
        ActionError::Store(e) => store_error(e),
    }
}

fn store_error(e: sqlx::Error) -> Response {
    match classify_error(&e) {
        ErrorClass::Unavailable | ErrorClass::Transient => {
            unavailable(format!("database unavailable, retry later: {e}"))
        }
        ErrorClass::Permanent => {
            tracing::error!(error = %e, "API request failed in the store.");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the server log",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    /// Plain-text body; HTML is made from it when `body_html` is absent.
    pub body: Option<String>,
    pub body_html: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    pub in_reply_to: Option<i64>,
    pub status: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, Value>,
    #[serde(default)]
    pub attachments: Vec<AttachmentBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentBody {
    pub filename: String,
    #[serde(default = "octet_stream")]
    pub content_type: String,
    /// The file, base64-encoded.
    pub content_base64: String,
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

pub async fn reply(
    State(state): State<Arc<HttpState>>,
    Path(number): Path<i64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (actor, body) = match authenticated_json::<ReplyBody>(&state, &headers, &body) {
        Ok(parsed) => parsed,
        Err(r) => return *r,
    };
    let mut attachments = Vec::with_capacity(body.attachments.len());
    for (i, a) in body.attachments.into_iter().enumerate() {
        match base64::engine::general_purpose::STANDARD.decode(a.content_base64.trim()) {
            Ok(data) => attachments.push(NewAttachment {
                filename: a.filename,
                content_type: a.content_type,
                data,
            }),
            Err(e) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("attachments[{i}].content_base64: not base64: {e}"),
                )
            }
        }
    }
    let request = ReplyRequest {
        from: body.from,
        to: body.to,
        cc: body.cc,
        bcc: body.bcc,
        in_reply_to: body.in_reply_to,
        body_text: body.body,
        body_html: body.body_html,
        attachments,
        status: body.status,
        properties: body.properties,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let result = queue_reply(
        state.pipeline.store(),
        state.pipeline.directory(),
        &state.config,
        &actor,
        number,
        request,
    )
    .await;
    match result {
        Ok(queued) => {
            if let Some(wake) = &state.outbox_wake {
                wake.notify_one();
            }
            let status = if queued.replayed {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (status, Json(json!(queued))).into_response()
        }
        Err(e) => reply_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantBody {
    /// `addr` or `Name <addr>`.
    pub address: String,
}

/// Adds a participant to a ticket: 201 when added, 200 when they already
/// were one. Default replies go to every participant.
pub async fn add_participant(
    State(state): State<Arc<HttpState>>,
    Path(number): Path<i64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (actor, body) = match authenticated_json::<ParticipantBody>(&state, &headers, &body) {
        Ok(parsed) => parsed,
        Err(r) => return *r,
    };
    let store = state.pipeline.store();
    match crate::outbound::participants::add_participant(store, &actor, number, &body.address).await
    {
        Ok(added) => {
            let status = if added {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(json!({ "ticket": number, "added": added }))).into_response()
        }
        Err(e) => reply_error(e),
    }
}

/// A ticket with its messages, its `related` tickets (a late parent showed
/// they are one conversation) and where it was merged into.
pub async fn ticket(
    State(state): State<Arc<HttpState>>,
    Path(number): Path<i64>,
    headers: HeaderMap,
) -> Response {
    let actor = match authenticate(&state, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let store = state.pipeline.store();
    let missing = || {
        problem(
            StatusCode::NOT_FOUND,
            format!("ticket #{number} does not exist"),
        )
    };
    let team_of = |key: &str| state.pipeline.directory().teams.get(key).map(|t| t.id);
    match store.ticket_show(number).await {
        Ok(Some(view)) if team_of(&view.ticket.team).is_some_and(|t| actor.can_access_team(t)) => {
            Json(json!(view)).into_response()
        }
        Ok(_) => missing(),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    /// The ticket (number) this one lives on in.
    pub into: i64,
}

/// Merges a ticket into another of the same team.
pub async fn merge(
    State(state): State<Arc<HttpState>>,
    Path(number): Path<i64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (actor, body) = match authenticated_json::<MergeBody>(&state, &headers, &body) {
        Ok(parsed) => parsed,
        Err(r) => return *r,
    };
    let store = state.pipeline.store();
    match crate::outbound::merge::merge_tickets(store, &actor, number, body.into).await {
        Ok(merged) => Json(json!(merged)).into_response(),
        Err(e) => reply_error(e),
    }
}

/// Delivery state of a message: `queued`, `sent` (with the relay's answer)
/// or `failed` (with the reason).
pub async fn message(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    let actor = match authenticate(&state, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            format!("message {id} does not exist"),
        )
    };
    match state.pipeline.store().message_delivery(id).await {
        Ok(Some(view)) if actor.can_access_team(view.team_id) => Json(json!(view)).into_response(),
        // Another team's message answers like a missing one.
        Ok(_) => not_found(),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultAddressBody {
    pub address: String,
}

pub async fn default_address(
    State(state): State<Arc<HttpState>>,
    Path(team): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (actor, body) = match authenticated_json::<DefaultAddressBody>(&state, &headers, &body) {
        Ok(parsed) => parsed,
        Err(r) => return *r,
    };
    match crate::outbound::reply::set_default_address(
        state.pipeline.store(),
        state.pipeline.directory(),
        &actor,
        &team,
        &body.address,
    )
    .await
    {
        Ok(()) => Json(json!({ "team": team, "default_address": body.address.to_lowercase() }))
            .into_response(),
        Err(e) => reply_error(e),
    }
}
