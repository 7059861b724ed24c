//! The agent API under `/api/v1`: tickets, replies, comments and
//! notifications, drafts, contacts and companies, snippets, blocked
//! senders and the quarantine. Every call carries `Authorization: Bearer
//! <agent api_token>`; an agent sees the tickets of its own teams only
//! (another team's answers 404, like a missing one), and admin actions
//! answer 403 to other agents.
//!
//! The routes and the OpenAPI 3.1 document served at
//! `/api/v1/openapi.json` come from the same annotations (`utoipa`), so
//! the document cannot drift from what is served.

pub mod contacts;
pub mod notes;
pub mod replies;
pub mod senders;
pub mod tickets;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::{problem, unavailable, HttpState};
use crate::crypto::constant_time_eq;
use crate::desk::ActionError;
use crate::store::directory::Actor;
use crate::store::{classify_error, ErrorClass};

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// What went wrong and what to fix.
    pub error: String,
    /// The request field at fault (422).
    pub field: Option<String>,
}

/// The answers every call may give besides its own.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// A path or query parameter is malformed.
    #[response(status = 400)]
    BadRequest(#[to_schema] Problem),
    /// No or an unknown API token.
    #[response(status = 401)]
    Unauthorized(#[to_schema] Problem),
    /// The action takes an admin.
    #[response(status = 403)]
    Forbidden(#[to_schema] Problem),
    /// No such thing, or not one of the agent's teams'.
    #[response(status = 404)]
    NotFound(#[to_schema] Problem),
    /// The request was not received in time.
    #[response(status = 408)]
    Timeout(#[to_schema] Problem),
    /// The body is over http.max_body_bytes.
    #[response(status = 413)]
    TooLarge(#[to_schema] Problem),
    /// The body is invalid; `field` names what to fix.
    #[response(status = 422)]
    Invalid(#[to_schema] Problem),
    /// A bug; see the server log.
    #[response(status = 500)]
    Internal(#[to_schema] Problem),
    /// The database is unavailable: retry later.
    #[response(status = 503)]
    Unavailable(#[to_schema] Problem),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "mailroom help-desk API", description = "Tickets, replies, comments, drafts, contacts, snippets and blocked senders of the mailroom help desk."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tickets"), (name = "replies"), (name = "comments"), (name = "drafts"),
        (name = "contacts"), (name = "snippets"), (name = "senders")
    )
)]
struct ApiDoc;

/// The API's routes and the OpenAPI document describing exactly them.
pub fn routes() -> (axum::Router<Arc<HttpState>>, utoipa::openapi::OpenApi) {
    let router = OpenApiRouter::with_openapi(ApiDoc::openapi());
    let router = tickets::routes(router);
    let router = replies::routes(router);
    let router = notes::routes(router);
    let router = contacts::routes(router);
    let router = senders::routes(router);
    router.split_for_parts()
}

/// The authenticated agent: `Authorization: Bearer <api_token>`.
pub struct Agent(pub Actor);

impl FromRequestParts<Arc<HttpState>> for Agent {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<HttpState>,
    ) -> Result<Agent, Response> {
        let given = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                problem(
                    StatusCode::UNAUTHORIZED,
                    "missing Authorization: Bearer <api_token> header",
                )
            })?;
        // Compare with every token (constant time each) so timing does not
        // tell which agents exist.
        let mut found = None;
        for (token, agent) in &state.agent_tokens {
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                found = Some(agent);
            }
        }
        let agent = found.ok_or_else(|| problem(StatusCode::UNAUTHORIZED, "unknown API token"))?;
        let actor = Actor::agent(state.pipeline.directory(), agent).ok_or_else(|| {
            problem(
                StatusCode::UNAUTHORIZED,
                "this token's agent is not configured any more",
            )
        })?;
        Ok(Agent(actor))
    }
}

/// A path parameter; a malformed one answers 400 in JSON.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(problem(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}

/// Query parameters; malformed ones answer 400 in JSON.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(e) => Err(problem(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}

/// A JSON body; one that does not parse answers 422 saying why.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            let message = format!("invalid JSON body: {e}");
            problem_with_field(StatusCode::UNPROCESSABLE_ENTITY, message, "body")
        })
    }
}

fn problem_with_field(status: StatusCode, message: String, field: &str) -> Response {
    (status, Json(json!({ "error": message, "field": field }))).into_response()
}

/// The answer for a refused or failed action.
pub fn action_error(e: ActionError) -> Response {
    match e {
        ActionError::NotFound(m) => problem(StatusCode::NOT_FOUND, m),
        ActionError::Forbidden(m) => problem(StatusCode::FORBIDDEN, m),
        ActionError::Invalid { field, message } => problem_with_field(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {message}"),
            &field,
        ),
        ActionError::Store(e) => store_error(e),
    }
}

pub fn store_error(e: sqlx::Error) -> Response {
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

/// `status` with the value as JSON, or the error's answer.
pub fn answer<T: Serialize>(status: StatusCode, result: Result<T, ActionError>) -> Response {
    match result {
        Ok(value) => (status, Json(value)).into_response(),
        Err(e) => action_error(e),
    }
}

/// 204 on success.
pub fn done(result: Result<(), ActionError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => action_error(e),
    }
}
