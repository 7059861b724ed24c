//! Tickets by hand: list with filters and a cursor, one with its comments,
//! followers and timeline, create, edit, status, assign, follow, move,
//! delete, restore and purge. Every change is one transaction with its
//! event, `actor` naming who did it.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Value};

use super::{invalid, require_admin, visible_ticket, ActionError};
use crate::config::StatusKind;
use crate::outbound::plan::{check_required, parse_recipient};
use crate::outbound::reply::accessible_ticket;
use crate::store::comments::CommentView;
use crate::store::directory::{Actor, Directory};
use crate::store::replies::ReplyTicket;
use crate::store::ticket_changes::{EventView, NewTicket};
use crate::store::tickets::{TicketQuery, TicketSummary, TicketView};
use crate::store::{events, now_ms, Store};

/// The filters of a ticket list, as given (keys and names, not ids).
#[derive(Debug, Clone, Default)]
pub struct ListFilters {
    /// A status name or kind (`open`, `waiting`, `closed`).
    pub status: Option<String>,
    /// A team key.
    pub team: Option<String>,
    /// An agent key, `me`, or `none` for unassigned tickets.
    pub owner: Option<String>,
    pub contact: Option<i64>,
    pub company: Option<i64>,
    /// Text in the subject.
    pub q: Option<String>,
    /// Unix milliseconds.
    pub updated_since: Option<i64>,
    /// Deleted tickets (admins only).
    pub deleted: bool,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// One page of tickets; `next_cursor` fetches the next.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TicketPage {
    pub tickets: Vec<TicketSummary>,
    pub next_cursor: Option<String>,
}

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

/// A ticket with everything an agent sees on it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TicketDetail {
    #[serde(flatten)]
    pub view: TicketView,
    #[schema(value_type = Object)]
    pub properties: BTreeMap<String, Value>,
    /// Agent keys.
    pub followers: Vec<String>,
    pub comments: Vec<CommentView>,
    pub events: Vec<EventView>,
}

fn encode_cursor(t: &TicketSummary) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", t.updated_at, t.id))
}

fn decode_cursor(cursor: &str) -> Result<(i64, i64), ActionError> {
    let bad = || invalid("cursor", "not a cursor this API gave out");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (updated, id) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        updated.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// The agent named by a key (`me`: the actor).
fn agent_id(dir: &Directory, actor: &Actor, key: &str, field: &str) -> Result<i64, ActionError> {
    if key == "me" {
        return actor
            .agent_id()
            .ok_or_else(|| invalid(field, "\"me\" needs an agent's token"));
    }
    dir.agents
        .get(key)
        .map(|a| a.id)
        .ok_or_else(|| invalid(field, format!("no agent {key:?}")))
}

pub async fn list(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    filters: ListFilters,
) -> Result<TicketPage, ActionError> {
    if filters.deleted {
        require_admin(actor, "list deleted tickets")?;
    }
    let limit = filters.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    // Another team's key lists nothing rather than telling it exists.
    let team = filters
        .team
        .as_ref()
        .map(|key| dir.teams.get(key).map_or(-1, |t| t.id));
    let owner = match filters.owner.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(key) => Some(Some(agent_id(dir, actor, key, "owner")?)),
    };
    let query = TicketQuery {
        teams: actor.teams(),
        status: filters.status,
        team,
        owner,
        contact: filters.contact,
        company: filters.company,
        text: filters.q.filter(|q| !q.trim().is_empty()),
        updated_since: filters.updated_since,
        deleted: filters.deleted,
        after: filters.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: Some(limit + 1),
        ..TicketQuery::default()
    };
    let mut tickets = store.tickets(&query).await?;
    let more = tickets.len() as i64 > limit;
    tickets.truncate(limit as usize);
    let next_cursor = match more {
        true => tickets.last().map(encode_cursor),
        false => None,
    };
    Ok(TicketPage {
        tickets,
        next_cursor,
    })
}

