//! Snippets: saved reply text of a team, or shared by every team, with
//! placeholders (`{{contact.first_name}}`, `{{ticket.number}}`,
//! `{{agent.name}}` …). A reply naming snippets gets their rendered text
//! after its own; what is stored and sent is the rendered text. Agents
//! manage their own teams' snippets; shared ones and other teams' take an
//! admin.

use std::collections::BTreeMap;

use super::{invalid, require_admin, ActionError};
use crate::outbound::ReplyRequest;
use crate::store::directory::{Actor, Directory};
use crate::store::snippets::{SnippetFields, SnippetView};
use crate::store::tickets::TicketQuery;
use crate::store::{now_ms, Store};

/// Every placeholder a snippet may use.
pub const PLACEHOLDERS: &[&str] = &[
    "contact.name",
    "contact.first_name",
    "contact.email",
    "ticket.number",
    "ticket.subject",
    "agent.name",
    "agent.first_name",
    "agent.email",
    "team.name",
];

pub const MAX_SNIPPET_CHARS: usize = 65_536;

/// The placeholders in `body` that are not known, each once.
pub fn unknown_placeholders(body: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    for (name, _) in placeholders(body) {
        if !PLACEHOLDERS.contains(&name.as_str()) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    unknown
}

/// (name, byte range) of each `{{ name }}` in `body`.
fn placeholders(body: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = body[from..].find("{{").map(|i| i + from) {
        let Some(end) = body[start + 2..].find("}}").map(|i| i + start + 2) else {
            break;
        };
        out.push((body[start + 2..end].trim().to_string(), start..end + 2));
        from = end + 2;
    }
    out
}

/// Fills in the placeholders; an unknown one is an error naming it.
pub fn render(body: &str, values: &BTreeMap<&str, String>) -> Result<String, ActionError> {
    let unknown = unknown_placeholders(body);
    if !unknown.is_empty() {
        return Err(invalid(
            "snippets",
            format!(
                "unknown placeholder {}; known: {}",
                unknown.join(", "),
                PLACEHOLDERS.join(", ")
            ),
        ));
    }
    let mut out = String::with_capacity(body.len());
    let mut last = 0;
    for (name, range) in placeholders(body) {
        out.push_str(&body[last..range.start]);
        out.push_str(values.get(name.as_str()).map_or("", String::as_str));
        last = range.end;
    }
    out.push_str(&body[last..]);
    Ok(out)
}

/// The team id a snippet is saved under (0: shared), if the actor may.
fn team_for(dir: &Directory, actor: &Actor, team: Option<&str>) -> Result<i64, ActionError> {
    match team {
        None => {
            require_admin(actor, "manage shared snippets")?;
            Ok(0)
        }
        Some(key) => {
            let id = dir
                .teams
                .get(key)
                .map(|t| t.id)
                .ok_or_else(|| invalid("team", format!("no team {key:?}")))?;
            match actor.can_access_team(id) || actor.can_admin_team(id) {
                true => Ok(id),
                false => Err(ActionError::Forbidden(format!(
                    "only an admin can manage snippets of team {key}"
                ))),
            }
        }
    }
}

fn with_team(dir: &Directory, mut s: SnippetView) -> SnippetView {
    s.team = dir.team_by_id(s.team_id).map(|t| t.key.clone());
    s
}

/// The snippets the actor can use: their teams' and the shared ones.
pub async fn list(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
) -> Result<Vec<SnippetView>, ActionError> {
    let teams = actor.teams();
    let all = store.snippets(teams.as_deref()).await?;
    Ok(all.into_iter().map(|s| with_team(dir, s)).collect())
}

/// Creates (`id` None) or replaces a snippet.
pub async fn save(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    id: Option<i64>,
    team: Option<&str>,
    name: &str,
    body: &str,
) -> Result<SnippetView, ActionError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    if body.chars().count() > MAX_SNIPPET_CHARS {
        return Err(invalid(
            "body",
            format!("at most {MAX_SNIPPET_CHARS} characters"),
        ));
    }
    let unknown = unknown_placeholders(body);
    if !unknown.is_empty() {
        return Err(invalid(
            "body",
            format!(
                "unknown placeholder {}; known: {}",
                unknown.join(", "),
                PLACEHOLDERS.join(", ")
            ),
        ));
    }
    let team_id = team_for(dir, actor, team)?;
    if let Some(id) = id {
        let existing = existing(store, dir, actor, id).await?;
        // Taking a snippet away from a team needs the right to manage it.
        team_for(dir, actor, existing.team.as_deref())?;
    }
    let mut w = store.begin_write().await?;
    let label = actor.label();
    let fields = SnippetFields {
        team: team_id,
        name,
        body,
        actor: &label,
        now: now_ms(),
    };
    let saved = store.save_snippet(&mut w.tx, id, &fields).await;
    let saved = match saved {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(invalid(
                "name",
                format!("a snippet called {name:?} already exists there"),
            ))
        }
        other => other?,
    };
    w.commit().await?;
    let id = saved.ok_or_else(|| missing(id.unwrap_or_default()))?;
    existing(store, dir, actor, id).await
}

