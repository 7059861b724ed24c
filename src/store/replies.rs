//! Agents' replies: what a reply needs to know about its ticket (read in the
//! reply's own write transaction, the ticket row locked on PostgreSQL), and
//! writing the reply with its outbox row, attachments, ticket changes and
//! events in that same transaction.

use std::collections::BTreeMap;

use serde_json::Value;

use super::inbound::{follow_merges, Merged, Snapshot};
use super::outbox::{SentCopyState, NOTIFY_CHANNEL};
use super::{blobs, events, Backend, Store, Tx};
use crate::crypto::sha256_hex;
use crate::mail::address::list_to_json;
use crate::mail::Mailbox;

/// The ticket a reply answers.
#[derive(Debug, Clone, Default)]
pub struct ReplyTicket {
    pub id: i64,
    pub number: i64,
    pub subject: String,
    pub team_id: i64,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub owner: Option<i64>,
    pub properties: BTreeMap<String, Value>,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct TicketRow {
    id: i64,
    number: i64,
    subject: String,
    team_id: i64,
    pipeline_id: i64,
    status_id: i64,
    owner_agent_id: Option<i64>,
    properties: String,
    created_at: i64,
    merged_into: Option<i64>,
    deleted_at: Option<i64>,
}

/// Why the ticket cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketMissing {
    NotFound(i64),
    /// The deleted ticket's number and team.
    Deleted {
        number: i64,
        team_id: i64,
    },
    MergeLoop(i64),
}

/// The message a reply answers: its ID and chain, for threading headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parent {
    pub message_id: String,
    pub references: Vec<String>,
    pub thread_index_root: Option<String>,
    /// An ID we made up (a form's, a message without one).
    pub synthetic: bool,
}

#[derive(sqlx::FromRow)]
struct ParentRow {
    message_id: String,
    refs: String,
    thread_index_root: Option<String>,
    synthetic_id: i64,
}

/// An earlier reply made under the same Idempotency-Key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EarlierReply {
    pub id: i64,
    pub message_id: String,
    pub from_addr: String,
}

/// A rendered reply and everything written with it.
pub struct NewReply<'a> {
    pub ticket: &'a ReplyTicket,
    pub author: Option<i64>,
    pub actor: &'a str,
    pub message_id: &'a str,
    pub in_reply_to: Option<&'a str>,
    pub references: &'a [String],
    pub from: &'a Mailbox,
    pub to: &'a [Mailbox],
    pub cc: &'a [Mailbox],
    pub bcc: &'a [Mailbox],
    pub subject: &'a str,
    pub body_text: &'a str,
    pub body_html: &'a str,
    pub thread_index_root: Option<String>,
    pub raw: &'a [u8],
    /// (filename, content type, contents).
    pub attachments: Vec<(&'a str, &'a str, &'a [u8])>,
    pub relay: &'a str,
    /// SMTP recipients: To, Cc and Bcc, each once.
    pub envelope: &'a [String],
    pub sent_copy: Option<SentCopyState>,
    pub idempotency_key: Option<&'a str>,
    pub owner: Option<i64>,
    pub status_id: i64,
    pub properties: &'a BTreeMap<String, Value>,
    /// (kind, data) for the ticket's timeline.
    pub events: &'a [(&'static str, Value)],
    pub now: i64,
}

