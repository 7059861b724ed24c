//! The only pipeline step that writes: turns a parsed message into a ticket or
//! a message on an existing ticket, inside the caller's transaction. Its
//! receipt is written in the same transaction, so a message is either fully
//! applied and recorded, or not at all.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;
use sqlx::{AnyConnection, Row};

use super::parse::ParsedMessage;
use super::thread::thread_keys;
use crate::config::{FollowUp, StatusKind};
use crate::store::directory::{ChannelInfo, PipelineInfo};
use crate::store::Directory;

/// A message ready to apply, with the raw bytes kept as the original.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub parsed: ParsedMessage,
    pub raw: std::sync::Arc<Vec<u8>>,
    /// Where the message came from (file path, IMAP UID …), for the receipt.
    pub source: Option<String>,
}

/// What applying a message did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A new ticket; `follow_up_of` when it follows up a closed ticket.
    Created {
        ticket_id: i64,
        number: i64,
        follow_up_of: Option<i64>,
    },
    /// Added to an existing ticket; `reopened` when that moved it back to open.
    Appended {
        ticket_id: i64,
        number: i64,
        reopened: bool,
    },
    /// Seen before: nothing changed.
    Duplicate { ticket_id: Option<i64> },
    /// Stored without a ticket (the channel does not create tickets).
    Recorded,
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Created { .. } => "created",
            Outcome::Appended { .. } => "appended",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Recorded => "recorded",
        }
    }
    pub fn ticket_id(&self) -> Option<i64> {
        match self {
            Outcome::Created { ticket_id, .. } | Outcome::Appended { ticket_id, .. } => {
                Some(*ticket_id)
            }
            Outcome::Duplicate { ticket_id } => *ticket_id,
            Outcome::Recorded => None,
        }
    }
}

struct TicketRow {
    id: i64,
    number: i64,
    pipeline_id: i64,
    status_id: i64,
    status_changed_at: i64,
}

async fn load_ticket(
    conn: &mut AnyConnection,
    mut id: i64,
) -> Result<Option<TicketRow>, sqlx::Error> {
    // Merged tickets resolve to the surviving ticket; the hop limit guards
    // against a cycle written by hand.
    for _ in 0..16 {
        let Some(row) = sqlx::query(
            "SELECT id, number, pipeline_id, status_id, status_changed_at, merged_into, deleted_at
             FROM tickets WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(None);
        };
        if let Some(target) = row.try_get::<Option<i64>, _>(5)? {
            id = target;
            continue;
        }
        if row.try_get::<Option<i64>, _>(6)?.is_some() {
            return Ok(None);
        }
        return Ok(Some(TicketRow {
            id: row.try_get(0)?,
            number: row.try_get(1)?,
            pipeline_id: row.try_get(2)?,
            status_id: row.try_get(3)?,
            status_changed_at: row.try_get(4)?,
        }));
    }
    Ok(None)
}

/// Finds the ticket this message continues, per the rules in `thread.rs`.
/// Returns `Err(Duplicate)` via `Ok(Found::Echo)` when the message is one we sent.
async fn find_ticket(
    conn: &mut AnyConnection,
    team_id: i64,
    message: &ParsedMessage,
) -> Result<Found, sqlx::Error> {
    let keys = thread_keys(message);
    if !keys.message_ids.is_empty() {
        let placeholders: Vec<String> = (0..keys.message_ids.len())
            .map(|i| format!("${}", i + 2))
            .collect();
        let sql = format!(
            "SELECT message_id, ticket_id, direction FROM messages
             WHERE team_id = $1 AND ticket_id IS NOT NULL AND message_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(team_id);
        for id in &keys.message_ids {
            query = query.bind(id);
        }
        let mut known: HashMap<String, (i64, String)> = HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            known
                .entry(row.try_get(0)?)
                .or_insert((row.try_get(1)?, row.try_get(2)?));
        }
        if let Some((ticket_id, direction)) = known.get(&message.message_id) {
            if direction == "outbound" && !message.synthetic_id {
                return Ok(Found::Echo(*ticket_id));
            }
        }
        for id in &keys.message_ids {
            if let Some((ticket_id, _)) = known.get(id) {
                if let Some(ticket) = load_ticket(conn, *ticket_id).await? {
                    return Ok(Found::Ticket(ticket));
                }
            }
        }
    }
    let Some(sender) = message.from.as_ref().map(|m| m.address.as_str()) else {
        return Ok(Found::None);
    };
    if let Some(number) = keys.subject_tag {
        let row = sqlx::query(
            "SELECT t.id FROM tickets t
             JOIN ticket_contacts tc ON tc.ticket_id = t.id
             JOIN contacts c ON c.id = tc.contact_id
             WHERE t.number = $1 AND t.team_id = $2 AND c.email = $3",
        )
        .bind(number)
        .bind(team_id)
        .bind(sender)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            if let Some(ticket) = load_ticket(conn, row.try_get(0)?).await? {
                return Ok(Found::Ticket(ticket));
            }
        }
    }
    if let Some(root) = &keys.thread_index_root {
        let row = sqlx::query(
            "SELECT ticket_id FROM messages
             WHERE team_id = $1 AND thread_index_root = $2 AND from_addr = $3 AND ticket_id IS NOT NULL
             ORDER BY id DESC LIMIT 1",
        )
        .bind(team_id)
        .bind(root)
        .bind(sender)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            if let Some(ticket) = load_ticket(conn, row.try_get(0)?).await? {
                return Ok(Found::Ticket(ticket));
            }
        }
    }
    Ok(Found::None)
}

