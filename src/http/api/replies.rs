//! Replies to customers, participants, delivery state, and the team's
//! default From address.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{action_error, answer, store_error, Agent, ApiPath, Body, Refusals};
use crate::desk::snippets::insert_into_reply;
use crate::http::{problem, HttpState};
use crate::outbound::compose::NewAttachment;
use crate::outbound::{queue_reply, ActionError, Queued, ReplyRequest};
use crate::store::messages::{DeliveryView, Original};

pub fn routes(router: OpenApiRouter<Arc<HttpState>>) -> OpenApiRouter<Arc<HttpState>> {
    router
        .routes(routes!(reply))
        .routes(routes!(add_participant))
        .routes(routes!(message))
        .routes(routes!(original))
        .routes(routes!(default_address))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    /// Plain-text body; HTML is made from it when `body_html` is absent.
    pub body: Option<String>,
    pub body_html: Option<String>,
    /// One of the team's addresses; the team's default when unset.
    pub from: Option<String>,
    /// `addr` or `Name <addr>`; the ticket's contacts when unset.
    pub to: Option<Vec<String>>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The message (row id) answered; the latest one when unset.
    pub in_reply_to: Option<i64>,
    /// A status of the ticket's pipeline to set in the same step.
    pub status: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: BTreeMap<String, Value>,
    #[serde(default)]
    pub attachments: Vec<AttachmentBody>,
    /// Snippets (ids) whose rendered text goes after the body.
    #[serde(default)]
    pub snippets: Vec<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
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

/// Queues a reply to the ticket's contacts (optionally setting a status in
/// the same step). 202 when queued, 200 when an earlier request with the
/// same Idempotency-Key already did. The agent's draft on the ticket goes.
#[utoipa::path(post, path = "/api/v1/tickets/{number}/replies", tag = "replies",
    params(("number" = i64, Path, description = "Ticket number"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first reply")),
    request_body = ReplyBody,
    responses((status = 202, body = Queued), (status = 200, body = Queued), Refusals))]
pub async fn reply(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    headers: HeaderMap,
    Body(body): Body<ReplyBody>,
) -> Response {
    let mut attachments = Vec::with_capacity(body.attachments.len());
    for (i, a) in body.attachments.into_iter().enumerate() {
        match base64::engine::general_purpose::STANDARD.decode(a.content_base64.trim()) {
            Ok(data) => attachments.push(NewAttachment {
                filename: a.filename,
                content_type: a.content_type,
                data,
            }),
            Err(e) => {
                return action_error(crate::desk::invalid(
                    &format!("attachments[{i}].content_base64"),
                    format!("not base64: {e}"),
                ))
            }
        }
    }
    let mut request = ReplyRequest {
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
    let store = state.pipeline.store();
    let dir = state.pipeline.directory();
    if let Err(e) =
        insert_into_reply(store, dir, &actor, number, &body.snippets, &mut request).await
    {
        return action_error(e);
    }
    let result: Result<Queued, ActionError> =
        queue_reply(store, dir, &state.config, &actor, number, request).await;
    match result {
        Ok(queued) => {
            if let Some(wake) = &state.outbox_wake {
                wake.notify_one();
            }
            let status = match queued.replayed {
                true => StatusCode::OK,
                false => StatusCode::ACCEPTED,
            };
            answer(status, Ok(queued))
        }
        Err(e) => action_error(e),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantBody {
    /// `addr` or `Name <addr>`.
    pub address: String,
}

#[derive(Serialize, ToSchema)]
struct ParticipantAdded {
    ticket: i64,
    added: bool,
}

/// Adds a contact to a ticket's participants (default replies go to every
/// participant): 201 when added, 200 when they already were one. A ticket
/// made by hand without a contact gets its conversation this way.
#[utoipa::path(post, path = "/api/v1/tickets/{number}/participants", tag = "replies",
    params(("number" = i64, Path, description = "Ticket number")),
    request_body = ParticipantBody,
    responses((status = 201, body = ParticipantAdded), (status = 200, body = ParticipantAdded), Refusals))]
pub async fn add_participant(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<ParticipantBody>,
) -> Response {
    let store = state.pipeline.store();
    match crate::outbound::participants::add_participant(store, &actor, number, &body.address).await
    {
        Ok(added) => {
            let status = match added {
                true => StatusCode::CREATED,
                false => StatusCode::OK,
            };
            answer(
                status,
                Ok(ParticipantAdded {
                    ticket: number,
                    added,
                }),
            )
        }
        Err(e) => action_error(e),
    }
}

/// Delivery state of a message: `queued`, `sent` (with the relay's answer)
/// or `failed` (with the reason).
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "replies",
    params(("id" = i64, Path, description = "Message row id")),
    responses((status = 200, body = DeliveryView), Refusals))]
pub async fn message(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    match state.pipeline.store().message_delivery(id).await {
        Ok(Some(view)) if actor.can_access_team(view.team_id) => answer(StatusCode::OK, Ok(view)),
        // Another team's message answers like a missing one.
        Ok(_) => problem(
            StatusCode::NOT_FOUND,
            format!("message {id} does not exist"),
        ),
        Err(e) => store_error(e),
    }
}

/// The message's exact bytes as received (or as sent), to save as `.eml`:
/// the whole original, where the stored text stops at 1 MiB.
#[utoipa::path(get, path = "/api/v1/messages/{id}/original", tag = "replies",
    params(("id" = i64, Path, description = "Message row id")),
    responses((status = 200, description = "The message as it arrived", body = [u8],
        content_type = "message/rfc822"), Refusals))]
pub async fn original(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let store = state.pipeline.store();
    match store
        .message_original(id, |team| actor.can_access_team(team))
        .await
    {
        Ok(Original::Bytes(bytes)) => (
            [
                (header::CONTENT_TYPE, "message/rfc822".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"message-{id}.eml\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(Original::NotKept) => problem(
            StatusCode::NOT_FOUND,
            format!("message {id} has no stored original"),
        ),
        // Another team's message answers like a missing one.
        Ok(Original::NoSuchMessage) => problem(
            StatusCode::NOT_FOUND,
            format!("message {id} does not exist"),
        ),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultAddressBody {
    pub address: String,
}

#[derive(Serialize, ToSchema)]
struct DefaultAddress {
    team: String,
    default_address: String,
}

/// Chooses the team's default From address (team admins).
#[utoipa::path(put, path = "/api/v1/teams/{team}/default-address", tag = "replies",
    params(("team" = String, Path, description = "Team key")),
    request_body = DefaultAddressBody,
    responses((status = 200, body = DefaultAddress), Refusals))]
pub async fn default_address(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(team): ApiPath<String>,
    Body(body): Body<DefaultAddressBody>,
) -> Response {
    let result = crate::outbound::reply::set_default_address(
        state.pipeline.store(),
        state.pipeline.directory(),
        &actor,
        &team,
        &body.address,
    )
    .await
    .map(|()| DefaultAddress {
        default_address: body.address.to_lowercase(),
        team: team.clone(),
    });
    answer(StatusCode::OK, result)
}
