//! Reply planning, pure: from what the agent asked for and what the store
//! knows about the ticket, decide From, the recipients, the message
//! answered, the relay, the status and owner changes and the timeline
//! events, or refuse with the field to fix. Nothing here does I/O, so every
//! refusal is unit-tested case by case; `reply.rs` loads, renders and writes.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use super::compose::NewAttachment;
use crate::config::Config;
use crate::mail::address::parse_input;
use crate::mail::ids::check_header_value;
use crate::mail::Mailbox;
use crate::store::directory::{Actor, Directory, TeamInfo};
use crate::store::outbox::SentCopyState;
use crate::store::replies::{Parent, ReplyTicket};

/// What the agent wrote and chose.
#[derive(Debug, Clone, Default)]
pub struct ReplyRequest {
    /// One of the team's addresses; the team default when unset.
    pub from: Option<String>,
    /// `addr` or `Name <addr>`; the ticket's contacts when unset.
    pub to: Option<Vec<String>>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// The message (row id) answered; the latest inbound one when unset.
    pub in_reply_to: Option<i64>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    pub attachments: Vec<NewAttachment>,
    /// A status of the ticket's pipeline to set in the same step.
    pub status: Option<String>,
    /// Ticket properties to set with it (the status may require some).
    pub properties: BTreeMap<String, Value>,
    /// A retried request with the same key returns the first reply.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

pub fn invalid(field: &str, message: impl Into<String>) -> ReplyError {
    ReplyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses `addr` or `Name <addr>` from user input, refusing anything that
/// could break out of its header.
pub fn parse_recipient(field: &str, input: &str) -> Result<Mailbox, ReplyError> {
    parse_input(input).map_err(|m| invalid(field, m))
}

fn recipients(field: &str, list: &[String]) -> Result<Vec<Mailbox>, ReplyError> {
    list.iter().map(|r| parse_recipient(field, r)).collect()
}

/// The request's own recipients, checked before anything is read.
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    /// None: the ticket's contacts.
    pub to: Option<Vec<Mailbox>>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
}

/// Checks what needs no database: a body, no NUL, recipients, attachment
/// names and types, the Idempotency-Key.
pub fn check_request(request: &ReplyRequest) -> Result<Recipients, ReplyError> {
    let text = request.body_text.as_deref().unwrap_or_default();
    let html = request.body_html.as_deref();
    if text.trim().is_empty() && html.is_none_or(|h| h.trim().is_empty()) {
        return Err(invalid("body", "a reply needs a text or HTML body"));
    }
    if text.contains('\0') || html.is_some_and(|h| h.contains('\0')) {
        return Err(invalid("body", "must not contain NUL"));
    }
    let checked = Recipients {
        cc: recipients("cc", &request.cc)?,
        bcc: recipients("bcc", &request.bcc)?,
        to: request
            .to
            .as_deref()
            .map(|to| recipients("to", to))
            .transpose()?,
    };
    for (i, a) in request.attachments.iter().enumerate() {
        check_header_value(&format!("attachments[{i}].filename"), &a.filename)
            .and_then(|_| {
                check_header_value(&format!("attachments[{i}].content_type"), &a.content_type)
            })
            .map_err(|m| invalid(&format!("attachments[{i}]"), m))?;
        if a.content_type.split('/').count() != 2 {
            return Err(invalid(
                &format!("attachments[{i}].content_type"),
                format!("{:?} is not a MIME type", a.content_type),
            ));
        }
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err(invalid("Idempotency-Key", "must be 1 to 200 characters"));
        }
    }
    Ok(checked)
}

/// What the store knows that the plan depends on.
#[derive(Debug, Clone)]
pub struct Known<'a> {
    pub ticket: &'a ReplyTicket,
    pub team: &'a TeamInfo,
    /// The address asked for (parsed), if any.
    pub asked_from: Option<String>,
    /// The chosen (or default) team address; None when it is not one.
    pub from: Option<Mailbox>,
    /// The ticket's contacts (only read when the request names no To).
    pub contacts: Vec<Mailbox>,
    /// The message answered; None when there is none (or `in_reply_to` is
    /// not on this ticket, which `parent_missing` says).
    pub parent: Option<Parent>,
    pub parent_missing: bool,
}

/// Everything decided about a reply, ready to render and store.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub from: Mailbox,
    pub relay: String,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    /// SMTP recipients: To, Cc and Bcc, each once, in that order.
    pub envelope: Vec<String>,
    /// The answered message's ID (never a synthetic one), and the chain of
    /// IDs References continues.
    pub parent_id: Option<String>,
    pub chain: Vec<String>,
    pub thread_root: Option<String>,
    pub status_id: i64,
    pub owner: Option<i64>,
    pub properties: BTreeMap<String, Value>,
    /// (kind, data) for the timeline; `reply_queued` gets its message id
    /// when stored.
    pub events: Vec<(&'static str, Value)>,
    pub sent_copy: Option<SentCopyState>,
}

/// Longest Message-ID copied into In-Reply-To or References: over-long IDs
/// (a hostile or broken client's) would make a header line relays refuse.
const MAX_ID_LEN: usize = 250;

