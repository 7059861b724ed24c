//! Contacts, visitors and companies.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{answer, Agent, ApiPath, ApiQuery, Body, Refusals};
use crate::desk::contacts::{self, ContactDetail, ContactPage};
use crate::http::HttpState;
use crate::store::contacts::CompanyView;

pub fn routes(router: OpenApiRouter<Arc<HttpState>>) -> OpenApiRouter<Arc<HttpState>> {
    router
        .routes(routes!(list, create))
        .routes(routes!(show, edit))
        .routes(routes!(merge))
        .routes(routes!(companies, create_company))
        .routes(routes!(company, update_company))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactListParams {
    /// Text in the address or name.
    pub q: Option<String>,
    /// `visitor` or `contact`.
    pub kind: Option<String>,
    /// A company id.
    pub company: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 200; 50 when unset.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Contacts and visitors, newest first.
#[utoipa::path(get, path = "/api/v1/contacts", tag = "contacts", params(ContactListParams),
    responses((status = 200, body = ContactPage), Refusals))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Agent(_agent): Agent,
    ApiQuery(p): ApiQuery<ContactListParams>,
) -> Response {
    let store = state.pipeline.store();
    let result = contacts::list(store, p.q, p.kind, p.company, p.cursor, p.limit).await;
    answer(StatusCode::OK, result)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContactBody {
    pub email: String,
    pub name: Option<String>,
    pub company_id: Option<i64>,
}

/// Makes a contact: 201 when new, 200 when a visitor with that address
/// became one.
#[utoipa::path(post, path = "/api/v1/contacts", tag = "contacts", request_body = NewContactBody,
    responses((status = 201, body = ContactDetail), (status = 200, body = ContactDetail), Refusals))]
pub async fn create(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    Body(b): Body<NewContactBody>,
) -> Response {
    let store = state.pipeline.store();
    match contacts::create(store, &actor, &b.email, b.name, b.company_id).await {
        Ok((detail, true)) => answer(StatusCode::CREATED, Ok(detail)),
        Ok((detail, false)) => answer(StatusCode::OK, Ok(detail)),
        Err(e) => super::action_error(e),
    }
}

/// A contact with their tickets (of the agent's teams).
#[utoipa::path(get, path = "/api/v1/contacts/{id}", tag = "contacts",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, body = ContactDetail), Refusals))]
pub async fn show(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    answer(
        StatusCode::OK,
        contacts::show(state.pipeline.store(), &actor, id).await,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactEditBody {
    pub name: Option<String>,
    /// `contact` makes a visitor a contact.
    pub kind: Option<String>,
    pub company_id: Option<i64>,
}

/// Names a contact, makes a visitor a contact, or sets their company.
#[utoipa::path(patch, path = "/api/v1/contacts/{id}", tag = "contacts",
    params(("id" = i64, Path, description = "Contact id")), request_body = ContactEditBody,
    responses((status = 200, body = ContactDetail), Refusals))]
pub async fn edit(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
    Body(b): Body<ContactEditBody>,
) -> Response {
    let store = state.pipeline.store();
    let result = contacts::edit(store, &actor, id, b.name, b.kind, b.company_id).await;
    answer(StatusCode::OK, result)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactMergeBody {
    /// The contact this one is attached to.
    pub into: i64,
}

/// Attaches this contact (a visitor, say) to another: their tickets and
/// messages follow, and their address resolves to the other from now on.
#[utoipa::path(post, path = "/api/v1/contacts/{id}/merge", tag = "contacts",
    params(("id" = i64, Path, description = "Contact id")), request_body = ContactMergeBody,
    responses((status = 200, body = ContactDetail), Refusals))]
pub async fn merge(
    State(state): State<Arc<HttpState>>,
    Agent(actor): Agent,
    ApiPath(id): ApiPath<i64>,
    Body(b): Body<ContactMergeBody>,
) -> Response {
    let result = contacts::merge(state.pipeline.store(), &actor, id, b.into).await;
    answer(StatusCode::OK, result)
}

#[utoipa::path(get, path = "/api/v1/companies", tag = "contacts",
    responses((status = 200, body = Vec<CompanyView>), Refusals))]
pub async fn companies(State(state): State<Arc<HttpState>>, Agent(_agent): Agent) -> Response {
    let result = state.pipeline.store().companies().await;
    answer(StatusCode::OK, result.map_err(Into::into))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyBody {
    pub name: String,
    /// Mail domains; a new contact with an address in one belongs to the
    /// company (and so do existing contacts without a company).
    #[serde(default)]
    pub domains: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/companies", tag = "contacts", request_body = CompanyBody,
    responses((status = 201, body = CompanyView), Refusals))]
pub async fn create_company(
    State(state): State<Arc<HttpState>>,
    Agent(_agent): Agent,
    Body(b): Body<CompanyBody>,
) -> Response {
    let result = contacts::save_company(state.pipeline.store(), None, &b.name, &b.domains).await;
    answer(StatusCode::CREATED, result)
}

#[utoipa::path(get, path = "/api/v1/companies/{id}", tag = "contacts",
    params(("id" = i64, Path, description = "Company id")),
    responses((status = 200, body = CompanyView), Refusals))]
pub async fn company(
    State(state): State<Arc<HttpState>>,
    Agent(_agent): Agent,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    answer(
        StatusCode::OK,
        contacts::company(state.pipeline.store(), id).await,
    )
}

/// Renames a company and replaces its domains.
#[utoipa::path(put, path = "/api/v1/companies/{id}", tag = "contacts",
    params(("id" = i64, Path, description = "Company id")), request_body = CompanyBody,
    responses((status = 200, body = CompanyView), Refusals))]
pub async fn update_company(
    State(state): State<Arc<HttpState>>,
    Agent(_agent): Agent,
    ApiPath(id): ApiPath<i64>,
    Body(b): Body<CompanyBody>,
) -> Response {
    let store = state.pipeline.store();
    let result = contacts::save_company(store, Some(id), &b.name, &b.domains).await;
    answer(StatusCode::OK, result)
}
