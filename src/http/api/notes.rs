//! What agents write for each other and themselves: internal comments,
//! notifications, drafts and snippets.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{answer, done, Agent, ApiPath, ApiQuery, Body, Refusals};
use crate::desk::comments::{self, Commented};
use crate::desk::drafts::{self, DraftContent};
use crate::desk::snippets;
use crate::http::HttpState;
use crate::store::comments::{CommentView, NotificationView};
use crate::store::drafts::DraftView;
use crate::store::snippets::SnippetView;

pub fn routes(router: OpenApiRouter<Arc<HttpState>>) -> OpenApiRouter<Arc<HttpState>> {
    router
        .routes(routes!(list_comments, add_comment))
        .routes(routes!(notifications))
        .routes(routes!(mark_read))
        .routes(routes!(get_draft, put_draft, delete_draft))
        .routes(routes!(my_drafts))
        .routes(routes!(list_snippets, create_snippet))
        .routes(routes!(get_snippet, update_snippet, delete_snippet))
}

/// A ticket's internal comments, oldest first.
#[utoipa::path(get, path = "/api/v1/tickets/{number}/comments", tag = "comments",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = Vec<CommentView>), Refusals))]
pub async fn list_comments(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    answer(
        StatusCode::OK,
        comments::list(state.pipeline.store(), &actor, number).await,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// `@key`, `@email` or `@FirstName` of a team member notifies them.
    pub body: String,
}

/// Adds an internal comment (never sent to a contact); each team member
/// it mentions gets one notification.
#[utoipa::path(post, path = "/api/v1/tickets/{number}/comments", tag = "comments",
    params(("number" = i64, Path, description = "Ticket number")), request_body = CommentBody,
    responses((status = 201, body = Commented), Refusals))]
pub async fn add_comment(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(body): Body<CommentBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let result = comments::add(state.pipeline.store(), dir, &actor, number, &body.body).await;
    answer(StatusCode::CREATED, result)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationParams {
    /// All of them, read ones too (default: unread only).
    pub all: Option<bool>,
}

/// The agent's notifications, newest first, each with a link to its ticket.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "comments", params(NotificationParams),
    responses((status = 200, body = Vec<NotificationView>), Refusals))]
pub async fn notifications(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiQuery(p): ApiQuery<NotificationParams>,
) -> Response {
    let unread = !p.all.unwrap_or(false);
    let result = comments::notifications(state.pipeline.store(), &actor, unread).await;
    answer(StatusCode::OK, result)
}

/// Marks one of the agent's notifications read.
#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", tag = "comments",
    params(("id" = i64, Path, description = "Notification id")),
    responses((status = 204, description = "Marked read"), Refusals))]
pub async fn mark_read(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    done(comments::mark_read(state.pipeline.store(), &actor, id).await)
}

/// The agent's own draft on the ticket.
#[utoipa::path(get, path = "/api/v1/tickets/{number}/draft", tag = "drafts",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 200, body = DraftView), Refusals))]
pub async fn get_draft(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    answer(
        StatusCode::OK,
        drafts::get(state.pipeline.store(), &actor, number).await,
    )
}

/// Saves the agent's draft on the ticket, replacing it whole (autosave):
/// 201 when new, 204 when replaced. Only its author sees it; their reply
/// on the ticket removes it.
#[utoipa::path(put, path = "/api/v1/tickets/{number}/draft", tag = "drafts",
    params(("number" = i64, Path, description = "Ticket number")), request_body = DraftContent,
    responses((status = 201, description = "Created"), (status = 204, description = "Replaced"), Refusals))]
pub async fn put_draft(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
    Body(content): Body<DraftContent>,
) -> Response {
    use axum::response::IntoResponse as _;
    match drafts::put(state.pipeline.store(), &actor, number, &content).await {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => super::action_error(e),
    }
}

/// Throws the agent's draft on the ticket away.
#[utoipa::path(delete, path = "/api/v1/tickets/{number}/draft", tag = "drafts",
    params(("number" = i64, Path, description = "Ticket number")),
    responses((status = 204, description = "Deleted"), Refusals))]
pub async fn delete_draft(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(number): ApiPath<i64>,
) -> Response {
    done(drafts::delete(state.pipeline.store(), &actor, number).await)
}

/// The agent's drafts, latest first.
#[utoipa::path(get, path = "/api/v1/drafts", tag = "drafts",
    responses((status = 200, body = Vec<DraftView>), Refusals))]
pub async fn my_drafts(State(state): State<Arc<HttpState>>, Agent(actor): Agent) -> Response {
    answer(
        StatusCode::OK,
        drafts::mine(state.pipeline.store(), &actor).await,
    )
}

/// The snippets the agent can use: their teams' and the shared ones.
#[utoipa::path(get, path = "/api/v1/snippets", tag = "snippets",
    responses((status = 200, body = Vec<SnippetView>), Refusals))]
pub async fn list_snippets(State(state): State<Arc<HttpState>>, Agent(actor): Agent) -> Response {
    let dir = state.pipeline.directory();
    answer(
        StatusCode::OK,
        snippets::list(state.pipeline.store(), dir, &actor).await,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnippetBody {
    /// A team key; none for a snippet every team shares (admins).
    pub team: Option<String>,
    pub name: String,
    /// Text with placeholders such as `{{contact.first_name}}`,
    /// `{{ticket.number}}`, `{{agent.name}}`.
    pub body: String,
}

/// Saves a snippet; an unknown placeholder answers 422 naming it.
#[utoipa::path(post, path = "/api/v1/snippets", tag = "snippets", request_body = SnippetBody,
    responses((status = 201, body = SnippetView), Refusals))]
pub async fn create_snippet(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    Body(b): Body<SnippetBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let store = state.pipeline.store();
    let result = snippets::save(
        store,
        dir,
        &actor,
        None,
        b.team.as_deref(),
        &b.name,
        &b.body,
    );
    answer(StatusCode::CREATED, result.await)
}

#[utoipa::path(get, path = "/api/v1/snippets/{id}", tag = "snippets",
    params(("id" = i64, Path, description = "Snippet id")),
    responses((status = 200, body = SnippetView), Refusals))]
pub async fn get_snippet(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let dir = state.pipeline.directory();
    answer(
        StatusCode::OK,
        snippets::get(state.pipeline.store(), dir, &actor, id).await,
    )
}

/// Replaces a snippet.
#[utoipa::path(put, path = "/api/v1/snippets/{id}", tag = "snippets",
    params(("id" = i64, Path, description = "Snippet id")), request_body = SnippetBody,
    responses((status = 200, body = SnippetView), Refusals))]
pub async fn update_snippet(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
    Body(b): Body<SnippetBody>,
) -> Response {
    let dir = state.pipeline.directory();
    let store = state.pipeline.store();
    let result = snippets::save(
        store,
        dir,
        &actor,
        Some(id),
        b.team.as_deref(),
        &b.name,
        &b.body,
    );
    answer(StatusCode::OK, result.await)
}

#[utoipa::path(delete, path = "/api/v1/snippets/{id}", tag = "snippets",
    params(("id" = i64, Path, description = "Snippet id")),
    responses((status = 204, description = "Deleted"), Refusals))]
pub async fn delete_snippet(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let dir = state.pipeline.directory();
    done(snippets::delete(state.pipeline.store(), dir, &actor, id).await)
}