/// Decides the reply, or refuses it with the field to fix.
pub fn plan(
    request: &ReplyRequest,
    recipients: Recipients,
    known: Known<'_>,
    dir: &Directory,
    config: &Config,
    actor: &Actor,
) -> Result<Plan, ReplyError> {
    let ticket = known.ticket;
    let team = known.team;
    let from = known.from.ok_or_else(|| match &known.asked_from {
        Some(from) => invalid(
            "from",
            format!("{from} is not an address of team {}", team.key),
        ),
        None => invalid("from", format!("team {} has no default address", team.key)),
    })?;
    let (relay, _) = config.relay_for(&team.key, &from.address).ok_or_else(|| {
        invalid(
            "from",
            format!(
                "no SMTP relay is configured for {}: add a [relays.NAME] section (and set relay on the address if there are several)",
                from.address
            ),
        )
    })?;
    // To: the ticket's contacts unless the agent chose.
    let to = recipients.to.unwrap_or(known.contacts);
    let (cc, bcc) = (recipients.cc, recipients.bcc);
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(invalid(
            "to",
            "the ticket has no contact to answer: name the recipients",
        ));
    }
    if known.parent_missing {
        let id = request.in_reply_to.unwrap_or_default();
        return Err(invalid(
            "in_reply_to",
            format!("message {id} is not on ticket #{}", ticket.number),
        ));
    }
    let (parent_id, chain, thread_root) = threading(known.parent);
    let StatusDecision {
        status_id,
        reason: status_reason,
        properties,
    } = status(request, ticket, dir)?;
    let mut events = vec![(
        "reply_queued",
        json!({ "from": from.address, "to": to.iter().map(|m| &m.address).collect::<Vec<_>>(), "relay": relay }),
    )];
    let mut owner = ticket.owner;
    if let (None, Some(agent), true) = (ticket.owner, actor.agent_id(), team.assign_on_reply) {
        owner = Some(agent);
        events.push(("assigned", json!({ "to": agent, "reason": "replied" })));
    }
    if let Some(reason) = status_reason {
        events.push((
            "status_changed",
            json!({ "from": ticket.status_id, "to": status_id, "reason": reason }),
        ));
    }
    let mut seen = HashSet::new();
    let envelope = to
        .iter()
        .chain(&cc)
        .chain(&bcc)
        .filter(|r| seen.insert(r.address.clone()))
        .map(|r| r.address.clone())
        .collect();
    Ok(Plan {
        sent_copy: sent_copy(config, &team.key, &from.address),
        relay: relay.to_string(),
        from,
        to,
        cc,
        bcc,
        envelope,
        parent_id,
        chain,
        thread_root,
        status_id,
        owner,
        properties,
        events,
    })
}

/// In-Reply-To, the References chain and the Outlook conversation of the
/// answered message. A synthetic ID (a form, a message without one) means
/// nothing to the customer's mail client.
fn threading(parent: Option<Parent>) -> (Option<String>, Vec<String>, Option<String>) {
    let Some(parent) = parent else {
        return (None, Vec::new(), None);
    };
    let usable = |id: &String| id.len() <= MAX_ID_LEN;
    let parent_id = Some(parent.message_id)
        .filter(|_| !parent.synthetic)
        .filter(usable);
    let mut chain = parent.references;
    chain.retain(usable);
    chain.extend(parent_id.clone());
    (parent_id, chain, parent.thread_index_root)
}

/// The ticket's status after the reply.
struct StatusDecision {
    status_id: i64,
    /// Why it changed; None when it did not.
    reason: Option<&'static str>,
    /// The ticket's properties with the request's set.
    properties: BTreeMap<String, Value>,
}

/// The ticket's status after the reply, and its properties. A requested status must be in the ticket's pipeline
/// with its required properties set (from the ticket or the request);
/// otherwise the pipeline's `status_after_reply` applies when its
/// properties are satisfied.
fn status(
    request: &ReplyRequest,
    ticket: &ReplyTicket,
    dir: &Directory,
) -> Result<StatusDecision, ReplyError> {
    let mut properties = ticket.properties.clone();
    properties.extend(request.properties.clone());
    let pipeline = dir.pipeline_by_id(ticket.pipeline_id);
    let missing_for = |status_id: i64| -> Vec<String> {
        let required = dir
            .status(status_id)
            .map(|s| s.required_properties.clone())
            .unwrap_or_default();
        let unset = |v: &Value| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty());
        required
            .into_iter()
            .filter(|p| properties.get(p).is_none_or(unset))
            .collect()
    };
    if let Some(name) = &request.status {
        let status = dir.status_named(ticket.pipeline_id, name).ok_or_else(|| {
            invalid(
                "status",
                format!(
                    "{name:?} is not a status of ticket #{}'s pipeline ({})",
                    ticket.number,
                    pipeline.map(|p| p.key.as_str()).unwrap_or("?")
                ),
            )
        })?;
        let missing = missing_for(status.id);
        if !missing.is_empty() {
            return Err(invalid(
                "properties",
                format!(
                    "status {name:?} requires {}; supply them in properties",
                    missing.join(", ")
                ),
            ));
        }
        let reason = (status.id != ticket.status_id).then_some("reply");
        return Ok(StatusDecision {
            status_id: status.id,
            reason,
            properties,
        });
    }
    let automatic = pipeline
        .and_then(|p| p.status_after_reply)
        .filter(|s| *s != ticket.status_id)
        .filter(|s| missing_for(*s).is_empty());
    Ok(match automatic {
        Some(status) => StatusDecision {
            status_id: status,
            reason: Some("status_after_reply"),
            properties,
        },
        None => StatusDecision {
            status_id: ticket.status_id,
            reason: None,
            properties,
        },
    })
}

/// Where a copy of mail sent from `address` goes, if the address says.
fn sent_copy(config: &Config, team: &str, address: &str) -> Option<SentCopyState> {
    let addresses = &config.teams.get(team)?.addresses;
    let configured = addresses
        .iter()
        .find(|a| a.address.eq_ignore_ascii_case(address))?;
    let copy = configured.sent_copy.as_ref()?;
    Some(SentCopyState {
        channel: copy.channel.clone(),
        folder: copy.folder.clone(),
        state: "pending".into(),
    })
}