/// A ticket with its messages, properties, followers, comments and
/// timeline. A merged ticket shows where it lives on (`merged_into`).
pub async fn show(store: &Store, actor: &Actor, number: i64) -> Result<TicketDetail, ActionError> {
    let ticket = visible_ticket(store, actor, number).await?;
    let view = store
        .ticket_show(number)
        .await?
        .ok_or_else(|| ActionError::NotFound(format!("ticket #{number} does not exist")))?;
    Ok(TicketDetail {
        view,
        properties: store.ticket_properties(ticket.id).await?,
        followers: store.followers(ticket.id).await?,
        comments: store.comments(ticket.id).await?,
        events: store.ticket_events(ticket.id).await?,
    })
}

pub async fn events(
    store: &Store,
    actor: &Actor,
    number: i64,
) -> Result<Vec<EventView>, ActionError> {
    let ticket = visible_ticket(store, actor, number).await?;
    Ok(store.ticket_events(ticket.id).await?)
}

/// A ticket an agent opens by hand.
#[derive(Debug, Clone, Default)]
pub struct NewTicketRequest {
    pub subject: String,
    /// A team key; the agent's only team when unset.
    pub team: Option<String>,
    pub pipeline: String,
    pub status: String,
    /// `addr` or `Name <addr>`; the first is the requester.
    pub contacts: Vec<String>,
    pub company: Option<i64>,
    pub properties: BTreeMap<String, Value>,
    /// An agent key or `me`.
    pub owner: Option<String>,
}

/// The team a new ticket goes to.
fn team_for_new(dir: &Directory, actor: &Actor, team: Option<&str>) -> Result<i64, ActionError> {
    let id = match team {
        Some(key) => dir.teams.get(key).map(|t| t.id),
        None => match actor {
            Actor::Agent(a) if a.team_ids.len() == 1 => Some(a.team_ids[0]),
            _ => return Err(invalid("team", "name the team the ticket belongs to")),
        },
    };
    match id {
        Some(id) if actor.can_access_team(id) => Ok(id),
        _ => Err(invalid(
            "team",
            format!("no team {:?} that you work in", team.unwrap_or_default()),
        )),
    }
}

/// Checks that `owner` may own a ticket of `team`.
fn owner_in_team(dir: &Directory, owner: i64, team: i64) -> Result<(), ActionError> {
    match dir.agent_by_id(owner) {
        Some(a) if a.team_ids.contains(&team) => Ok(()),
        Some(a) => Err(invalid(
            "owner",
            format!("agent {} is not in the ticket's team", a.key),
        )),
        None => Err(invalid("owner", "no such agent")),
    }
}

fn check_subject(subject: &str) -> Result<String, ActionError> {
    let subject = subject.trim();
    if subject.is_empty() {
        return Err(invalid("subject", "must not be empty"));
    }
    if subject.chars().count() > 998 || subject.contains(['\r', '\n', '\0']) {
        return Err(invalid(
            "subject",
            "must be one line of at most 998 characters",
        ));
    }
    Ok(subject.to_string())
}

pub async fn create(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    request: NewTicketRequest,
) -> Result<TicketDetail, ActionError> {
    let subject = check_subject(&request.subject)?;
    let team = team_for_new(dir, actor, request.team.as_deref())?;
    let pipeline = dir
        .pipelines
        .get(&request.pipeline)
        .ok_or_else(|| invalid("pipeline", format!("no pipeline {:?}", request.pipeline)))?;
    let status = dir
        .status_named(pipeline.id, &request.status)
        .ok_or_else(|| {
            invalid(
                "status",
                format!(
                    "{:?} is not a status of pipeline {}",
                    request.status, pipeline.key
                ),
            )
        })?;
    check_required(dir, status.id, &request.properties)?;
    let owner = match &request.owner {
        Some(key) => {
            let id = agent_id(dir, actor, key, "owner")?;
            owner_in_team(dir, id, team)?;
            Some(id)
        }
        None => None,
    };
    let people = request
        .contacts
        .iter()
        .map(|c| parse_recipient("contacts", c))
        .collect::<Result<Vec<_>, _>>()?;
    let now = now_ms();
    let mut w = store.begin_write().await?;
    if let Some(company) = request.company {
        if !store.company_exists(&mut w.tx, company).await? {
            return Err(invalid("company", format!("no company {company}")));
        }
    }
    let mut contacts = Vec::with_capacity(people.len());
    for person in &people {
        contacts.push(store.contact_for(&mut w.tx, person, now).await?);
    }
    let company = match request.company {
        Some(c) => Some(c),
        None => match contacts.first() {
            Some(c) => store.contact_company(&mut w.tx, *c).await?,
            None => None,
        },
    };
    let (id, number) = store
        .create_ticket(
            &mut w.tx,
            &NewTicket {
                subject: &subject,
                team_id: team,
                pipeline_id: pipeline.id,
                status_id: status.id,
                owner,
                company_id: company,
                properties: &request.properties,
                contacts: &contacts,
                now,
            },
        )
        .await?;
    let data = json!({ "by_hand": true, "contacts": people.iter().map(|p| &p.address).collect::<Vec<_>>() });
    events::insert(&mut w.tx, id, "created", &data, &actor.label(), now).await?;
    w.commit().await?;
    tracing::info!(ticket = number, actor = %actor.label(), "Ticket created by hand.");
    show(store, actor, number).await
}

