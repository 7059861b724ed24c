//! Tickets: list, create by hand, show, edit, status, owner, follow, move,
//! merge, delete, restore, purge, and the timeline.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{answer, done, Agent, ApiPath, ApiQuery, Body, Refusals};
use crate::desk::tickets::{self, ListFilters, NewTicketRequest, TicketDetail, TicketPage};
use crate::http::HttpState;
use crate::outbound::merge::Merged;
use crate::store::ticket_changes::EventView;

pub fn routes(router: OpenApiRouter<Arc<HttpState>>) -> OpenApiRouter<Arc<HttpState>> {
    router
        .routes(routes!(list, create))
        .routes(routes!(show, edit, delete))
        .routes(routes!(restore))
        .routes(routes!(set_status))
        .routes(routes!(set_owner))
        .routes(routes!(follow, unfollow))
        .routes(routes!(move_ticket))
        .routes(routes!(merge))
        .routes(routes!(events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TicketListParams {
    /// A status name, or a kind: `open`, `waiting`, `closed`.
    pub status: Option<String>,
    /// A team key.
    pub team: Option<String>,
    /// An agent key, `me`, or `none` for unassigned tickets.
    pub owner: Option<String>,
    /// A contact id.
    pub contact: Option<i64>,
    /// A company id.
    pub company: Option<i64>,
    /// Text in the subject.
    pub q: Option<String>,
    /// Changed at or after (unix milliseconds).
    pub updated_since: Option<i64>,
    /// Deleted tickets instead (admins).
    pub deleted: Option<bool>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 200; 50 when unset.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Tickets of the agent's teams, most recently changed first.
#[utoipa::path(get, path = "/api/v1/tickets", tag = "tickets", params(TicketListParams),
    responses((status = 200, body = TicketPage), Refusals))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiQuery(p): ApiQuery<TicketListParams>,
) -> Response {
    let filters = ListFilters {
        status: p.status,
        team: p.team,
        owner: p.owner,
        contact: p.contact,
        company: p.company,
        q: p.q,
        updated_since: p.updated_since,
        deleted: p.deleted.unwrap_or(false),
        cursor: p.cursor,
        limit: p.limit,
    };
    let dir = state.pipeline.directory();
    let result = tickets::list(state.pipeline.store(), dir, &actor, filters).await;
    answer(StatusCode::OK, result)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicketBody {
    /// The ticket's name (its subject).
    #[serde(alias = "name")]
    pub subject: String,
    /// A team key; the agent's team when they have one only.
    pub team: Option<String>,
    /// A pipeline key.
    pub pipeline: String,
    /// A status of that pipeline.
    pub status: String,
    /// `addr` or `Name <addr>`, the first being the requester. Without any,
    /// the ticket has no conversation until a participant is added.
    #[serde(default)]
    pub contacts: Vec<String>,
    pub company: Option<i64>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: BTreeMap<String, Value>,
    /// An agent key or `me`.
    pub owner: Option<String>,
}

/// Opens a ticket by hand.
#[utoipa::path(post, path = "/api/v1/tickets", tag = "tickets", request_body = NewTicketBody,
    responses((status = 201, body = TicketDetail), Refusals))]
pub async fn create(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    Body(body): Body<NewTicketBody>,
) -> Response {
    let request = NewTicketRequest {
        subject: body.subject,
        team: body.team,
        pipeline: body.pipeline,
        status: body.status,
        contacts: body.contacts,
        company: body.company,
        properties: body.properties,
        owner: body.owner,
    };
    let dir = state.pipeline.directory();
    let result = tickets::create(state.pipeline.store(), dir, &actor, request).await;
    answer(StatusCode::CREATED, result)
}

/// A ticket with its messages, comments, followers and timeline; a merged
/// ticket says where it lives on (`merged_into`).
#[utoipa::path(get, path = "/api/v1/tickets/{number}", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn show(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    let result = tickets::show(state.pipeline.store(), &actor, number).await;
    answer(StatusCode::OK, result)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketEditBody {
    #[serde(alias = "name")]
    pub subject: Option<String>,
    /// Properties to set; a null removes one.
    #[schema(value_type = Option<Object>)]
    pub properties: Option<BTreeMap<String, Value>>,
}

/// Renames the ticket and sets its properties.
#[utoipa::path(patch, path = "/api/v1/tickets/{number}", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")), request_body = TicketEditBody,
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn edit(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<TicketEditBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let store = state.pipeline.store();
    let result = tickets::edit(store, dir, &actor, number, body.subject, body.properties).await;
    answer(StatusCode::OK, result)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Remove it for good (admins); otherwise it can be restored.
    pub purge: Option<bool>,
}

/// Deletes a ticket: hidden from lists until an admin restores it, or
/// removed for good with `purge=true` (admins).
#[utoipa::path(delete, path = "/api/v1/tickets/{number}", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number"), DeleteParams),
    responses((status = 204, description = "Deleted"), Refusals))]
