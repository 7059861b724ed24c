//! Queueing an agent's reply: check it, render it, and store the message and
//! its outbox row in one transaction, together with any status change and
//! assignment. Nothing is sent here; the outbox worker sends. A crash at any
//! point either leaves nothing or a complete, queued reply.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::Row;

use super::compose::{self, Draft, NewAttachment, Recipient};
use super::ids;
use crate::config::{Config, Role};
use crate::pipeline::parse::sha256_hex;
use crate::store::directory::Directory;
use crate::store::{now_ms, Store};

/// Who asks for the reply.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An agent, authenticated by the API or named on the command line.
    Agent {
        id: i64,
        key: String,
        role: Role,
        team_ids: Vec<i64>,
    },
    /// The operator at the command line, acting for no agent.
    Ops,
}

impl Actor {
    /// The configured agent `key`, resolved against the directory.
    pub fn agent(config: &Config, dir: &Directory, key: &str) -> Option<Actor> {
        let agent = config.agents.get(key)?;
        Some(Actor::Agent {
            id: *dir.agents.get(&agent.email.to_lowercase())?,
            key: key.to_string(),
            role: agent.role,
            team_ids: agent
                .teams
                .iter()
                .filter_map(|t| dir.teams.get(t).map(|t| t.id))
                .collect(),
        })
    }

    /// How events name the actor.
    pub fn label(&self) -> String {
        match self {
            Actor::Agent { key, .. } => format!("agent:{key}"),
            Actor::Ops => "ops".into(),
        }
    }

    pub fn agent_id(&self) -> Option<i64> {
        match self {
            Actor::Agent { id, .. } => Some(*id),
            Actor::Ops => None,
        }
    }

    /// Agents work in their own teams; a super admin and the operator in all.
    pub fn can_access_team(&self, team_id: i64) -> bool {
        match self {
            Actor::Agent { role, team_ids, .. } => {
                *role == Role::SuperAdmin || team_ids.contains(&team_id)
            }
            Actor::Ops => true,
        }
    }

    /// Changing a team's default From address takes an admin of that team.
    pub fn can_admin_team(&self, team_id: i64) -> bool {
        match self {
            Actor::Agent { role, team_ids, .. } => match role {
                Role::SuperAdmin => true,
                Role::Admin => team_ids.contains(&team_id),
                Role::Agent => false,
            },
            Actor::Ops => true,
        }
    }
}

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

/// The queued reply.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Queued {
    /// The message's row id.
    pub message: i64,
    /// Its RFC 5322 Message-ID.
    pub message_id: String,
    pub ticket: i64,
    pub from: String,
    pub status: String,
    pub owner: Option<String>,
    /// True when an earlier request with the same Idempotency-Key made it.
    pub replayed: bool,
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

fn invalid(field: &str, message: impl Into<String>) -> ReplyError {
    ReplyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses `addr` or `Name <addr>` from user input, refusing anything that
/// could break out of its header.
pub fn parse_recipient(field: &str, input: &str) -> Result<Recipient, ReplyError> {
    ids::check_header_value(field, input).map_err(|m| invalid(field, m))?;
    let input = input.trim();
    let (name, address) = match (input.rfind('<'), input.ends_with('>')) {
        (Some(open), true) => {
            let name = input[..open].trim().trim_matches('"').trim();
            (
                (!name.is_empty()).then(|| name.to_string()),
                &input[open + 1..input.len() - 1],
            )
        }
        _ => (None, input),
    };
    let address = address.trim();
    let valid = address.len() <= 254
        && address.split('@').count() == 2
        && address
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c));
    if !valid {
        return Err(invalid(
            field,
            format!("{address:?} is not an email address"),
        ));
    }
    if !address.is_ascii() {
        return Err(invalid(
            field,
            format!("{address:?}: internationalized (non-ASCII) addresses are not supported yet"),
        ));
    }
    Ok(Recipient {
        address: address.to_lowercase(),
        name,
    })
}

fn recipients(field: &str, list: &[String]) -> Result<Vec<Recipient>, ReplyError> {
    list.iter().map(|r| parse_recipient(field, r)).collect()
}