/// Runs `change` on the live ticket `number` (merges followed, the row
/// locked) in one transaction with the events it returns, then shows it.
async fn change<F>(
    store: &Store,
    actor: &Actor,
    number: i64,
    change: F,
) -> Result<TicketDetail, ActionError>
where
    F: for<'t> FnOnce(
        &'t Store,
        &'t mut crate::store::Tx,
        ReplyTicket,
        i64,
    ) -> futures::future::BoxFuture<
        't,
        Result<Vec<(&'static str, Value)>, ActionError>,
    >,
{
    let live = change_only(store, actor, number, change).await?;
    show(store, actor, live).await
}

/// [`change`] without the read-out; returns the live ticket's number.
async fn change_only<F>(
    store: &Store,
    actor: &Actor,
    number: i64,
    change: F,
) -> Result<i64, ActionError>
where
    F: for<'t> FnOnce(
        &'t Store,
        &'t mut crate::store::Tx,
        ReplyTicket,
        i64,
    ) -> futures::future::BoxFuture<
        't,
        Result<Vec<(&'static str, Value)>, ActionError>,
    >,
{
    let now = now_ms();
    let mut w = store.begin_write().await?;
    let ticket = accessible_ticket(store, &mut w.tx, actor, number).await?;
    let live = ticket.number;
    let id = ticket.id;
    let changes = change(store, &mut w.tx, ticket, now).await?;
    let label = actor.label();
    for (kind, data) in &changes {
        events::insert(&mut w.tx, id, kind, data, &label, now).await?;
    }
    w.commit().await?;
    Ok(live)
}

/// Sets the subject and properties (a null property removes it). The
/// ticket's status must still have its required properties.
pub async fn edit(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    number: i64,
    subject: Option<String>,
    properties: Option<BTreeMap<String, Value>>,
) -> Result<TicketDetail, ActionError> {
    let subject = subject.as_deref().map(check_subject).transpose()?;
    let dir = dir.clone();
    change(store, actor, number, move |store, tx, ticket, now| {
        Box::pin(async move {
            let mut merged = ticket.properties.clone();
            let mut events = Vec::new();
            if let Some(given) = &properties {
                for (key, value) in given {
                    match value {
                        Value::Null => merged.remove(key),
                        v => merged.insert(key.clone(), v.clone()),
                    };
                }
                check_required(&dir, ticket.status_id, &merged)?;
                events.push(("properties_changed", json!({ "set": given })));
            }
            if let Some(subject) = &subject {
                events.push((
                    "subject_changed",
                    json!({ "from": ticket.subject, "to": subject }),
                ));
            }
            let props = properties.as_ref().map(|_| &merged);
            store
                .edit_ticket(tx, ticket.id, subject.as_deref(), props, now)
                .await?;
            Ok(events)
        })
    })
    .await
}

/// Moves a ticket to a status of its pipeline, setting `properties` with it.
pub async fn set_status(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    number: i64,
    status: String,
    properties: BTreeMap<String, Value>,
) -> Result<TicketDetail, ActionError> {
    let dir = dir.clone();
    change(store, actor, number, move |store, tx, ticket, now| {
        Box::pin(async move {
            let target = dir
                .status_named(ticket.pipeline_id, &status)
                .ok_or_else(|| {
                    invalid(
                        "status",
                        format!(
                            "{status:?} is not a status of ticket #{}'s pipeline",
                            ticket.number
                        ),
                    )
                })?;
            let mut merged = ticket.properties.clone();
            merged.extend(properties);
            check_required(&dir, target.id, &merged)?;
            store
                .change_status(tx, ticket.id, target.id, &merged, now)
                .await?;
            Ok(match target.id == ticket.status_id {
                true => Vec::new(),
                false => vec![(
                    "status_changed",
                    json!({ "from": ticket.status_id, "to": target.id, "reason": "agent" }),
                )],
            })
        })
    })
    .await
}

/// Assigns the ticket (`owner`: an agent key or `me`) or unassigns it (None).
pub async fn assign(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    number: i64,
    owner: Option<String>,
) -> Result<TicketDetail, ActionError> {
    let owner = owner
        .map(|key| agent_id(dir, actor, &key, "owner"))
        .transpose()?;
    let dir = dir.clone();
    change(store, actor, number, move |store, tx, ticket, now| {
        Box::pin(async move {
            if let Some(owner) = owner {
                owner_in_team(&dir, owner, ticket.team_id)?;
            }
            if owner == ticket.owner {
                return Ok(Vec::new());
            }
            store.set_owner(tx, ticket.id, owner, now).await?;
            Ok(vec![match owner {
                Some(to) => ("assigned", json!({ "to": to, "from": ticket.owner })),
                None => ("unassigned", json!({ "from": ticket.owner })),
            }])
        })
    })
    .await
}

/// The actor follows (or stops following) the ticket.
pub async fn follow(
    store: &Store,
    actor: &Actor,
    number: i64,
    follow: bool,
) -> Result<TicketDetail, ActionError> {
    let agent = actor
        .agent_id()
        .ok_or_else(|| invalid("agent", "only an agent can follow a ticket"))?;
    change(store, actor, number, move |store, tx, ticket, now| {
        Box::pin(async move {
            let changed = store
                .set_follower(tx, ticket.id, agent, follow, now)
                .await?;
            let kind = if follow { "followed" } else { "unfollowed" };
            Ok(match changed {
                true => vec![(kind, json!({ "agent": agent }))],
                false => Vec::new(),
            })
        })
    })
    .await
}

/// Moves the ticket to another team (and pipeline: its own when unset),
/// at the given status or the first of the same kind in the new pipeline.
/// An owner who is not in the new team is unassigned.
pub async fn move_to(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    number: i64,
    team: String,
    pipeline: Option<String>,
    status: Option<String>,
) -> Result<TicketDetail, ActionError> {
    let team_id = dir
        .teams
        .get(&team)
        .map(|t| t.id)
        .filter(|t| actor.can_access_team(*t))
        .ok_or_else(|| invalid("team", format!("no team {team:?} that you work in")))?;
    let pipeline_id = match &pipeline {
        Some(key) => Some(
            dir.pipelines
                .get(key)
                .map(|p| p.id)
                .ok_or_else(|| invalid("pipeline", format!("no pipeline {key:?}")))?,
        ),
        None => None,
    };
    let dir = dir.clone();
    change(store, actor, number, move |store, tx, ticket, now| {
        Box::pin(async move {
            let pipeline_id = pipeline_id.unwrap_or(ticket.pipeline_id);
            let status_id = target_status(&dir, &ticket, pipeline_id, status.as_deref())?;
            check_required(&dir, status_id, &ticket.properties)?;
            store
                .move_ticket(tx, ticket.id, team_id, pipeline_id, status_id, now)
                .await?;
            let mut events = vec![(
                "moved",
                json!({ "from_team": ticket.team_id, "to_team": team_id,
                        "from_pipeline": ticket.pipeline_id, "to_pipeline": pipeline_id,
                        "from_status": ticket.status_id, "to_status": status_id }),
            )];
            let owner_stays = ticket
                .owner
                .and_then(|o| dir.agent_by_id(o))
                .is_some_and(|a| a.team_ids.contains(&team_id));
            if ticket.owner.is_some() && !owner_stays {
                store.set_owner(tx, ticket.id, None, now).await?;
                events.push((
                    "unassigned",
                    json!({ "from": ticket.owner, "reason": "moved" }),
                ));
            }
            Ok(events)
        })
    })
    .await
}

/// The status a moved ticket takes: the named one, else the first status of
/// the same kind in the new pipeline, else the pipeline's default.
fn target_status(
    dir: &Directory,
    ticket: &ReplyTicket,
    pipeline_id: i64,
    status: Option<&str>,
) -> Result<i64, ActionError> {
    if let Some(name) = status {
        return dir
            .status_named(pipeline_id, name)
            .map(|s| s.id)
            .ok_or_else(|| {
                invalid(
                    "status",
                    format!("{name:?} is not a status of the target pipeline"),
                )
            });
    }
    if pipeline_id == ticket.pipeline_id {
        return Ok(ticket.status_id);
    }
    let kind = dir
        .status(ticket.status_id)
        .map_or(StatusKind::Open, |s| s.kind);
    let mut same_kind: Vec<_> = dir
        .statuses
        .values()
        .filter(|s| s.pipeline_id == pipeline_id && s.kind == kind)
        .map(|s| s.id)
        .collect();
    same_kind.sort();
    let default = dir.pipeline_by_id(pipeline_id).map(|p| p.default_status);
    same_kind
        .first()
        .copied()
        .or(default)
        .ok_or_else(|| invalid("pipeline", "the target pipeline has no statuses"))
}

/// Soft delete: hidden from lists and answers as deleted, until restored.
pub async fn delete(store: &Store, actor: &Actor, number: i64) -> Result<(), ActionError> {
    change_only(store, actor, number, |store, tx, ticket, now| {
        Box::pin(async move {
            store.set_deleted(tx, ticket.id, Some(now), now).await?;
            Ok(vec![("deleted", json!({}))])
        })
    })
    .await
    .map(|_| ())
}

/// Brings a deleted ticket back (admins).
pub async fn restore(
    store: &Store,
    actor: &Actor,
    number: i64,
) -> Result<TicketDetail, ActionError> {
    let now = now_ms();
    let mut w = store.begin_write().await?;
    let ticket = for_admin(store, &mut w.tx, actor, number, false, "restore a ticket").await?;
    store.set_deleted(&mut w.tx, ticket, None, now).await?;
    events::insert(
        &mut w.tx,
        ticket,
        "restored",
        &json!({}),
        &actor.label(),
        now,
    )
    .await?;
    w.commit().await?;
    show(store, actor, number).await
}

/// Removes a ticket, live or deleted, for good (admins).
pub async fn purge(store: &Store, actor: &Actor, number: i64) -> Result<(), ActionError> {
    let mut w = store.begin_write().await?;
    let ticket = for_admin(store, &mut w.tx, actor, number, true, "purge a ticket").await?;
    store.purge_ticket(&mut w.tx, ticket).await?;
    w.commit().await?;
    tracing::info!(ticket = number, actor = %actor.label(), "Ticket purged.");
    Ok(())
}

/// Ticket `number` (its id), deleted unless `live_too`, for an admin of
/// its team.
async fn for_admin(
    store: &Store,
    tx: &mut crate::store::Tx,
    actor: &Actor,
    number: i64,
    live_too: bool,
    what: &str,
) -> Result<i64, ActionError> {
    let ticket = store.deleted_ticket(tx, number, live_too).await?;
    let Some(ticket) = ticket.filter(|t| actor.can_access_team(t.team_id)) else {
        let missing = match live_too {
            true => format!("ticket #{number} does not exist"),
            false => format!("no deleted ticket #{number}"),
        };
        return Err(ActionError::NotFound(missing));
    };
    if !actor.can_admin_team(ticket.team_id) {
        return Err(ActionError::Forbidden(format!("only an admin can {what}")));
    }
    Ok(ticket.id)
}
