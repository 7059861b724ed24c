//! Contacts, visitors and companies. Any agent may read and edit them; the
//! tickets shown with a contact are only those of the agent's teams.

use serde::Serialize;
use serde_json::json;

use super::{invalid, ActionError};
use crate::outbound::plan::parse_recipient;
use crate::store::contacts::{CompanyView, ContactQuery, ContactView};
use crate::store::directory::Actor;
use crate::store::tickets::{TicketQuery, TicketSummary};
use crate::store::{events, now_ms, Store};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContactDetail {
    #[serde(flatten)]
    pub contact: ContactView,
    pub tickets: Vec<TicketSummary>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContactPage {
    pub contacts: Vec<ContactView>,
    pub next_cursor: Option<String>,
}

pub async fn list(
    store: &Store,
    text: Option<String>,
    kind: Option<String>,
    company: Option<i64>,
    cursor: Option<String>,
    limit: Option<i64>,
) -> Result<ContactPage, ActionError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid("limit", "must be between 1 and 200"));
    }
    if let Some(k) = &kind {
        check_kind(k)?;
    }
    let before = cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| invalid("cursor", "not a cursor this API gave out"))
        })
        .transpose()?;
    let query = ContactQuery {
        text: text.filter(|t| !t.trim().is_empty()),
        kind,
        company,
        before,
        limit: limit + 1,
    };
    let mut contacts = store.contacts(&query).await?;
    let more = contacts.len() as i64 > limit;
    contacts.truncate(limit as usize);
    let next_cursor = match more {
        true => contacts.last().map(|c| c.id.to_string()),
        false => None,
    };
    Ok(ContactPage {
        contacts,
        next_cursor,
    })
}

fn check_kind(kind: &str) -> Result<(), ActionError> {
    match kind {
        "visitor" | "contact" => Ok(()),
        _ => Err(invalid("kind", "must be \"visitor\" or \"contact\"")),
    }
}

fn missing_contact(id: i64) -> ActionError {
    ActionError::NotFound(format!("contact {id} does not exist"))
}

/// A contact with the tickets (of the actor's teams) they take part in. An
/// attached visitor shows the contact they belong to (`merged_into`).
pub async fn show(store: &Store, actor: &Actor, id: i64) -> Result<ContactDetail, ActionError> {
    let contact = store
        .contact(id)
        .await?
        .ok_or_else(|| missing_contact(id))?;
    let query = TicketQuery {
        teams: actor.teams(),
        contact: Some(contact.merged_into.unwrap_or(id)),
        limit: Some(200),
        ..TicketQuery::default()
    };
    let tickets = store.tickets(&query).await?;
    Ok(ContactDetail { contact, tickets })
}

/// Makes a contact (a visitor with that address becomes one); true when new.
pub async fn create(
    store: &Store,
    actor: &Actor,
    address: &str,
    name: Option<String>,
    company: Option<i64>,
) -> Result<(ContactDetail, bool), ActionError> {
    let mut person = parse_recipient("email", address)?;
    if name.is_some() {
        person.name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    }
    if let Some(company) = company {
        check_company(store, company).await?;
    }
    let (id, created) = store.create_contact(&person, company, now_ms()).await?;
    Ok((show(store, actor, id).await?, created))
}

async fn check_company(store: &Store, company: i64) -> Result<(), ActionError> {
    match store.company(company).await? {
        Some(_) => Ok(()),
        None => Err(invalid("company_id", format!("no company {company}"))),
    }
}

pub async fn edit(
    store: &Store,
    actor: &Actor,
    id: i64,
    name: Option<String>,
    kind: Option<String>,
    company: Option<i64>,
) -> Result<ContactDetail, ActionError> {
    if let Some(k) = &kind {
        check_kind(k)?;
    }
    if let Some(n) = &name {
        crate::mail::ids::check_header_value("name", n).map_err(|m| invalid("name", m))?;
    }
    if let Some(company) = company {
        check_company(store, company).await?;
    }
    if !store
        .edit_contact(id, name.as_deref(), kind.as_deref(), company)
        .await?
    {
        return Err(missing_contact(id));
    }
    show(store, actor, id).await
}

/// Attaches contact `from` (a visitor, say) to contact `into`: their
/// tickets and messages follow, and their address is `into`'s from now on.
pub async fn merge(
    store: &Store,
    actor: &Actor,
    from: i64,
    into: i64,
) -> Result<ContactDetail, ActionError> {
    if from == into {
        return Err(invalid("into", "a contact cannot be merged into itself"));
    }
    let (a, b) = (store.contact(from).await?, store.contact(into).await?);
    let a = a.ok_or_else(|| missing_contact(from))?;
    let b = b.ok_or_else(|| missing_contact(into))?;
    for c in [&a, &b] {
        if c.merged_into.is_some() {
            return Err(invalid(
                "into",
                format!("contact {} is already attached to another", c.id),
            ));
        }
    }
    let now = now_ms();
    let label = actor.label();
    let mut w = store.begin_write().await?;
    let tickets = store.contact_ticket_ids(&mut w.tx, from).await?;
    store.merge_contacts(&mut w.tx, from, into).await?;
    let data = json!({ "from": a.email, "into": b.email });
    for ticket in tickets {
        events::insert(&mut w.tx, ticket, "contact_merged", &data, &label, now).await?;
    }
    w.commit().await?;
    show(store, actor, into).await
}

/// Lower-case mail domains, each a host name (no `@`, no wildcards).
fn check_domains(domains: &[String]) -> Result<Vec<String>, ActionError> {
    let mut out: Vec<String> = Vec::new();
    for d in domains {
        let d = d.trim().trim_start_matches('@').to_lowercase();
        let ok = d.contains('.')
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return Err(invalid("domains", format!("{d:?} is not a mail domain")));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Creates a company (`id` None) or renames it and replaces its domains.
pub async fn save_company(
    store: &Store,
    id: Option<i64>,
    name: &str,
    domains: &[String],
) -> Result<CompanyView, ActionError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    let domains = check_domains(domains)?;
    let mut w = store.begin_write().await?;
    if let Some((domain, owner)) = store.domain_owner(&mut w.tx, &domains, id).await? {
        return Err(invalid(
            "domains",
            format!("{domain} already belongs to company {owner}"),
        ));
    }
    let saved = store.save_company(&mut w.tx, id, name, &domains).await?;
    let Some(saved) = saved else {
        return Err(ActionError::NotFound(format!(
            "company {} does not exist",
            id.unwrap_or_default()
        )));
    };
    w.commit().await?;
    company(store, saved).await
}

pub async fn company(store: &Store, id: i64) -> Result<CompanyView, ActionError> {
    store
        .company(id)
        .await?
        .ok_or_else(|| ActionError::NotFound(format!("company {id} does not exist")))
}
