//! Messages as read back: on a ticket (`mailroom ticket show`, the export)
//! and one at a time with its delivery state (the API). Address lists are
//! read through the one stored form (`mail::address`), whichever writer
//! wrote them.

use std::collections::HashMap;

use serde::Serialize;

use super::{blobs, Store};
use crate::mail::address::list_from_json;
use crate::mail::quote::new_part;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MessageView {
    pub id: i64,
    pub message_id: String,
    pub direction: String,
    pub from: String,
    pub from_name: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub received_at: i64,
    pub sent_at: Option<i64>,
    pub flags: Vec<String>,
    pub attachments: Vec<String>,
    pub body_text: String,
    /// What the sender wrote this time: `body_text` without the quoted
    /// history and the signature (`mail::quote`) for inbound mail, the
    /// whole text otherwise. The message itself stays whole.
    pub new_text: String,
    pub has_html: bool,
    /// Outbound messages: `queued`, `sent` or `failed`, and the relay's
    /// answer or the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_detail: Option<String>,
}

/// What [`Store::message_original`] found.
pub enum Original {
    Bytes(Vec<u8>),
    /// The message is there, but no original was stored with it.
    NotKept,
    /// No such message, or not the caller's to see.
    NoSuchMessage,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: i64,
    message_id: String,
    direction: String,
    from_addr: String,
    from_name: Option<String>,
    to_addrs: String,
    cc_addrs: String,
    subject: String,
    received_at: i64,
    sent_at: Option<i64>,
    flags: String,
    body_text: String,
    body_html: Option<String>,
    delivery_state: Option<String>,
    delivery_detail: Option<String>,
}

/// The addresses of a stored address list.
fn addresses(json: &str) -> Vec<String> {
    list_from_json(json)
        .into_iter()
        .map(|m| m.address)
        .collect()
}

impl MessageRow {
    fn view(self, attachments: Vec<String>) -> MessageView {
        let new_text = match self.direction.as_str() {
            "inbound" => new_part(&self.body_text),
            _ => self.body_text.clone(),
        };
        MessageView {
            id: self.id,
            message_id: self.message_id,
            direction: self.direction,
            from: self.from_addr,
            from_name: self.from_name,
            to: addresses(&self.to_addrs),
            cc: addresses(&self.cc_addrs),
            subject: self.subject,
            received_at: self.received_at,
            sent_at: self.sent_at,
            flags: self
                .flags
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect(),
            attachments,
            new_text,
            body_text: self.body_text,
            has_html: self.body_html.is_some(),
            delivery_state: self.delivery_state,
            delivery_detail: self.delivery_detail,
        }
    }
}

/// One message with its delivery state, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryView {
    pub message: i64,
    pub ticket: i64,
    #[serde(skip)]
    pub team_id: i64,
    pub direction: String,
    pub message_id: String,
    pub from: String,
    #[sqlx(rename = "to_addrs")]
    #[serde(skip)]
    pub to_json: String,
    #[sqlx(skip)]
    pub to: Vec<String>,
    pub subject: String,
    pub delivery_state: Option<String>,
    pub delivery_detail: Option<String>,
    pub sent_at: Option<i64>,
    pub attempts: Option<i64>,
}

impl Store {
    /// The messages of a ticket, oldest first, with their attachments' names.
    pub async fn ticket_messages(&self, ticket_id: i64) -> Result<Vec<MessageView>, sqlx::Error> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT id, message_id, direction, from_addr, from_name, to_addrs, cc_addrs, subject, received_at,
               sent_at, flags, body_text, body_html, delivery_state, delivery_detail
             FROM messages WHERE ticket_id = $1 ORDER BY id",
        )
        .bind(ticket_id)
        .fetch_all(self.pool())
        .await?;
        let files: Vec<(i64, String)> = sqlx::query_as(
            "SELECT a.message_id, a.filename FROM attachments a JOIN messages m ON m.id = a.message_id
             WHERE m.ticket_id = $1 ORDER BY a.id",
        )
        .bind(ticket_id)
        .fetch_all(self.pool())
        .await?;
        let mut by_message: HashMap<i64, Vec<String>> = HashMap::new();
        for (message, filename) in files {
            by_message.entry(message).or_default().push(filename);
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let files = by_message.remove(&row.id).unwrap_or_default();
                row.view(files)
            })
            .collect())
    }

    /// The exact bytes of message `id` as received (or as sent), read only
    /// when `allowed` says the team of its ticket (moved or merged since,
    /// perhaps; the message's own team when it has none) may be seen.
    pub async fn message_original(
        &self,
        id: i64,
        allowed: impl Fn(i64) -> bool,
    ) -> Result<Original, sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        let found: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT COALESCE(t.team_id, m.team_id), m.raw_sha256
               FROM messages m LEFT JOIN tickets t ON t.id = m.ticket_id
              WHERE m.id = $1 AND t.deleted_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(match found {
            Some((team, Some(sha))) if allowed(team) => {
                Original::Bytes(blobs::get(&mut conn, &sha).await?)
            }
            Some((team, None)) if allowed(team) => Original::NotKept,
            _ => Original::NoSuchMessage,
        })
    }

    /// A message on a ticket with its delivery state and send attempts.
    pub async fn message_delivery(&self, id: i64) -> Result<Option<DeliveryView>, sqlx::Error> {
        let view: Option<DeliveryView> = sqlx::query_as(
            "SELECT m.id AS message, t.number AS ticket, m.team_id, m.direction, m.message_id,
                    m.from_addr AS \"from\", m.to_addrs, m.subject, m.delivery_state, m.delivery_detail,
                    m.sent_at, o.attempts
             FROM messages m JOIN tickets t ON t.id = m.ticket_id
             LEFT JOIN outbox o ON o.message_id = m.id WHERE m.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(view.map(|mut v| {
            v.to = addresses(&v.to_json);
            v
        }))
    }
}
