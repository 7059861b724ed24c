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
pub enum ActionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

pub fn invalid(field: &str, message: impl Into<String>) -> ActionError {
    ActionError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses `addr` or `Name <addr>` from user input, refusing anything that
/// could break out of its header.
pub fn parse_recipient(field: &str, input: &str) -> Result<Mailbox, ActionError> {
    parse_input(input).map_err(|m| invalid(field, m))
}

fn recipients(field: &str, list: &[String]) -> Result<Vec<Mailbox>, ActionError> {
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
pub fn check_request(
    request: &ReplyRequest,
    max_recipients: usize,
) -> Result<Recipients, ActionError> {
    // Counted before anything is parsed: the work must not grow with a
    // hostile list's length.
    let count = request.to.as_ref().map_or(0, Vec::len) + request.cc.len() + request.bcc.len();
    if count > max_recipients {
        return Err(invalid(
            "to",
            format!("{count} recipients; a reply may have at most {max_recipients} (outbox.max_recipients)"),
        ));
    }
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
) -> Result<Plan, ActionError> {
    let ticket = known.ticket;
    let team = known.team;
    let (from, relay) = from_and_relay(&known, config)?;
    // To: the ticket's contacts unless the agent chose; a stored address
    // the relay would refuse (from old or odd mail) is left out.
    // Never one of our own mailboxes: it would come back in as mail.
    let to = recipients.to.unwrap_or_else(|| {
        let mut contacts = known.contacts;
        contacts.retain(|c| {
            crate::mail::address::check(&c.address).is_ok() && !is_own(dir, &c.address)
        });
        contacts
    });
    let (cc, bcc) = (recipients.cc, recipients.bcc);
    for (field, list) in [("to", &to), ("cc", &cc), ("bcc", &bcc)] {
        if let Some(own) = list.iter().find(|m| is_own(dir, &m.address)) {
            return Err(invalid(
                field,
                format!(
                    "{} is one of our own mailboxes: a reply to it would come back in as new mail",
                    own.address
                ),
            ));
        }
    }
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
    let envelope = envelope(&to, &cc, &bcc);
    if envelope.len() > config.outbox.max_recipients {
        return Err(invalid(
            "to",
            format!(
                "the ticket has {} recipients; a reply may have at most {} (outbox.max_recipients): name the recipients",
                envelope.len(),
                config.outbox.max_recipients
            ),
        ));
    }
    Ok(Plan {
        envelope,
        sent_copy: sent_copy(config, &team.key, &from.address),
        relay: relay.to_string(),
        from,
        to,
        cc,
        bcc,
        parent_id,
        chain,
        thread_root,
        status_id,
        owner,
        properties,
        events,
    })
}

/// From (the team address asked for, or its default) and the relay that
/// serves it.
fn from_and_relay<'c>(
    known: &Known<'_>,
    config: &'c Config,
) -> Result<(Mailbox, &'c str), ActionError> {
    let team = &known.team.key;
    let from = known.from.clone().ok_or_else(|| match &known.asked_from {
        Some(from) => invalid("from", format!("{from} is not an address of team {team}")),
        None => invalid("from", format!("team {team} has no default address")),
    })?;
    let (relay, _) = config.relay_for(team, &from.address).ok_or_else(|| {
        invalid(
            "from",
            format!(
                "no SMTP relay is configured for {}: add a [relays.NAME] section (and set relay on the address if there are several)",
                from.address
            ),
        )
    })?;
    Ok((from, relay))
}

/// A team address, or one with a `+detail` (reply tokens, sub-addresses).
pub fn is_own(dir: &Directory, address: &str) -> bool {
    let address = address.to_ascii_lowercase();
    if dir.team_addresses.contains_key(&address) {
        return true;
    }
    crate::mail::token::split_detail(&address)
        .is_some_and(|(without, _)| dir.team_addresses.contains_key(&without))
}

/// The SMTP recipients: To, Cc and Bcc, each address once, in that order.
fn envelope(to: &[Mailbox], cc: &[Mailbox], bcc: &[Mailbox]) -> Vec<String> {
    let mut seen = HashSet::new();
    to.iter()
        .chain(cc)
        .chain(bcc)
        .filter(|r| seen.insert(r.address.as_str()))
        .map(|r| r.address.clone())
        .collect()
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
) -> Result<StatusDecision, ActionError> {
    let mut properties = ticket.properties.clone();
    properties.extend(request.properties.clone());
    let pipeline = dir.pipeline_by_id(ticket.pipeline_id);
    let missing_for = |status_id: i64| missing_properties(dir, status_id, &properties);
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
        check_required(dir, status.id, &properties)?;
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

/// The properties status `status_id` requires that `properties` leaves
/// unset (missing, null or blank).
pub fn missing_properties(
    dir: &Directory,
    status_id: i64,
    properties: &BTreeMap<String, Value>,
) -> Vec<String> {
    let required = dir
        .status(status_id)
        .map(|s| s.required_properties.clone())
        .unwrap_or_default();
    let unset = |v: &Value| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty());
    required
        .into_iter()
        .filter(|p| properties.get(p).is_none_or(unset))
        .collect()
}

/// Refuses entering status `status_id` while a property it requires is
/// unset, naming them (422 in the API).
pub fn check_required(
    dir: &Directory,
    status_id: i64,
    properties: &BTreeMap<String, Value>,
) -> Result<(), ActionError> {
    let missing = missing_properties(dir, status_id, properties);
    if missing.is_empty() {
        return Ok(());
    }
    let name = dir.status(status_id).map_or("?", |s| s.name.as_str());
    Err(invalid(
        "properties",
        format!(
            "status {name:?} requires {}; supply them in properties",
            missing.join(", ")
        ),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FollowUp, Role, StatusKind};
    use crate::store::directory::{AgentInfo, PipelineInfo, StatusInfo};

    const OPEN: i64 = 1;
    const WAITING: i64 = 2;
    const SOLVED: i64 = 3;

    fn config(relays: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailroom.toml");
        let text = format!(
            r#"
[database]
url = "sqlite://x.db"
{relays}
[teams.support]
addresses = [
  {{ address = "support@example.com", default = true }},
  {{ address = "help@example.org", sent_copy = {{ channel = "inbox", folder = "Sent" }} }},
]
"#
        );
        std::fs::write(&path, text).unwrap();
        Config::load_unvalidated(&path).unwrap()
    }

    fn with_relay() -> Config {
        config("[relays.main]\nhost = \"smtp.example.com\"\n")
    }

    fn directory(status_after_reply: Option<i64>) -> Directory {
        let mut dir = Directory::default();
        let status = |id, name: &str, kind, required: &[&str]| StatusInfo {
            id,
            name: name.into(),
            kind,
            pipeline_id: 1,
            required_properties: required.iter().map(|s| s.to_string()).collect(),
        };
        dir.statuses
            .insert(OPEN, status(OPEN, "open", StatusKind::Open, &[]));
        dir.statuses.insert(
            WAITING,
            status(WAITING, "waiting", StatusKind::Waiting, &[]),
        );
        let solved = status(SOLVED, "solved", StatusKind::Closed, &["resolution"]);
        dir.statuses.insert(SOLVED, solved);
        let pipeline = PipelineInfo {
            id: 1,
            key: "support".into(),
            default_status: OPEN,
            reopen_status: OPEN,
            follow_up: FollowUp::Reopen,
            new_ticket_after_days: None,
            status_after_reply,
            merge_late_parents: false,
            thread_by_subject_days: None,
        };
        dir.pipelines.insert("support".into(), pipeline);
        dir
    }

    fn team(assign_on_reply: bool) -> TeamInfo {
        TeamInfo {
            id: 1,
            key: "support".into(),
            name: "Support".into(),
            subject_tag: true,
            assign_on_reply,
        }
    }

    fn ticket() -> ReplyTicket {
        ReplyTicket {
            id: 10,
            number: 42,
            subject: "Printer".into(),
            team_id: 1,
            pipeline_id: 1,
            status_id: OPEN,
            ..Default::default()
        }
    }

    fn customer() -> Mailbox {
        Mailbox::new("carol@customer.test", Some("Carol".into()))
    }

    fn known<'a>(ticket: &'a ReplyTicket, team: &'a TeamInfo) -> Known<'a> {
        Known {
            ticket,
            team,
            asked_from: None,
            from: Some(Mailbox::new("support@example.com", None)),
            contacts: vec![customer()],
            parent: Some(Parent {
                message_id: "c1@customer.test".into(),
                references: vec!["a@x".into()],
                thread_index_root: None,
                synthetic: false,
            }),
            parent_missing: false,
        }
    }

    fn agent() -> Actor {
        Actor::Agent(AgentInfo {
            id: 7,
            key: "alice".into(),
            email: "alice@example.com".into(),
            name: "Alice".into(),
            role: Role::Agent,
            team_ids: vec![1],
        })
    }

    fn body(text: &str) -> ReplyRequest {
        ReplyRequest {
            body_text: Some(text.into()),
            ..Default::default()
        }
    }

    fn refusal(result: Result<Plan, ActionError>) -> (String, String) {
        match result {
            Err(ActionError::Invalid { field, message }) => (field, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn planned(
        request: &ReplyRequest,
        known: Known<'_>,
        dir: &Directory,
        actor: &Actor,
    ) -> Result<Plan, ActionError> {
        let recipients = check_request(request, 300)?;
        plan(request, recipients, known, dir, &with_relay(), actor)
    }

    #[test]
    fn requests_are_refused_with_the_field_to_fix_before_any_read() {
        let attach = |filename: &str, content_type: &str| ReplyRequest {
            attachments: vec![NewAttachment {
                filename: filename.into(),
                content_type: content_type.into(),
                data: b"x".to_vec(),
            }],
            ..body("hi")
        };
        let cases = [
            (body("  "), "body"),
            (body("a\0b"), "body"),
            (
                ReplyRequest {
                    cc: vec!["nobody".into()],
                    ..body("hi")
                },
                "cc",
            ),
            (
                ReplyRequest {
                    bcc: vec!["a@x.test\r\nBcc: v@x.test".into()],
                    ..body("hi")
                },
                "bcc",
            ),
            (
                ReplyRequest {
                    to: Some(vec!["ü@x.test".into()]),
                    ..body("hi")
                },
                "to",
            ),
            (attach("a\r\nX: y.txt", "text/plain"), "attachments[0]"),
            (attach("a.txt", "textplain"), "attachments[0].content_type"),
            (
                ReplyRequest {
                    idempotency_key: Some(String::new()),
                    ..body("hi")
                },
                "Idempotency-Key",
            ),
            (
                ReplyRequest {
                    idempotency_key: Some("k".repeat(201)),
                    ..body("hi")
                },
                "Idempotency-Key",
            ),
        ];
        for (request, field) in cases {
            match check_request(&request, 300) {
                Err(ActionError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a refusal, got {other:?}"),
            }
        }
        let html_only = ReplyRequest {
            body_html: Some("<p>hi</p>".into()),
            ..Default::default()
        };
        assert!(check_request(&html_only, 300).is_ok());
    }

    #[test]
    fn our_own_mailboxes_are_never_mailed() {
        let mut dir = directory(None);
        dir.team_addresses.insert("support@example.com".into(), 1);
        let (ticket, team) = (ticket(), team(false));
        // A contact that is our own address (a loop's leftover) is left out.
        let mut with_own = known(&ticket, &team);
        with_own
            .contacts
            .push(Mailbox::new("support+1-2-r-3-abc@example.com", None));
        let plan = planned(&body("hi"), with_own, &dir, &agent()).unwrap();
        assert_eq!(plan.envelope, vec!["carol@customer.test"]);
        // Named by the agent: refused, saying why.
        let request = ReplyRequest {
            cc: vec!["Support@Example.com".into()],
            ..body("hi")
        };
        let (field, message) = refusal(planned(&request, known(&ticket, &team), &dir, &agent()));
        assert_eq!(field, "cc");
        assert!(message.contains("one of our own mailboxes"), "{message}");
    }

    #[test]
    fn from_must_be_a_team_address_with_a_relay() {
        let (t, team, dir) = (ticket(), team(true), directory(None));
        let mut other = known(&t, &team);
        other.asked_from = Some("sales@example.com".into());
        other.from = None;
        let (field, message) = refusal(planned(&body("hi"), other, &dir, &Actor::Ops));
        assert_eq!(field, "from");
        assert!(
            message.contains("sales@example.com is not an address of team support"),
            "{message}"
        );
        let mut no_default = known(&t, &team);
        no_default.from = None;
        let (_, message) = refusal(planned(&body("hi"), no_default, &dir, &Actor::Ops));
        assert!(message.contains("no default address"), "{message}");
        let request = body("hi");
        let checked = check_request(&request, 300).unwrap();
        let result = plan(
            &request,
            checked,
            known(&t, &team),
            &dir,
            &config(""),
            &Actor::Ops,
        );
        let (field, message) = refusal(result);
        assert_eq!(field, "from");
        assert!(message.contains("no SMTP relay"), "{message}");
    }

    #[test]
    fn a_reply_needs_someone_to_go_to_and_a_parent_on_the_ticket() {
        let (t, team, dir) = (ticket(), team(true), directory(None));
        let mut nobody = known(&t, &team);
        nobody.contacts.clear();
        assert_eq!(
            refusal(planned(&body("hi"), nobody, &dir, &Actor::Ops)).0,
            "to"
        );
        let mut elsewhere = known(&t, &team);
        elsewhere.parent = None;
        elsewhere.parent_missing = true;
        let request = ReplyRequest {
            in_reply_to: Some(99),
            ..body("hi")
        };
        let (field, message) = refusal(planned(&request, elsewhere, &dir, &Actor::Ops));
        assert_eq!(field, "in_reply_to");
        assert!(
            message.contains("message 99 is not on ticket #42"),
            "{message}"
        );
    }

    #[test]
    fn a_requested_status_must_exist_and_have_its_properties() {
        let (t, team, dir) = (ticket(), team(true), directory(None));
        let unknown = ReplyRequest {
            status: Some("archived".into()),
            ..body("hi")
        };
        assert_eq!(
            refusal(planned(&unknown, known(&t, &team), &dir, &Actor::Ops)).0,
            "status"
        );
        let solved = ReplyRequest {
            status: Some("solved".into()),
            ..body("hi")
        };
        let (field, message) = refusal(planned(&solved, known(&t, &team), &dir, &Actor::Ops));
        assert_eq!(field, "properties");
        assert!(message.contains("requires resolution"), "{message}");
        let mut with_resolution = solved.clone();
        with_resolution
            .properties
            .insert("resolution".into(), Value::from("replaced toner"));
        let plan = planned(&with_resolution, known(&t, &team), &dir, &Actor::Ops).unwrap();
        assert_eq!(plan.status_id, SOLVED);
        assert_eq!(plan.properties["resolution"], "replaced toner");
        assert!(plan
            .events
            .iter()
            .any(|(k, d)| *k == "status_changed" && d["reason"] == "reply"));
    }

    #[test]
    fn status_after_reply_applies_only_when_its_properties_are_set() {
        let (t, team) = (ticket(), team(true));
        let waiting = directory(Some(WAITING));
        let plan = planned(&body("hi"), known(&t, &team), &waiting, &Actor::Ops).unwrap();
        assert_eq!(plan.status_id, WAITING);
        let reason = plan
            .events
            .iter()
            .find(|(k, _)| *k == "status_changed")
            .map(|(_, d)| d["reason"].clone());
        assert_eq!(reason, Some(Value::from("status_after_reply")));
        let solved = directory(Some(SOLVED));
        let plan = planned(&body("hi"), known(&t, &team), &solved, &Actor::Ops).unwrap();
        assert_eq!(
            plan.status_id, OPEN,
            "resolution is missing: the status stays"
        );
        assert!(!plan.events.iter().any(|(k, _)| *k == "status_changed"));
    }

    #[test]
    fn an_agent_replying_to_an_unassigned_ticket_takes_it() {
        let (t, dir) = (ticket(), directory(None));
        let assigning = team(true);
        let plan = planned(&body("hi"), known(&t, &assigning), &dir, &agent()).unwrap();
        assert_eq!(plan.owner, Some(7));
        assert!(plan.events.iter().any(|(k, _)| *k == "assigned"));
        let plan = planned(&body("hi"), known(&t, &assigning), &dir, &Actor::Ops).unwrap();
        assert_eq!(plan.owner, None, "the operator is nobody's owner");
        let not_assigning = team(false);
        let plan = planned(&body("hi"), known(&t, &not_assigning), &dir, &agent()).unwrap();
        assert_eq!(plan.owner, None);
        let owned = ReplyTicket {
            owner: Some(3),
            ..ticket()
        };
        let plan = planned(&body("hi"), known(&owned, &assigning), &dir, &agent()).unwrap();
        assert_eq!(plan.owner, Some(3));
    }

    #[test]
    fn recipients_threading_and_the_sent_copy() {
        let (t, team, dir) = (ticket(), team(true), directory(None));
        let request = ReplyRequest {
            cc: vec![
                "Dave <dave@customer.test>".into(),
                "carol@customer.test".into(),
            ],
            bcc: vec!["audit@example.com".into()],
            ..body("hi")
        };
        let plan = planned(&request, known(&t, &team), &dir, &Actor::Ops).unwrap();
        assert_eq!(plan.to, vec![customer()]);
        assert_eq!(plan.cc[0].name.as_deref(), Some("Dave"));
        assert_eq!(
            plan.envelope,
            vec![
                "carol@customer.test",
                "dave@customer.test",
                "audit@example.com"
            ]
        );
        assert_eq!(plan.parent_id.as_deref(), Some("c1@customer.test"));
        assert_eq!(plan.chain, vec!["a@x", "c1@customer.test"]);
        assert_eq!(plan.relay, "main");
        assert_eq!(plan.sent_copy, None);

        let mut via_help = known(&t, &team);
        via_help.from = Some(Mailbox::new("help@example.org", None));
        let mut synthetic = via_help.parent.clone().unwrap();
        synthetic.synthetic = true;
        synthetic.references = vec!["x".repeat(300), "b@x".into()];
        via_help.parent = Some(synthetic);
        let plan = planned(&body("hi"), via_help, &dir, &Actor::Ops).unwrap();
        assert_eq!(
            plan.parent_id, None,
            "a made-up ID means nothing to the customer"
        );
        assert_eq!(plan.chain, vec!["b@x"], "over-long IDs are left out");
        let copy = plan.sent_copy.expect("help@ keeps a Sent copy");
        assert_eq!(
            (copy.channel.as_str(), copy.folder.as_str()),
            ("inbox", "Sent")
        );
    }
}