pub async fn delete(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    ApiQuery(p): ApiQuery<DeleteParams>,
) -> Response {
    let store = state.pipeline.store();
    match p.purge.unwrap_or(false) {
        true => done(tickets::purge(store, &actor, number).await),
        false => done(tickets::delete(store, &actor, number).await),
    }
}

/// Brings a deleted ticket back (admins).
#[utoipa::path(post, path = "/api/v1/tickets/{number}/restore", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn restore(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    answer(
        StatusCode::OK,
        tickets::restore(state.pipeline.store(), &actor, number).await,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    pub status: String,
    /// Set with it (the status may require some).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: BTreeMap<String, Value>,
}

/// Moves the ticket to a status of its pipeline; 422 names the required
/// properties that are missing.
#[utoipa::path(put, path = "/api/v1/tickets/{number}/status", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")), request_body = StatusBody,
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn set_status(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<StatusBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let store = state.pipeline.store();
    let result = tickets::set_status(store, dir, &actor, number, body.status, body.properties);
    answer(StatusCode::OK, result.await)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerBody {
    /// An agent key or `me`; null unassigns.
    pub owner: Option<String>,
}

/// Assigns the ticket to an agent of its team, or unassigns it.
#[utoipa::path(put, path = "/api/v1/tickets/{number}/owner", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")), request_body = OwnerBody,
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn set_owner(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<OwnerBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let result = tickets::assign(state.pipeline.store(), dir, &actor, number, body.owner);
    answer(StatusCode::OK, result.await)
}

/// The agent follows the ticket.
#[utoipa::path(put, path = "/api/v1/tickets/{number}/follow", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn follow(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    let result = tickets::follow(state.pipeline.store(), &actor, number, true);
    answer(StatusCode::OK, result.await)
}

/// The agent stops following the ticket.
#[utoipa::path(delete, path = "/api/v1/tickets/{number}/follow", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn unfollow(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    let result = tickets::follow(state.pipeline.store(), &actor, number, false);
    answer(StatusCode::OK, result.await)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The team key to move to (one the agent works in).
    pub team: String,
    /// A pipeline key; the ticket's own when unset.
    pub pipeline: Option<String>,
    /// A status of the target pipeline; by default the first of the same
    /// kind as the ticket's.
    pub status: Option<String>,
}

/// Moves the ticket to another team and/or pipeline.
#[utoipa::path(post, path = "/api/v1/tickets/{number}/move", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")), request_body = MoveBody,
    responses((status = 200, body = TicketDetail), Refusals))]
pub async fn move_ticket(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<MoveBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let store = state.pipeline.store();
    let result = tickets::move_to(
        store,
        dir,
        &actor,
        number,
        body.team,
        body.pipeline,
        body.status,
    );
    answer(StatusCode::OK, result.await)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketMergeBody {
    /// The ticket (number) this one lives on in.
    pub into: i64,
}

/// Merges this ticket into another of the same team: its messages,
/// contacts and Message-IDs count for the other from now on, and mail
/// that threads here lands there.
#[utoipa::path(post, path = "/api/v1/tickets/{number}/merge", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")), request_body = TicketMergeBody,
    responses((status = 200, body = Merged), Refusals))]
pub async fn merge(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<TicketMergeBody>,
) -> Response {
    let store = state.pipeline.store();
    let result = crate::outbound::merge::merge_tickets(store, &actor, number, body.into).await;
    answer(StatusCode::OK, result)
}

/// The ticket's timeline: every change, with who made it and when.
#[utoipa::path(get, path = "/api/v1/tickets/{number}/events", tag = "tickets",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = Vec<EventView>), Refusals))]
pub async fn events(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    answer(
        StatusCode::OK,
        tickets::events(state.pipeline.store(), &actor, number).await,
    )
}