enum Found {
    Ticket(TicketRow),
    /// Our own outbound message came back in (a Bcc to the team mailbox).
    Echo(i64),
    None,
}

/// Finds or creates the contact for an address; `None` for a message without sender.
async fn contact_id(
    conn: &mut AnyConnection,
    message: &ParsedMessage,
    now: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let Some(from) = &message.from else {
        return Ok(None);
    };
    if let Some(row) = sqlx::query("SELECT id FROM contacts WHERE email = $1")
        .bind(&from.address)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(Some(row.try_get(0)?));
    }
    let domain = from
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let company_id: Option<i64> = match sqlx::query("SELECT id FROM companies WHERE domain = $1")
        .bind(domain)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO contacts (email, name, company_id, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(&from.address)
    .bind(from.name.clone())
    .bind(company_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(row) => Ok(Some(row.try_get(0)?)),
        // Another writer created it between our look-up and insert.
        None => Ok(Some(
            sqlx::query("SELECT id FROM contacts WHERE email = $1")
                .bind(&from.address)
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?,
        )),
    }
}

async fn event(
    conn: &mut AnyConnection,
    ticket_id: i64,
    kind: &str,
    data: serde_json::Value,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(ticket_id)
        .bind(kind)
        .bind(data.to_string())
        .bind("mailroom")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn create_ticket(
    conn: &mut AnyConnection,
    channel: &ChannelInfo,
    pipeline: &PipelineInfo,
    message: &ParsedMessage,
    contact: Option<i64>,
    follow_up_of: Option<i64>,
    now: i64,
) -> Result<(i64, i64), sqlx::Error> {
    let number: i64 = sqlx::query(
        "UPDATE counters SET value = value + 1 WHERE name = 'ticket_number' RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    let subject = if message.subject.is_empty() {
        "(no subject)".to_string()
    } else {
        message.subject.clone()
    };
    let company_id: Option<i64> = match contact {
        Some(contact) => sqlx::query("SELECT company_id FROM contacts WHERE id = $1")
            .bind(contact)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?,
        None => None,
    };
    let ticket_id: i64 = sqlx::query(
        "INSERT INTO tickets (number, subject, team_id, pipeline_id, status_id, channel_id, company_id,
           follow_up_of, reply_token, created_at, updated_at, status_changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10) RETURNING id",
    )
    .bind(number)
    .bind(subject)
    .bind(channel.team_id)
    .bind(pipeline.id)
    .bind(pipeline.default_status)
    .bind(channel.id)
    .bind(company_id)
    .bind(follow_up_of)
    .bind(hex::encode(rand::random::<[u8; 16]>()))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    if let Some(contact) = contact {
        sqlx::query("INSERT INTO ticket_contacts (ticket_id, contact_id, role) VALUES ($1, $2, 'requester')")
            .bind(ticket_id)
            .bind(contact)
            .execute(&mut *conn)
            .await?;
    }
    event(
        conn,
        ticket_id,
        "created",
        json!({ "channel": channel.key, "follow_up_of": follow_up_of }),
        now,
    )
    .await?;
    Ok((ticket_id, number))
}