struct Ticket {
    id: i64,
    number: i64,
    subject: String,
    team_id: i64,
    pipeline_id: i64,
    status_id: i64,
    owner: Option<i64>,
    properties: BTreeMap<String, Value>,
    created_at: i64,
}

/// Longest Message-ID copied into In-Reply-To or References.
const MAX_ID_LEN: usize = 250;

/// Queues a reply on ticket `number`. Every check runs before anything is
/// written; on success the reply is stored and queued, and `wake` should be
/// signalled so the outbox sends it at once.
pub async fn queue_reply(
    store: &Store,
    dir: &Directory,
    config: &Config,
    actor: &Actor,
    number: i64,
    request: ReplyRequest,
) -> Result<Queued, ReplyError> {
    let keyed = request.idempotency_key.is_some();
    match queue_reply_once(store, dir, config, actor, number, request.clone()).await {
        // Two requests with one Idempotency-Key at once: the loser meets the
        // unique index; a second try finds the winner's reply and returns it.
        Err(ReplyError::Store(sqlx::Error::Database(e))) if keyed && e.is_unique_violation() => {
            queue_reply_once(store, dir, config, actor, number, request).await
        }
        other => other,
    }
}

async fn queue_reply_once(
    store: &Store,
    dir: &Directory,
    config: &Config,
    actor: &Actor,
    number: i64,
    request: ReplyRequest,
) -> Result<Queued, ReplyError> {
    let text = request.body_text.clone().unwrap_or_default();
    let html = request.body_html.clone();
    if text.trim().is_empty() && html.as_deref().is_none_or(|h| h.trim().is_empty()) {
        return Err(invalid("body", "a reply needs a text or HTML body"));
    }
    if text.contains('\0') || html.as_deref().is_some_and(|h| h.contains('\0')) {
        return Err(invalid("body", "must not contain NUL"));
    }
    let cc = recipients("cc", &request.cc)?;
    let bcc = recipients("bcc", &request.bcc)?;
    let explicit_to = match &request.to {
        Some(to) => Some(recipients("to", to)?),
        None => None,
    };
    for (i, a) in request.attachments.iter().enumerate() {
        ids::check_header_value(&format!("attachments[{i}].filename"), &a.filename)
            .and_then(|_| {
                ids::check_header_value(&format!("attachments[{i}].content_type"), &a.content_type)
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

    let now = now_ms();
    let mut w = store.begin_write().await?;
    let tx = &mut w.tx;

    let ticket = load_ticket(tx, store.backend(), number).await?;
    // Same answer as a missing ticket: numbers of other teams' tickets are
    // not for probing.
    if !actor.can_access_team(ticket.team_id) {
        return Err(ReplyError::NotFound(format!(
            "ticket #{number} does not exist (or belongs to a team you are not in)"
        )));
    }
    if let Some(key) = &request.idempotency_key {
        let row = sqlx::query(
            "SELECT m.id, m.message_id, m.from_addr FROM messages m
             WHERE m.ticket_id = $1 AND m.idempotency_key = $2",
        )
        .bind(ticket.id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            let status = dir
                .status(ticket.status_id)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            return Ok(Queued {
                message: row.try_get(0)?,
                message_id: row.try_get(1)?,
                ticket: ticket.number,
                from: row.try_get(2)?,
                status,
                owner: None,
                replayed: true,
            });
        }
    }
    let team = dir
        .teams
        .values()
        .find(|t| t.id == ticket.team_id)
        .cloned()
        .ok_or_else(|| {
            ReplyError::NotFound(format!("ticket #{number}'s team is no longer configured"))
        })?;

    // From: the team default unless the agent picked another of its addresses.
    let from_row = match &request.from {
        Some(from) => {
            let from = parse_recipient("from", from)?;
            sqlx::query(
                "SELECT address, name FROM team_addresses WHERE address = $1 AND team_id = $2 AND active = 1",
            )
            .bind(&from.address)
            .bind(ticket.team_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| {
                invalid(
                    "from",
                    format!("{} is not an address of team {}", from.address, team.key),
                )
            })?
        }
        None => sqlx::query(
            "SELECT address, name FROM team_addresses WHERE team_id = $1 AND is_default = 1 AND active = 1",
        )
        .bind(ticket.team_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| invalid("from", format!("team {} has no default address", team.key)))?,
    };
    let from = Recipient {
        address: from_row.try_get(0)?,
        name: from_row.try_get(1)?,
    };
    let (relay, _) = config.relay_for(&team.key, &from.address).ok_or_else(|| {
        invalid(
            "from",
            format!(
                "no SMTP relay is configured for {}: add a [relays.NAME] section (and set relay on the address if there are several)",
                from.address
            ),
        )
    })?;
    let domain = from
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();

    // To: the ticket's contacts unless the agent chose; never our own addresses.
    let to = match explicit_to {
        Some(to) => to,
        None => sqlx::query(
            "SELECT c.email, c.name FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
             WHERE tc.ticket_id = $1 AND c.email NOT IN (SELECT address FROM team_addresses)
             ORDER BY CASE tc.role WHEN 'requester' THEN 0 ELSE 1 END, c.id",
        )
        .bind(ticket.id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Recipient {
                address: r.try_get(0)?,
                name: r.try_get(1)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?,
    };
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(invalid(
            "to",
            "the ticket has no contact to answer: name the recipients",
        ));
    }

    // The message answered: the one asked for, or the latest inbound one.
    let parent = match request.in_reply_to {
        Some(id) => Some(
            sqlx::query(
                "SELECT message_id, refs, thread_index_root, synthetic_id FROM messages WHERE id = $1 AND ticket_id = $2",
            )
            .bind(id)
            .bind(ticket.id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| invalid("in_reply_to", format!("message {id} is not on ticket #{number}")))?,
        ),
        None => {
            sqlx::query(
                "SELECT message_id, refs, thread_index_root, synthetic_id FROM messages
                 WHERE ticket_id = $1 AND direction = 'inbound' ORDER BY id DESC LIMIT 1",
            )
            .bind(ticket.id)
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    let (parent_id, mut chain, thread_root) = match &parent {
        Some(row) => {
            let id: String = row.try_get(0)?;
            let refs: Vec<String> =
                serde_json::from_str(&row.try_get::<String, _>(1)?).unwrap_or_default();
            let synthetic = row.try_get::<i64, _>(3)? != 0;
            // A synthetic ID (a form, a message without one) means nothing to
            // the customer's mail client.
            (
                (!synthetic).then_some(id),
                refs,
                row.try_get::<Option<String>, _>(2)?,
            )
        }
        None => (None, Vec::new(), None),
    };
    // Over-long IDs (a hostile or broken client's) would make a header line
    // relays refuse; they are left out.
    let usable = |id: &String| id.len() <= MAX_ID_LEN;
    let parent_id = parent_id.filter(usable);
    chain.retain(usable);
    chain.extend(parent_id.clone());

    // Status: the one asked for, checked against its required properties
    // before anything is sent; otherwise the pipeline's rule for replies.
    let mut properties = ticket.properties.clone();
    for (k, v) in &request.properties {
        properties.insert(k.clone(), v.clone());
    }
    let pipeline = dir.pipelines.values().find(|p| p.id == ticket.pipeline_id);
    let explicit_status = match &request.status {
        Some(name) => Some(
            dir.statuses
                .values()
                .find(|s| s.pipeline_id == ticket.pipeline_id && &s.name == name)
                .ok_or_else(|| {
                    invalid(
                        "status",
                        format!(
                            "{name:?} is not a status of ticket #{number}'s pipeline ({})",
                            pipeline.map(|p| p.key.as_str()).unwrap_or("?")
                        ),
                    )
                })?
                .id,
        ),
        None => None,
    };
    let missing_for = |status_id: i64| {
        let required = required_properties(config, dir, status_id);
        required
            .into_iter()
            .filter(|p| {
                properties
                    .get(p)
                    .is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()))
            })
            .collect::<Vec<_>>()
    };
    if let Some(status_id) = explicit_status {
        let missing = missing_for(status_id);
        if !missing.is_empty() {
            return Err(invalid(
                "properties",
                format!(
                    "status {:?} requires {}; supply them in properties",
                    request.status.as_deref().unwrap_or_default(),
                    missing.join(", ")
                ),
            ));
        }
    }
    let automatic_status = pipeline
        .and_then(|p| p.status_after_reply)
        .filter(|s| explicit_status.is_none() && *s != ticket.status_id)
        .filter(|s| missing_for(*s).is_empty());
    let new_status = explicit_status.or(automatic_status);

    // Render.
    let rfc_id = ids::new_message_id(&dir.secret.0, ticket.id, &domain);
    let pseudo = ids::ticket_reference(&dir.secret.0, ticket.id, &domain);
    let references = ids::references(&pseudo, &chain);
    let subject = compose::reply_subject(&ticket.subject, ticket.number, team.subject_tag);
    let thread_index = ids::thread_index(
        &dir.secret.0,
        ticket.id,
        ticket.created_at,
        thread_root.as_deref(),
        now,
    );
    let thread_root_hex = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&thread_index)
            .ok()
            .map(|b| hex::encode(&b[..22]))
    };
    let html_body = html.clone().unwrap_or_else(|| compose::text_to_html(&text));
    let text_body = if text.trim().is_empty() {
        mail_parser::decoders::html::html_to_text(&html_body)
    } else {
        text.clone()
    };
    let rendered_text = format!(
        "{text_body}\n{}",
        ids::text_marker(&dir.secret.0, ticket.id)
    );
    let rendered_html = format!(
        "{html_body}\n{}",
        ids::html_marker(&dir.secret.0, ticket.id)
    );
    let thread_topic = compose::reply_subject(&ticket.subject, ticket.number, false)
        .trim_start_matches("Re: ")
        .to_string();
    let raw = compose::render(&Draft {
        from: &from,
        to: &to,
        cc: &cc,
        subject: &subject,
        message_id: &rfc_id,
        in_reply_to: parent_id.as_deref(),
        references: &references,
        thread_index: &thread_index,
        thread_topic: &thread_topic,
        text: &rendered_text,
        html: &rendered_html,
        attachments: &request.attachments,
        date_ms: now,
    })
    .map_err(|e| invalid("body", format!("cannot render the message: {e}")))?;
    let raw_sha = sha256_hex(&raw);

    // Store: blobs, message, attachments, outbox row, ticket changes, events.
    put_blob(tx, &raw_sha, &raw).await?;
    let json_list = |people: &[Recipient]| {
        serde_json::to_string(&people.iter().map(|r| &r.address).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into())
    };
    let message_row: i64 = sqlx::query(
        "INSERT INTO messages (ticket_id, team_id, direction, author_agent_id, message_id, in_reply_to, refs,
           from_addr, from_name, to_addrs, cc_addrs, bcc_addrs, subject, body_text, body_html, thread_index_root,
           fingerprint, raw_sha256, received_at, delivery_state, idempotency_key)
         VALUES ($1, $2, 'outbound', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'queued', $19)
         RETURNING id",
    )
    .bind(ticket.id)
    .bind(ticket.team_id)
    .bind(actor.agent_id())
    .bind(&rfc_id)
    .bind(serde_json::to_string(&parent_id.iter().collect::<Vec<_>>()).unwrap_or_default())
    .bind(serde_json::to_string(&references).unwrap_or_default())
    .bind(&from.address)
    .bind(from.name.clone())
    .bind(json_list(&to))
    .bind(json_list(&cc))
    .bind(json_list(&bcc))
    .bind(&subject)
    .bind(&text_body)
    .bind(Some(html_body.clone()))
    .bind(thread_root_hex)
    .bind(&raw_sha)
    .bind(&raw_sha)
    .bind(now)
    .bind(request.idempotency_key.clone())
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    for a in &request.attachments {
        let sha = sha256_hex(&a.data);
        put_blob(tx, &sha, &a.data).await?;
        sqlx::query(
            "INSERT INTO attachments (message_id, sha256, filename, content_type, size, inline)
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(message_row)
        .bind(&sha)
        .bind(&a.filename)
        .bind(&a.content_type)
        .bind(a.data.len() as i64)
        .execute(&mut **tx)
        .await?;
    }
    let mut envelope: Vec<String> = Vec::new();
    for r in to.iter().chain(&cc).chain(&bcc) {
        if !envelope.contains(&r.address) {
            envelope.push(r.address.clone());
        }
    }
    let sent_copy = config
        .teams
        .get(&team.key)
        .and_then(|t| {
            t.addresses
                .iter()
                .find(|a| a.address.eq_ignore_ascii_case(&from.address))
        })
        .and_then(|a| a.sent_copy.as_ref())
        .map(|c| {
            json!({ "channel": c.channel, "folder": c.folder, "state": "pending" }).to_string()
        });
    sqlx::query(
        "INSERT INTO outbox (message_id, ticket_id, relay, mail_from, rcpt_to, raw_sha256, next_attempt_at,
           sent_copy, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, $7)",
    )
    .bind(message_row)
    .bind(ticket.id)
    .bind(relay)
    .bind(&from.address)
    .bind(serde_json::to_string(&envelope).unwrap_or_default())
    .bind(&raw_sha)
    .bind(now)
    .bind(sent_copy)
    .execute(&mut **tx)
    .await?;

    let actor_label = actor.label();
    let mut events = vec![(
        "reply_queued",
        json!({ "message": message_row, "from": from.address, "to": json_list(&to), "relay": relay }),
    )];
    let mut owner = ticket.owner;
    if let (None, Some(agent), true) = (ticket.owner, actor.agent_id(), team.assign_on_reply) {
        owner = Some(agent);
        events.push(("assigned", json!({ "to": agent, "reason": "replied" })));
    }
    let status_id = new_status.unwrap_or(ticket.status_id);
    if status_id != ticket.status_id {
        let reason = if explicit_status.is_some() {
            "reply"
        } else {
            "status_after_reply"
        };
        events.push((
            "status_changed",
            json!({ "from": ticket.status_id, "to": status_id, "reason": reason }),
        ));
    }
    let properties_json = serde_json::to_string(&properties).unwrap_or_else(|_| "{}".into());
    sqlx::query(
        "UPDATE tickets SET owner_agent_id = $1, status_id = $2,
           status_changed_at = CASE WHEN status_id = $2 THEN status_changed_at ELSE $3 END,
           properties = $4, updated_at = $3
         WHERE id = $5",
    )
    .bind(owner)
    .bind(status_id)
    .bind(now)
    .bind(properties_json)
    .bind(ticket.id)
    .execute(&mut **tx)
    .await?;
    for (kind, data) in events {
        sqlx::query(
            "INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ticket.id)
        .bind(kind)
        .bind(data.to_string())
        .bind(&actor_label)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    // Other instances' outboxes hear of it at commit (PostgreSQL).
    store.notify(tx, super::outbox::NOTIFY_CHANNEL).await?;
    let owner_key = match owner {
        Some(id) => sqlx::query("SELECT key FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?,
        None => None,
    };
    w.commit().await?;
    Ok(Queued {
        message: message_row,
        message_id: rfc_id,
        ticket: ticket.number,
        from: from.address,
        status: dir
            .status(status_id)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        owner: owner_key,
        replayed: false,
    })
}

/// Properties a status requires, from the config (the store keeps a copy).
fn required_properties(config: &Config, dir: &Directory, status_id: i64) -> Vec<String> {
    let Some(status) = dir.status(status_id) else {
        return Vec::new();
    };
    let Some(pipeline) = dir.pipelines.values().find(|p| p.id == status.pipeline_id) else {
        return Vec::new();
    };
    config
        .pipelines
        .get(&pipeline.key)
        .and_then(|p| p.statuses.iter().find(|s| s.name == status.name))
        .map(|s| s.required_properties.clone())
        .unwrap_or_default()
}

async fn load_ticket(
    tx: &mut crate::store::Tx,
    backend: crate::store::Backend,
    number: i64,
) -> Result<Ticket, ReplyError> {
    // PostgreSQL: lock the row, so two replies at once do not each write
    // back status and properties from a stale read. (SQLite's write
    // transaction already excludes the other.)
    let lock = match backend {
        crate::store::Backend::Postgres => "FOR UPDATE",
        crate::store::Backend::Sqlite => "",
    };
    let mut number = number;
    // A merged ticket lives on in the ticket it was merged into.
    for _ in 0..16 {
        let row = sqlx::query(&format!(
            "SELECT id, number, subject, team_id, pipeline_id, status_id, owner_agent_id, properties,
                    created_at, merged_into, deleted_at
             FROM tickets WHERE number = $1 {lock}"
        ))
        .bind(number)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ReplyError::NotFound(format!("ticket #{number} does not exist")))?;
        if row.try_get::<Option<i64>, _>(10)?.is_some() {
            return Err(ReplyError::NotFound(format!(
                "ticket #{number} was deleted"
            )));
        }
        if let Some(target) = row.try_get::<Option<i64>, _>(9)? {
            number = sqlx::query("SELECT number FROM tickets WHERE id = $1")
                .bind(target)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?;
            continue;
        }
        return Ok(Ticket {
            id: row.try_get(0)?,
            number: row.try_get(1)?,
            subject: row.try_get(2)?,
            team_id: row.try_get(3)?,
            pipeline_id: row.try_get(4)?,
            status_id: row.try_get(5)?,
            owner: row.try_get(6)?,
            properties: serde_json::from_str(&row.try_get::<String, _>(7)?).unwrap_or_default(),
            created_at: row.try_get(8)?,
        });
    }
    Err(ReplyError::NotFound(format!(
        "ticket #{number} is merged in a loop"
    )))
}

pub(crate) async fn put_blob(
    tx: &mut crate::store::Tx,
    sha: &str,
    data: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
        .bind(sha)
        .bind(data.len() as i64)
        .bind(data.to_vec())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes `address` the team's default From address. Only an admin of the
/// team (or a super admin, or the operator) may.
pub async fn set_default_address(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    team_key: &str,
    address: &str,
) -> Result<(), ReplyError> {
    let team = dir
        .teams
        .get(team_key)
        .ok_or_else(|| ReplyError::NotFound(format!("team {team_key:?} does not exist")))?;
    if !actor.can_admin_team(team.id) {
        return Err(ReplyError::Forbidden(format!(
            "only an admin of team {team_key} or a super admin can change its default address"
        )));
    }
    let address = parse_recipient("address", address)?.address;
    let mut w = store.begin_write().await?;
    let known = sqlx::query(
        "SELECT 1 FROM team_addresses WHERE team_id = $1 AND address = $2 AND active = 1",
    )
    .bind(team.id)
    .bind(&address)
    .fetch_optional(&mut *w.tx)
    .await?
    .is_some();
    if !known {
        return Err(invalid(
            "address",
            format!("{address} is not a configured address of team {team_key}"),
        ));
    }
    sqlx::query("UPDATE team_addresses SET is_default = CASE WHEN address = $1 THEN 1 ELSE 0 END WHERE team_id = $2")
        .bind(&address)
        .bind(team.id)
        .execute(&mut *w.tx)
        .await?;
    w.commit().await?;
    tracing::info!(team = team_key, %address, actor = %actor.label(), "Team default address changed.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_parsed_or_refused_with_the_field_named() {
        let ok = parse_recipient("to", " Carol Customer <Carol@Customer.test> ").unwrap();
        assert_eq!(ok.address, "carol@customer.test");
        assert_eq!(ok.name.as_deref(), Some("Carol Customer"));
        let quoted = parse_recipient("cc", "\"Doe, Jane\" <jane@x.test>").unwrap();
        assert_eq!(quoted.name.as_deref(), Some("Doe, Jane"));
        for bad in [
            "",
            "nobody",
            "a@b",
            "a@.test",
            "a b@x.test",
            "a@x.test\r\nBcc: v@x.test",
            "<a@x.test",
            "ü@x.test",
            "a@@x.test",
        ] {
            match parse_recipient("to", bad) {
                Err(ReplyError::Invalid { field, .. }) => assert_eq!(field, "to"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn random_input_never_panics_the_recipient_parser() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet: Vec<char> = "ab@.<> \"\\,;:\r\n\0é\u{1F600}x".chars().collect();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..40);
            let input: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            if let Ok(r) = parse_recipient("to", &input) {
                assert!(
                    !r.address.contains(['\r', '\n', '\0', '<', '>', ' ']),
                    "{input:?}"
                );
            }
        }
    }
}