fn missing(id: i64) -> ActionError {
    ActionError::NotFound(format!("snippet {id} does not exist"))
}

/// A snippet the actor can see (another team's answers as missing).
async fn existing(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    id: i64,
) -> Result<SnippetView, ActionError> {
    match store.snippet(id).await? {
        Some(s) if s.team_id == 0 || actor.can_access_team(s.team_id) => Ok(with_team(dir, s)),
        Some(s) if actor.can_admin_team(s.team_id) => Ok(with_team(dir, s)),
        _ => Err(missing(id)),
    }
}

pub async fn get(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    id: i64,
) -> Result<SnippetView, ActionError> {
    existing(store, dir, actor, id).await
}

pub async fn delete(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    id: i64,
) -> Result<(), ActionError> {
    let snippet = existing(store, dir, actor, id).await?;
    team_for(dir, actor, snippet.team.as_deref())?;
    match store.delete_snippet(id).await? {
        true => Ok(()),
        false => Err(missing(id)),
    }
}

/// Appends the named snippets, rendered for this ticket and agent, to the
/// reply's body (and its HTML, escaped, when it has one).
pub async fn insert_into_reply(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    number: i64,
    ids: &[i64],
    request: &mut ReplyRequest,
) -> Result<(), ActionError> {
    if ids.is_empty() {
        return Ok(());
    }
    super::visible_ticket(store, actor, number).await?;
    let query = TicketQuery {
        number: Some(number),
        ..TicketQuery::default()
    };
    let ticket = store
        .tickets(&query)
        .await?
        .pop()
        .ok_or_else(|| ActionError::NotFound(format!("ticket #{number} does not exist")))?;
    let team = dir.teams.get(&ticket.team);
    let mut texts = Vec::new();
    for id in ids {
        let snippet = existing(store, dir, actor, *id).await.map_err(|_| {
            invalid(
                "snippets",
                format!("no snippet {id} for this ticket's team"),
            )
        })?;
        if snippet.team_id != 0 && team.is_none_or(|t| t.id != snippet.team_id) {
            return Err(invalid(
                "snippets",
                format!("snippet {id} belongs to another team"),
            ));
        }
        texts.push(snippet.body);
    }
    let contact = match ticket.contacts.first() {
        Some(email) => store.contact_by_email(email).await?,
        None => None,
    };
    let first = |name: &str| name.split_whitespace().next().unwrap_or("").to_string();
    let contact_name = contact
        .as_ref()
        .and_then(|c| c.name.clone())
        .unwrap_or_default();
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    values.insert("contact.first_name", first(&contact_name));
    values.insert("contact.name", contact_name);
    values.insert(
        "contact.email",
        ticket.contacts.first().cloned().unwrap_or_default(),
    );
    values.insert("ticket.number", ticket.number.to_string());
    values.insert("ticket.subject", ticket.subject.clone());
    if let Actor::Agent(agent) = actor {
        values.insert("agent.first_name", first(&agent.name));
        values.insert("agent.name", agent.name.clone());
        values.insert("agent.email", agent.email.clone());
    }
    let team_name = team.map(|t| t.name.clone()).unwrap_or_default();
    values.insert("team.name", team_name);
    let rendered = texts
        .iter()
        .map(|t| render(t, &values))
        .collect::<Result<Vec<_>, _>>()?
        .join("\n\n");
    let text = request.body_text.take().unwrap_or_default();
    request.body_text = Some(match text.trim().is_empty() {
        true => rendered.clone(),
        false => format!("{}\n\n{rendered}", text.trim_end()),
    });
    if let Some(html) = request.body_html.take() {
        let escaped = crate::outbound::compose::text_to_html(&rendered);
        request.body_html = Some(format!("{html}\n{escaped}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_placeholders_and_names_unknown_ones() {
        let mut values = BTreeMap::new();
        values.insert("contact.first_name", "Ann".to_string());
        values.insert("ticket.number", "42".to_string());
        let out = render(
            "Hi {{contact.first_name}}, re #{{ ticket.number }}.",
            &values,
        )
        .unwrap();
        assert_eq!(out, "Hi Ann, re #42.");
        let err = render("{{contact.shoe_size}} {{x}} {{x}}", &values).unwrap_err();
        assert!(err.to_string().contains("contact.shoe_size, x"), "{err}");
        assert_eq!(render("no {{ end", &values).unwrap(), "no {{ end");
    }
}