impl Store {
    /// The ticket `number` answers as, following merges to the surviving
    /// ticket; locked for the transaction on PostgreSQL, so two replies at
    /// once do not each write back status and properties from a stale read
    /// (SQLite's write transaction already excludes the other).
    pub async fn reply_ticket(
        &self,
        tx: &mut Tx,
        number: i64,
    ) -> Result<Result<ReplyTicket, TicketMissing>, sqlx::Error> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM tickets WHERE number = $1")
            .bind(number)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(mut id) = id else {
            return Ok(Err(TicketMissing::NotFound(number)));
        };
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE",
            Backend::Sqlite => "",
        };
        // Resolve the merges, lock the survivor, and resolve again should a
        // merge or delete have landed before the lock was granted.
        for _ in 0..3 {
            let mut known = Snapshot::default();
            known.load_tickets(tx, self.backend(), [id]).await?;
            let live = match follow_merges(&known.tickets, id) {
                Merged::Live(ticket) => ticket.id,
                Merged::Deleted(ticket) => {
                    return Ok(Err(TicketMissing::Deleted {
                        number: ticket.number,
                        team_id: ticket.team_id,
                    }))
                }
                Merged::Missing(_) => return Ok(Err(TicketMissing::NotFound(number))),
                Merged::Loop => return Ok(Err(TicketMissing::MergeLoop(number))),
            };
            let row: TicketRow = sqlx::query_as(&format!(
                "SELECT id, number, subject, team_id, pipeline_id, status_id, owner_agent_id, properties,
                        created_at, merged_into, deleted_at FROM tickets WHERE id = $1 {lock}"
            ))
            .bind(live)
            .fetch_one(&mut **tx)
            .await?;
            if row.merged_into.is_some() || row.deleted_at.is_some() {
                id = row.id;
                continue;
            }
            return Ok(Ok(ReplyTicket {
                id: row.id,
                number: row.number,
                subject: row.subject,
                team_id: row.team_id,
                pipeline_id: row.pipeline_id,
                status_id: row.status_id,
                owner: row.owner_agent_id,
                properties: serde_json::from_str(&row.properties).unwrap_or_default(),
                created_at: row.created_at,
            }));
        }
        Ok(Err(TicketMissing::MergeLoop(number)))
    }

    /// The reply already made on this ticket under this Idempotency-Key.
    pub async fn earlier_reply(
        &self,
        tx: &mut Tx,
        ticket: i64,
        key: &str,
    ) -> Result<Option<EarlierReply>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, message_id, from_addr FROM messages WHERE ticket_id = $1 AND idempotency_key = $2",
        )
        .bind(ticket)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
    }

    /// The active team address `address`, or (None) the team's default one.
    pub async fn team_address(
        &self,
        tx: &mut Tx,
        team: i64,
        address: Option<&str>,
    ) -> Result<Option<Mailbox>, sqlx::Error> {
        let row: Option<(String, Option<String>)> = match address {
            Some(address) => sqlx::query_as(
                "SELECT address, name FROM team_addresses WHERE address = $1 AND team_id = $2 AND active = 1",
            )
            .bind(address)
            .bind(team)
            .fetch_optional(&mut **tx)
            .await?,
            None => sqlx::query_as(
                "SELECT address, name FROM team_addresses WHERE team_id = $1 AND is_default = 1 AND active = 1",
            )
            .bind(team)
            .fetch_optional(&mut **tx)
            .await?,
        };
        Ok(row.map(|(address, name)| Mailbox { address, name }))
    }

    /// The ticket's contacts, requester first, without our own addresses.
    pub async fn reply_recipients(
        &self,
        tx: &mut Tx,
        ticket: i64,
    ) -> Result<Vec<Mailbox>, sqlx::Error> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT c.email, c.name FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
             WHERE tc.ticket_id = $1 AND c.email NOT IN (SELECT address FROM team_addresses)
             ORDER BY CASE tc.role WHEN 'requester' THEN 0 ELSE 1 END, c.id",
        )
        .bind(ticket)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(address, name)| Mailbox { address, name })
            .collect())
    }

    /// The message answered: `message` (if it is on the ticket), or by
    /// default the latest inbound one a customer wrote (not an agent's mail).
    pub async fn reply_parent(
        &self,
        tx: &mut Tx,
        ticket: i64,
        message: Option<i64>,
    ) -> Result<Option<Parent>, sqlx::Error> {
        let row: Option<ParentRow> = match message {
            Some(id) => sqlx::query_as(
                "SELECT message_id, refs, thread_index_root, synthetic_id FROM messages WHERE id = $1 AND ticket_id = $2",
            )
            .bind(id)
            .bind(ticket)
            .fetch_optional(&mut **tx)
            .await?,
            None => sqlx::query_as(
                "SELECT message_id, refs, thread_index_root, synthetic_id FROM messages
                 WHERE ticket_id = $1 AND direction = 'inbound' AND author_agent_id IS NULL
                   AND flags NOT LIKE '%agent_mail%' AND flags NOT LIKE '%unverified%'
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(ticket)
            .fetch_optional(&mut **tx)
            .await?,
        };
        Ok(row.map(|r| Parent {
            message_id: r.message_id,
            references: serde_json::from_str(&r.refs).unwrap_or_default(),
            thread_index_root: r.thread_index_root,
            synthetic: r.synthetic_id != 0,
        }))
    }

    /// Writes the reply: its MIME and attachments (blobs), the message, the
    /// outbox row, the ticket's owner, status and properties, and the
    /// events; other instances' outboxes hear of it at commit (PostgreSQL).
    /// Returns the message's row id.
    pub async fn insert_reply(
        &self,
        tx: &mut Tx,
        reply: &NewReply<'_>,
    ) -> Result<i64, sqlx::Error> {
        let raw_sha = sha256_hex(reply.raw);
        blobs::put(tx, &raw_sha, reply.raw).await?;
        let message = insert_reply_message(tx, reply, &raw_sha).await?;
        for (filename, content_type, data) in &reply.attachments {
            let sha = sha256_hex(data);
            blobs::put(tx, &sha, data).await?;
            sqlx::query(
                "INSERT INTO attachments (message_id, sha256, filename, content_type, size, inline)
                 VALUES ($1, $2, $3, $4, $5, 0)",
            )
            .bind(message)
            .bind(&sha)
            .bind(*filename)
            .bind(*content_type)
            .bind(data.len() as i64)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO outbox (message_id, ticket_id, relay, mail_from, rcpt_to, raw_sha256, next_attempt_at,
               sent_copy, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, $7)",
        )
        .bind(message)
        .bind(reply.ticket.id)
        .bind(reply.relay)
        .bind(&reply.from.address)
        .bind(serde_json::to_string(reply.envelope).unwrap_or_default())
        .bind(&raw_sha)
        .bind(reply.now)
        .bind(reply.sent_copy.as_ref().and_then(|c| serde_json::to_string(c).ok()))
        .execute(&mut **tx)
        .await?;
        update_replied_ticket(tx, reply).await?;
        for (kind, data) in reply.events {
            let mut data = data.clone();
            if kind == &"reply_queued" {
                data["message"] = Value::from(message);
            }
            events::insert(tx, reply.ticket.id, kind, &data, reply.actor, reply.now).await?;
        }
        // The reply is what the agent drafted: the draft has served.
        if let Some(agent) = reply.author {
            self.delete_draft(tx, reply.ticket.id, agent).await?;
        }
        self.notify(tx, NOTIFY_CHANNEL).await?;
        Ok(message)
    }

    /// The config key of agent `id`.
    pub async fn agent_key(&self, tx: &mut Tx, id: i64) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT key FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
    }

    /// Makes `address` (an active address of `team`) the team's default
    /// From address; false when it is not one.
    pub async fn set_default_address(&self, team: i64, address: &str) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let known: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM team_addresses WHERE team_id = $1 AND address = $2 AND active = 1",
        )
        .bind(team)
        .bind(address)
        .fetch_optional(&mut *w.tx)
        .await?;
        if known.is_none() {
            return Ok(false);
        }
        sqlx::query("UPDATE team_addresses SET is_default = CASE WHEN address = $1 THEN 1 ELSE 0 END WHERE team_id = $2")
            .bind(address)
            .bind(team)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(true)
    }
}

