//! Blocked senders and the quarantine their mail is kept in (admins).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{action_error, answer, done, Agent, ApiPath, Body, Refusals};
use crate::desk::{blocks, require_admin, ActionError};
use crate::http::HttpState;
use crate::pipeline::{Disposition, RetryError};
use crate::store::blocks::BlockView;
use crate::store::quarantine::QuarantineEntry;

pub fn routes(router: OpenApiRouter<Arc<HttpState>>) -> OpenApiRouter<Arc<HttpState>> {
    router
        .routes(routes!(list, block))
        .routes(routes!(unblock))
        .routes(routes!(quarantine))
        .routes(routes!(release))
}

/// Blocked addresses and domains.
#[utoipa::path(get, path = "/api/v1/blocked-senders", tag = "senders",
    responses((status = 200, body = Vec<BlockView>), Refusals))]
pub async fn list(State(state): State<Arc<HttpState>>, Agent(actor): Agent) -> Response {
    answer(
        StatusCode::OK,
        blocks::list(state.pipeline.store(), &actor).await,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockBody {
    /// An address, or a domain (`example.com` or `@example.com`).
    pub value: String,
    pub reason: Option<String>,
}

/// Blocks an address or a domain: its mail creates no ticket and triggers
/// nothing; it is kept in the quarantine. 201 when new, 200 when it was
/// blocked already.
#[utoipa::path(post, path = "/api/v1/blocked-senders", tag = "senders", request_body = BlockBody,
    responses((status = 201, body = BlockView), (status = 200, body = BlockView), Refusals))]
pub async fn block(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    Body(b): Body<BlockBody>,
) -> Response {
    let store = state.pipeline.store();
    match blocks::block(store, &actor, &b.value, b.reason.as_deref()).await {
        Ok((view, true)) => answer(StatusCode::CREATED, Ok(view)),
        Ok((view, false)) => answer(StatusCode::OK, Ok(view)),
        Err(e) => action_error(e),
    }
}

#[utoipa::path(delete, path = "/api/v1/blocked-senders/{value}", tag = "senders",
    params(("value" = String, Path, description = "The blocked address or domain")),
    responses((status = 204, description = "Unblocked"), Refusals))]
pub async fn unblock(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(value): ApiPath<String>,
) -> Response {
    done(blocks::unblock(state.pipeline.store(), &actor, &value).await)
}

/// Quarantined messages: mail that could not be read or applied, and
/// blocked senders' mail, with the reason.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "senders",
    responses((status = 200, body = Vec<QuarantineEntry>), Refusals))]
pub async fn quarantine(State(state): State<Arc<HttpState>>, Agent(actor): Agent) -> Response {
    let result = async {
        require_admin(&actor, "see the quarantine")?;
        Ok::<_, ActionError>(state.pipeline.store().quarantine_list().await?)
    };
    answer(StatusCode::OK, result.await)
}

#[derive(Serialize, ToSchema)]
struct Released {
    /// `applied` (with the outcome), or `quarantined` again with the reason.
    #[schema(value_type = Object)]
    result: Disposition,
}

/// Lets a quarantined message through the pipeline again, past a sender
/// block: it is threaded or opens a ticket like any mail.
#[utoipa::path(post, path = "/api/v1/quarantine/{id}/release", tag = "senders",
    params(("id" = i64, Path, description = "Quarantine entry id")),
    responses((status = 200, body = Released), Refusals))]
pub async fn release(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    if let Err(e) = require_admin(&actor, "release quarantined mail") {
        return action_error(e);
    }
    let fallback = state.config.default_pipe_channel().ok().map(String::from);
    let result = match state.pipeline.retry_quarantined(id, true, fallback).await {
        Ok(Some(disposition)) => {
            tracing::info!(id, actor = %actor.label(), "Quarantined message released.");
            Ok(Released {
                result: disposition,
            })
        }
        Ok(None) => Err(ActionError::NotFound(format!("no quarantine entry {id}"))),
        Err(RetryError::NoChannel) => Err(crate::desk::invalid(
            "id",
            RetryError::NoChannel.to_string(),
        )),
        Err(RetryError::Store(e)) => Err(ActionError::Store(e)),
        Err(RetryError::Pipeline(e)) => {
            return crate::http::unavailable(format!("retry later: {e}"))
        }
    };
    answer(StatusCode::OK, result)
}