async fn put_blob(conn: &mut AnyConnection, sha256: &str, data: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
        .bind(sha256)
        .bind(data.len() as i64)
        .bind(data.to_vec())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_message(
    conn: &mut AnyConnection,
    ticket_id: Option<i64>,
    channel: &ChannelInfo,
    inbound: &Inbound,
    contact: Option<i64>,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let m = &inbound.parsed;
    put_blob(conn, &m.raw_sha256, &inbound.raw).await?;
    let list =
        |v: &[super::parse::Mailbox]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let (from_addr, from_name) = match &m.from {
        Some(f) => (f.address.clone(), f.name.clone()),
        None => (String::new(), None),
    };
    let id: i64 = sqlx::query(
        "INSERT INTO messages (ticket_id, team_id, channel_id, direction, author_contact_id, message_id,
           synthetic_id, in_reply_to, refs, from_addr, from_name, to_addrs, cc_addrs, reply_to, subject,
           body_text, body_html, flags, thread_index_root, fingerprint, raw_sha256, sent_at, received_at)
         VALUES ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
           $19, $20, $21, $22)
         RETURNING id",
    )
    .bind(ticket_id)
    .bind(channel.team_id)
    .bind(channel.id)
    .bind(contact)
    .bind(&m.message_id)
    .bind(m.synthetic_id as i64)
    .bind(serde_json::to_string(&m.in_reply_to).unwrap_or_default())
    .bind(serde_json::to_string(&m.references).unwrap_or_default())
    .bind(from_addr)
    .bind(from_name)
    .bind(list(&m.to))
    .bind(list(&m.cc))
    .bind(m.reply_to.as_ref().map(|r| r.address.clone()))
    .bind(&m.subject)
    .bind(&m.body_text)
    .bind(m.body_html.clone())
    .bind(m.flags.to_db())
    .bind(m.thread_index_root.clone())
    .bind(&m.fingerprint)
    .bind(&m.raw_sha256)
    .bind(m.date)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    for attachment in &m.attachments {
        put_blob(conn, &attachment.sha256, &attachment.data).await?;
        sqlx::query(
            "INSERT INTO attachments (message_id, sha256, filename, content_type, size, content_id, inline)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&attachment.sha256)
        .bind(&attachment.filename)
        .bind(&attachment.content_type)
        .bind(attachment.data.len() as i64)
        .bind(attachment.content_id.clone())
        .bind(attachment.inline as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(id)
}

async fn write_receipt(
    conn: &mut AnyConnection,
    channel: &ChannelInfo,
    inbound: &Inbound,
    outcome: &Outcome,
    message_row: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO receipts (team_id, fingerprint, channel_id, source, outcome, ticket_id, message_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(channel.team_id)
    .bind(&inbound.parsed.fingerprint)
    .bind(channel.id)
    .bind(inbound.source.clone())
    .bind(outcome.name())
    .bind(outcome.ticket_id())
    .bind(message_row)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies one message. The caller owns the transaction and commits it.
pub async fn apply(
    conn: &mut AnyConnection,
    dir: &Directory,
    channel: &ChannelInfo,
    inbound: &Inbound,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    let message = &inbound.parsed;

    // Exactly once: the same message (per team) is recorded only once.
    if let Some(row) =
        sqlx::query("SELECT ticket_id FROM receipts WHERE team_id = $1 AND fingerprint = $2")
            .bind(channel.team_id)
            .bind(&message.fingerprint)
            .fetch_optional(&mut *conn)
            .await?
    {
        return Ok(Outcome::Duplicate {
            ticket_id: row.try_get(0)?,
        });
    }

    let found = find_ticket(conn, channel.team_id, message).await?;
    if let Found::Echo(ticket_id) = found {
        let outcome = Outcome::Duplicate {
            ticket_id: Some(ticket_id),
        };
        write_receipt(conn, channel, inbound, &outcome, None, now).await?;
        return Ok(outcome);
    }
    let contact = contact_id(conn, message, now).await?;
    let automatic = message.flags.is_automatic();
    let channel_pipeline = dir.pipeline_of(channel);

    let (outcome, message_row) = match found {
        Found::Ticket(ticket) => {
            let pipeline = dir
                .pipelines
                .values()
                .find(|p| p.id == ticket.pipeline_id)
                .unwrap_or(channel_pipeline);
            let status_kind = dir
                .status(ticket.status_id)
                .map(|s| s.kind)
                .unwrap_or(StatusKind::Open);
            let closed_days = (now - ticket.status_changed_at) / 86_400_000;
            let start_new = status_kind == StatusKind::Closed
                && !automatic
                && pipeline.follow_up == FollowUp::NewTicket
                && pipeline
                    .new_ticket_after_days
                    .is_none_or(|days| closed_days >= i64::from(days));
            if start_new {
                let (ticket_id, number) = create_ticket(
                    conn,
                    channel,
                    pipeline,
                    message,
                    contact,
                    Some(ticket.id),
                    now,
                )
                .await?;
                event(
                    conn,
                    ticket.id,
                    "follow_up_created",
                    json!({ "ticket_id": ticket_id, "number": number }),
                    now,
                )
                .await?;
                let row =
                    insert_message(conn, Some(ticket_id), channel, inbound, contact, now).await?;
                (
                    Outcome::Created {
                        ticket_id,
                        number,
                        follow_up_of: Some(ticket.id),
                    },
                    row,
                )
            } else {
                let row =
                    insert_message(conn, Some(ticket.id), channel, inbound, contact, now).await?;
                let reopened = status_kind != StatusKind::Open && !automatic;
                if reopened {
                    sqlx::query(
                        "UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $2 WHERE id = $3",
                    )
                    .bind(pipeline.reopen_status)
                    .bind(now)
                    .bind(ticket.id)
                    .execute(&mut *conn)
                    .await?;
                    event(
                        conn,
                        ticket.id,
                        "status_changed",
                        json!({ "from": ticket.status_id, "to": pipeline.reopen_status, "reason": "customer_reply" }),
                        now,
                    )
                    .await?;
                } else {
                    sqlx::query("UPDATE tickets SET updated_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(ticket.id)
                        .execute(&mut *conn)
                        .await?;
                }
                if let Some(contact) = contact {
                    sqlx::query(
                        "INSERT INTO ticket_contacts (ticket_id, contact_id, role) VALUES ($1, $2, 'participant')
                         ON CONFLICT (ticket_id, contact_id) DO NOTHING",
                    )
                    .bind(ticket.id)
                    .bind(contact)
                    .execute(&mut *conn)
                    .await?;
                }
                (
                    Outcome::Appended {
                        ticket_id: ticket.id,
                        number: ticket.number,
                        reopened,
                    },
                    row,
                )
            }
        }
        Found::None if channel.create_tickets => {
            let (ticket_id, number) =
                create_ticket(conn, channel, channel_pipeline, message, contact, None, now).await?;
            let row = insert_message(conn, Some(ticket_id), channel, inbound, contact, now).await?;
            (
                Outcome::Created {
                    ticket_id,
                    number,
                    follow_up_of: None,
                },
                row,
            )
        }
        Found::None => {
            let row = insert_message(conn, None, channel, inbound, contact, now).await?;
            (Outcome::Recorded, row)
        }
        Found::Echo(_) => unreachable!("handled above"),
    };

    if let Some(ticket_id) = outcome.ticket_id() {
        event(
            conn,
            ticket_id,
            "message_received",
            json!({ "message": message_row, "channel": channel.key, "flags": message.flags.names() }),
            now,
        )
        .await?;
    }
    if message.flags.bounce && !message.flags.bounced_message_ids.is_empty() {
        mark_bounced(conn, channel.team_id, &message.flags.bounced_message_ids).await?;
    }
    write_receipt(conn, channel, inbound, &outcome, Some(message_row), now).await?;
    Ok(outcome)
}

/// A bounce marks the outbound message it reports on as failed.
async fn mark_bounced(
    conn: &mut AnyConnection,
    team_id: i64,
    ids: &[String],
) -> Result<(), sqlx::Error> {
    let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "UPDATE messages SET delivery_state = 'bounced'
         WHERE team_id = $1 AND direction = 'outbound' AND message_id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(team_id);
    for id in ids {
        query = query.bind(id);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}