async fn insert_reply_message(
    tx: &mut Tx,
    reply: &NewReply<'_>,
    raw_sha: &str,
) -> Result<i64, sqlx::Error> {
    let in_reply_to: Vec<&str> = reply.in_reply_to.into_iter().collect();
    sqlx::query_scalar(
        "INSERT INTO messages (ticket_id, team_id, direction, author_agent_id, message_id, in_reply_to, refs,
           from_addr, from_name, to_addrs, cc_addrs, bcc_addrs, subject, body_text, body_html, thread_index_root,
           fingerprint, raw_sha256, received_at, delivery_state, idempotency_key)
         VALUES ($1, $2, 'outbound', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'queued', $19)
         RETURNING id",
    )
    .bind(reply.ticket.id)
    .bind(reply.ticket.team_id)
    .bind(reply.author)
    .bind(reply.message_id)
    .bind(serde_json::to_string(&in_reply_to).unwrap_or_default())
    .bind(serde_json::to_string(reply.references).unwrap_or_default())
    .bind(&reply.from.address)
    .bind(reply.from.name.clone())
    .bind(list_to_json(reply.to))
    .bind(list_to_json(reply.cc))
    .bind(list_to_json(reply.bcc))
    .bind(reply.subject)
    .bind(reply.body_text)
    .bind(Some(reply.body_html))
    .bind(reply.thread_index_root.clone())
    .bind(raw_sha)
    .bind(raw_sha)
    .bind(reply.now)
    .bind(reply.idempotency_key)
    .fetch_one(&mut **tx)
    .await
}

async fn update_replied_ticket(tx: &mut Tx, reply: &NewReply<'_>) -> Result<(), sqlx::Error> {
    let properties = serde_json::to_string(reply.properties).unwrap_or_else(|_| "{}".into());
    sqlx::query(
        "UPDATE tickets SET owner_agent_id = $1, status_id = $2,
           status_changed_at = CASE WHEN status_id = $2 THEN status_changed_at ELSE $3 END,
           properties = $4, updated_at = $3
         WHERE id = $5",
    )
    .bind(reply.owner)
    .bind(reply.status_id)
    .bind(reply.now)
    .bind(properties)
    .bind(reply.ticket.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Makes `person` a participant of `ticket` (creating the contact if
    /// needed), so default replies go to them too; a ticket without a
    /// company takes theirs. False when they already were one.
    pub async fn add_participant(
        &self,
        tx: &mut Tx,
        ticket: i64,
        person: &Mailbox,
        actor: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let contact = self.contact_for(tx, person, now).await?;
        let added = sqlx::query(
            "INSERT INTO ticket_contacts (ticket_id, contact_id, role) VALUES ($1, $2, 'participant')
             ON CONFLICT (ticket_id, contact_id) DO NOTHING",
        )
        .bind(ticket)
        .bind(contact)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if added {
            sqlx::query(
                "UPDATE tickets SET company_id = (SELECT company_id FROM contacts WHERE id = $1)
                 WHERE id = $2 AND company_id IS NULL",
            )
            .bind(contact)
            .bind(ticket)
            .execute(&mut **tx)
            .await?;
            let data = serde_json::json!({ "address": person.address });
            super::events::insert(tx, ticket, "participant_added", &data, actor, now).await?;
        }
        Ok(added)
    }
}
