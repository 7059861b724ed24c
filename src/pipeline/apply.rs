//! The only pipeline step that writes: turns parsed messages into tickets or
//! messages on existing tickets, inside the caller's transaction. Receipts are
//! written in the same transaction, so a message is either fully applied and
//! recorded, or not at all.
//!
//! Messages are applied a batch at a time. Look-ups the batch needs
//! (receipts, known Message-IDs, tickets, contacts) are fetched in one query
//! each, decisions are made in order in memory (a reply later in the batch
//! sees a ticket created earlier in it), and rows that nothing in the batch
//! reads back (blobs, events, receipts, attachments, participants) are
//! written with multi-row inserts at the end. A batch of one is the same code.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Arguments, Row};

use super::parse::{Attachment, Mailbox, ParsedMessage};
use super::thread::thread_keys;
use crate::config::{FollowUp, StatusKind};
use crate::outbound::ids;
use crate::store::directory::ChannelInfo;
use crate::store::{Backend, Directory};

/// A message ready to apply, with the raw bytes kept as the original.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub parsed: ParsedMessage,
    pub raw: std::sync::Arc<Vec<u8>>,
    /// Where the message came from (file path, IMAP UID …), for the receipt.
    pub source: Option<String>,
    /// Channel knowledge beyond the bytes (forms: no threading, properties).
    pub hints: super::Hints,
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

/// Rows per multi-row statement and ids per `IN (…)` list: far below the
/// parameter limits of both backends.
const CHUNK: usize = 400;

/// Thread keys per message looked up ahead for the whole batch.
const PREFETCH_KEYS: usize = 8;

#[derive(Debug, Clone)]
struct TicketState {
    id: i64,
    number: i64,
    team_id: i64,
    pipeline_id: i64,
    status_id: i64,
    status_changed_at: i64,
    merged_into: Option<i64>,
    deleted: bool,
}

/// A ticket created in this batch, written at the end.
struct NewTicket {
    id: i64,
    number: i64,
    subject: String,
    team_id: i64,
    pipeline_id: i64,
    status_id: i64,
    channel_id: i64,
    contact: Option<i64>,
    follow_up_of: Option<i64>,
    /// JSON object of ticket properties (from form fields).
    properties: String,
}

/// A message applied in this batch, written at the end.
struct NewMessage<'a> {
    id: i64,
    ticket_id: Option<i64>,
    channel: &'a ChannelInfo,
    inbound: &'a Inbound,
    contact: Option<i64>,
}

/// What the batch has learned and what it will write at the end.
struct Batch<'a> {
    backend: Backend,
    /// (team, fingerprint) → ticket of messages already taken in.
    receipts: HashMap<(i64, String), Option<i64>>,
    /// (team, Message-ID) → (ticket, direction) of stored messages.
    known_ids: HashMap<(i64, String), (i64, String)>,
    /// (team, Thread-Index root, sender) → ticket, for messages of this batch.
    thread_roots: HashMap<(i64, String, String), i64>,
    tickets: HashMap<i64, TicketState>,
    contacts: HashMap<String, i64>,
    /// Tickets whose status changed, and tickets merely touched.
    status_changed: HashSet<i64>,
    touched: HashSet<i64>,
    /// Ticket numbers handed out in this batch: (next, last stored).
    numbers: Option<(i64, i64)>,
    /// Row ids reserved for this batch, per table, and the last one reserved.
    reserved_ids: HashMap<&'static str, VecDeque<i64>>,
    last_reserved: HashMap<&'static str, i64>,
    new_tickets: Vec<NewTicket>,
    new_messages: Vec<NewMessage<'a>>,
    participants: Vec<(i64, i64, &'static str)>,
    /// The last `find_ticket` matched only by a body marker: the sender may
    /// be anyone who saw a quoted reply, so it does not become a participant.
    weak_match: bool,
    /// Outbound messages a bounce in this batch failed: (message, ticket,
    /// reason). Their notes are written after the flush, because on SQLite
    /// the batch has reserved the next message ids.
    bounced: Vec<(i64, i64, String)>,
    events: Vec<(i64, &'static str, String)>,
    receipts_out: Vec<Receipt>,
}

struct Receipt {
    team_id: i64,
    fingerprint: String,
    channel_id: i64,
    source: Option<String>,
    outcome: &'static str,
    ticket_id: Option<i64>,
    message_id: Option<i64>,
}

/// Bind placeholders for generated statements. SQLite gets anonymous `?`:
/// sqlx looks up every named parameter by name, which is quadratic in the
/// number of parameters. Such statements must not also use `$N`.
fn placeholders(backend: Backend, start: usize, count: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; count].join(", "),
        Backend::Postgres => (start..start + count)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Multi-row insert: `rows` of `width` values each, bound by `bind`, in
/// statements of at most `CHUNK` rows and about `MAX_STATEMENT_BYTES` of data
/// (as `size` estimates it).
#[allow(clippy::too_many_arguments)]
async fn insert_rows<T>(
    conn: &mut AnyConnection,
    backend: Backend,
    head: &str,
    tail: &str,
    width: usize,
    rows: &[T],
    size: impl Fn(&T) -> usize,
    bind: impl Fn(&mut AnyArguments<'_>, &T),
) -> Result<(), sqlx::Error> {
    const MAX_STATEMENT_BYTES: usize = 8 * 1024 * 1024;
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len()
            && end - start < CHUNK
            && (end == start || bytes + size(&rows[end]) <= MAX_STATEMENT_BYTES)
        {
            bytes += size(&rows[end]);
            end += 1;
        }
        let chunk = &rows[start..end];
        let values: Vec<String> = (0..chunk.len())
            .map(|r| format!("({})", placeholders(backend, r * width + 1, width)))
            .collect();
        let sql = format!("{head} VALUES {} {tail}", values.join(", "));
        let mut args = AnyArguments::default();
        for row in chunk {
            bind(&mut args, row);
        }
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
        start = end;
    }
    Ok(())
}

fn add<'q, T>(args: &mut AnyArguments<'q>, value: T)
where
    T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    // Encoding into AnyArguments only fails for types Any cannot hold; ours all can.
    args.add(value).expect("value can be encoded");
}

impl<'a> Batch<'a> {
    async fn prefetch(
        &mut self,
        conn: &mut AnyConnection,
        items: &[(&ChannelInfo, &Inbound)],
    ) -> Result<(), sqlx::Error> {
        let fingerprints: Vec<&str> = items
            .iter()
            .map(|(_, i)| i.parsed.fingerprint.as_str())
            .collect();
        for chunk in fingerprints.chunks(CHUNK) {
            let sql = format!(
                "SELECT team_id, fingerprint, ticket_id FROM receipts WHERE fingerprint IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for f in chunk {
                query = query.bind(*f);
            }
            for row in query.fetch_all(&mut *conn).await? {
                self.receipts
                    .insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
            }
        }

        // The nearest parents decide almost always; the rest of a long
        // References chain is looked up only when none of them is known.
        let mut ids: Vec<String> = items
            .iter()
            .flat_map(|(_, i)| {
                thread_keys(&i.parsed)
                    .message_ids
                    .into_iter()
                    .take(PREFETCH_KEYS)
            })
            .collect();
        ids.sort();
        ids.dedup();
        let ticket_ids = self.lookup_ids(conn, &ids).await?;
        for chunk in ticket_ids.chunks(CHUNK) {
            self.load_tickets(conn, chunk).await?;
        }

        let mut emails: Vec<&str> = items
            .iter()
            .filter_map(|(_, i)| i.parsed.from.as_ref().map(|f| f.address.as_str()))
            .collect();
        emails.sort();
        emails.dedup();
        for chunk in emails.chunks(CHUNK) {
            let sql = format!(
                "SELECT email, id FROM contacts WHERE email IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for e in chunk {
                query = query.bind(*e);
            }
            for row in query.fetch_all(&mut *conn).await? {
                self.contacts.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(())
    }

    /// Records which stored messages carry these Message-IDs; returns their tickets.
    async fn lookup_ids(
        &mut self,
        conn: &mut AnyConnection,
        ids: &[String],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut ticket_ids = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT team_id, message_id, ticket_id, direction FROM messages
                 WHERE ticket_id IS NOT NULL AND message_id IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            for row in query.fetch_all(&mut *conn).await? {
                let ticket: i64 = row.try_get(2)?;
                ticket_ids.insert(ticket);
                self.known_ids
                    .entry((row.try_get(0)?, row.try_get(1)?))
                    .or_insert((ticket, row.try_get(3)?));
            }
        }
        Ok(ticket_ids.into_iter().collect())
    }

    async fn load_tickets(
        &mut self,
        conn: &mut AnyConnection,
        ids: &[i64],
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "SELECT id, number, pipeline_id, status_id, status_changed_at, merged_into, deleted_at, team_id
             FROM tickets WHERE id IN ({})",
            placeholders(self.backend, 1, ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: i64 = row.try_get(0)?;
            self.tickets.insert(
                id,
                TicketState {
                    id,
                    number: row.try_get(1)?,
                    pipeline_id: row.try_get(2)?,
                    status_id: row.try_get(3)?,
                    status_changed_at: row.try_get(4)?,
                    merged_into: row.try_get(5)?,
                    deleted: row.try_get::<Option<i64>, _>(6)?.is_some(),
                    team_id: row.try_get(7)?,
                },
            );
        }
        Ok(())
    }

    /// The live ticket for an id: merged tickets resolve to the surviving one
    /// (the hop limit guards against a cycle written by hand); deleted → none.
    async fn live_ticket(
        &mut self,
        conn: &mut AnyConnection,
        mut id: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        for _ in 0..16 {
            if !self.tickets.contains_key(&id) {
                self.load_tickets(conn, &[id]).await?;
            }
            match self.tickets.get(&id) {
                None => return Ok(None),
                Some(t) if t.deleted => return Ok(None),
                Some(TicketState {
                    merged_into: Some(target),
                    ..
                }) => id = *target,
                Some(_) => return Ok(Some(id)),
            }
        }
        Ok(None)
    }

    /// `live_ticket`, but only for a ticket of `team_id`: a tag names a
    /// ticket, and mail to another team's mailbox must not reach into it.
    async fn live_ticket_of_team(
        &mut self,
        conn: &mut AnyConnection,
        id: i64,
        team_id: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let live = self.live_ticket(conn, id).await?;
        Ok(live.filter(|t| self.tickets.get(t).is_some_and(|t| t.team_id == team_id)))
    }

    /// Finds the ticket a message continues, per the rules in `thread.rs`.
    async fn find_ticket(
        &mut self,
        conn: &mut AnyConnection,
        team_id: i64,
        secret: &[u8],
        message: &ParsedMessage,
        contact: Option<i64>,
    ) -> Result<Found, sqlx::Error> {
        let keys = thread_keys(message);
        self.weak_match = false;
        if !message.synthetic_id {
            if let Some((ticket, direction)) =
                self.known_ids.get(&(team_id, message.message_id.clone()))
            {
                if direction == "outbound" {
                    return Ok(Found::Echo(*ticket));
                }
            }
        }
        // Our own Message-IDs carry a verified ticket id: they need no lookup
        // and still work when the referenced message is not stored.
        for id in &keys.message_ids {
            if let Some(ticket) = ids::ticket_of_message_id(secret, id) {
                if let Some(ticket) = self.live_ticket_of_team(conn, ticket, team_id).await? {
                    return Ok(Found::Ticket(ticket));
                }
            }
        }
        for pass in 0..2 {
            for id in &keys.message_ids {
                if let Some((ticket, _)) = self.known_ids.get(&(team_id, id.clone())).cloned() {
                    if let Some(ticket) = self.live_ticket(conn, ticket).await? {
                        return Ok(Found::Ticket(ticket));
                    }
                }
            }
            if pass == 0 && keys.message_ids.len() > PREFETCH_KEYS {
                self.lookup_ids(conn, &keys.message_ids[PREFETCH_KEYS..])
                    .await?;
            } else {
                break;
            }
        }
        // The body marker, for providers that rewrite Message-IDs.
        if let Some(ticket) =
            ids::ticket_of_body(secret, &message.body_text, message.body_html.as_deref())
        {
            if let Some(ticket) = self.live_ticket_of_team(conn, ticket, team_id).await? {
                self.weak_match = true;
                return Ok(Found::Ticket(ticket));
            }
        }
        let Some(sender) = message.from.as_ref().map(|m| m.address.as_str()) else {
            return Ok(Found::None);
        };
        if let (Some(number), Some(contact)) = (keys.subject_tag, contact) {
            // A ticket created earlier in this batch is not in the database yet.
            let pending = self
                .new_tickets
                .iter()
                .find(|t| t.number == number && t.team_id == team_id)
                .map(|t| t.id)
                .filter(|id| {
                    self.participants
                        .iter()
                        .any(|(t, c, _)| t == id && *c == contact)
                });
            if let Some(id) = pending {
                return Ok(Found::Ticket(id));
            }
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
                if let Some(ticket) = self.live_ticket(conn, row.try_get(0)?).await? {
                    return Ok(Found::Ticket(ticket));
                }
            }
        }
        if let Some(root) = &keys.thread_index_root {
            if let Some(ticket) = self
                .thread_roots
                .get(&(team_id, root.clone(), sender.to_string()))
                .copied()
            {
                return Ok(Found::Ticket(ticket));
            }
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
                if let Some(ticket) = self.live_ticket(conn, row.try_get(0)?).await? {
                    return Ok(Found::Ticket(ticket));
                }
            }
        }
        Ok(Found::None)
    }

    /// Reserves a row id in `table` for a row written at the end of the batch.
    /// SQLite: the transaction holds the write lock, so MAX(id) + 1 onwards
    /// is ours. PostgreSQL: ids come from the table's identity sequence.
    async fn reserve_id(
        &mut self,
        conn: &mut AnyConnection,
        table: &'static str,
        want: usize,
    ) -> Result<i64, sqlx::Error> {
        let empty = self.reserved_ids.get(table).is_none_or(|q| q.is_empty());
        if empty {
            let ids: Vec<i64> = match self.backend {
                Backend::Sqlite => {
                    let max: i64 = match self.reserved_ids.get(table) {
                        // Already counting from MAX(id): continue.
                        Some(_) => self.last_reserved[table],
                        None => sqlx::query(&format!("SELECT COALESCE(MAX(id), 0) FROM {table}"))
                            .fetch_one(&mut *conn)
                            .await?
                            .try_get(0)?,
                    };
                    (max + 1..=max + want as i64).collect()
                }
                Backend::Postgres => {
                    let rows = sqlx::query(&format!(
                        "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, $1)"
                    ))
                    .bind(want as i64)
                    .fetch_all(&mut *conn)
                    .await?;
                    rows.iter()
                        .map(|r| r.try_get(0))
                        .collect::<Result<_, _>>()?
                }
            };
            if let Some(last) = ids.last() {
                self.last_reserved.insert(table, *last);
            }
            self.reserved_ids.entry(table).or_default().extend(ids);
        }
        Ok(self
            .reserved_ids
            .get_mut(table)
            .and_then(|q| q.pop_front())
            .expect("ids were reserved"))
    }

    async fn next_number(&mut self, conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
        let (next, stored) = match self.numbers {
            Some(n) => n,
            None => {
                // Locks the counter row until commit on PostgreSQL, so instances
                // hand out disjoint numbers; SQLite has one writer anyway.
                let sql = match self.backend {
                    Backend::Postgres => {
                        "SELECT value FROM counters WHERE name = 'ticket_number' FOR UPDATE"
                    }
                    Backend::Sqlite => "SELECT value FROM counters WHERE name = 'ticket_number'",
                };
                let value: i64 = sqlx::query(sql).fetch_one(&mut *conn).await?.try_get(0)?;
                (value + 1, value)
            }
        };
        self.numbers = Some((next + 1, stored));
        Ok(next)
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_ticket(
        &mut self,
        conn: &mut AnyConnection,
        channel: &ChannelInfo,
        pipeline_id: i64,
        status_id: i64,
        message: &ParsedMessage,
        contact: Option<i64>,
        follow_up_of: Option<i64>,
        now: i64,
        remaining: usize,
    ) -> Result<TicketState, sqlx::Error> {
        let number = self.next_number(conn).await?;
        let id = self.reserve_id(conn, "tickets", remaining.min(64)).await?;
        let subject = if message.subject.is_empty() {
            "(no subject)".to_string()
        } else {
            message.subject.clone()
        };
        self.new_tickets.push(NewTicket {
            id,
            number,
            subject,
            team_id: channel.team_id,
            pipeline_id,
            status_id,
            channel_id: channel.id,
            contact,
            follow_up_of,
            properties: "{}".into(),
        });
        if let Some(contact) = contact {
            self.participants.push((id, contact, "requester"));
        }
        let ticket = TicketState {
            id,
            number,
            team_id: channel.team_id,
            pipeline_id,
            status_id,
            status_changed_at: now,
            merged_into: None,
            deleted: false,
        };
        self.tickets.insert(id, ticket.clone());
        Ok(ticket)
    }

    /// Writes, for every message that is not a known duplicate, its raw
    /// original and attachment contents (blobs) and its sender (contact):
    /// a few statements for the whole batch, before anything refers to them.
    async fn prewrite(
        &mut self,
        conn: &mut AnyConnection,
        items: &[(&ChannelInfo, &Inbound)],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut blobs: Vec<(&str, &[u8])> = Vec::new();
        let mut blob_seen = HashSet::new();
        let mut senders: Vec<&Mailbox> = Vec::new();
        let mut fresh = HashSet::new();
        for (channel, inbound) in items {
            let m = &inbound.parsed;
            let key = (channel.team_id, m.fingerprint.as_str());
            if self
                .receipts
                .contains_key(&(channel.team_id, m.fingerprint.clone()))
                || !fresh.insert(key)
            {
                continue;
            }
            if blob_seen.insert(m.raw_sha256.as_str()) {
                blobs.push((&m.raw_sha256, &inbound.raw));
            }
            for a in &m.attachments {
                if blob_seen.insert(a.sha256.as_str()) {
                    blobs.push((&a.sha256, &a.data));
                }
            }
            if let Some(from) = &m.from {
                if !self.contacts.contains_key(&from.address)
                    && !senders.iter().any(|s| s.address == from.address)
                {
                    senders.push(from);
                }
            }
        }
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO blobs (sha256, size, data)",
            "ON CONFLICT (sha256) DO NOTHING",
            3,
            &blobs,
            |(_, data)| data.len(),
            |args, (sha, data)| {
                add(args, sha.to_string());
                add(args, data.len() as i64);
                add(args, data.to_vec());
            },
        )
        .await?;
        if senders.is_empty() {
            return Ok(());
        }
        // A new contact joins the company that owns their domain, if any.
        let mut companies: HashMap<String, i64> = HashMap::new();
        let domains: Vec<&str> = senders
            .iter()
            .filter_map(|s| s.address.rsplit_once('@').map(|(_, d)| d))
            .collect();
        for chunk in domains.chunks(CHUNK) {
            let sql = format!(
                "SELECT domain, id FROM companies WHERE domain IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for d in chunk {
                query = query.bind(*d);
            }
            for row in query.fetch_all(&mut *conn).await? {
                companies.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        // ON CONFLICT: another instance may have created the contact meanwhile.
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO contacts (email, name, company_id, created_at)",
            "ON CONFLICT (email) DO NOTHING",
            4,
            &senders,
            |s| s.address.len(),
            |args, s| {
                add(args, s.address.clone());
                add(args, s.name.clone());
                add(
                    args,
                    s.address
                        .rsplit_once('@')
                        .and_then(|(_, d)| companies.get(d).copied()),
                );
                add(args, now);
            },
        )
        .await?;
        for chunk in senders.chunks(CHUNK) {
            let sql = format!(
                "SELECT email, id FROM contacts WHERE email IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for s in chunk {
                query = query.bind(s.address.as_str());
            }
            for row in query.fetch_all(&mut *conn).await? {
                self.contacts.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(())
    }

    async fn add_message(
        &mut self,
        conn: &mut AnyConnection,
        ticket_id: Option<i64>,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        contact: Option<i64>,
        remaining: usize,
    ) -> Result<i64, sqlx::Error> {
        let id = self
            .reserve_id(conn, "messages", remaining.min(256))
            .await?;
        let m = &inbound.parsed;
        if let Some(ticket_id) = ticket_id {
            self.known_ids.insert(
                (channel.team_id, m.message_id.clone()),
                (ticket_id, "inbound".into()),
            );
            if let (Some(root), Some(from)) = (&m.thread_index_root, &m.from) {
                self.thread_roots.insert(
                    (channel.team_id, root.clone(), from.address.clone()),
                    ticket_id,
                );
            }
        }
        self.new_messages.push(NewMessage {
            id,
            ticket_id,
            channel,
            inbound,
            contact,
        });
        Ok(id)
    }

    fn event(&mut self, ticket_id: i64, kind: &'static str, data: serde_json::Value) {
        self.events.push((ticket_id, kind, data.to_string()));
    }

    fn receipt(
        &mut self,
        channel: &ChannelInfo,
        inbound: &Inbound,
        outcome: &Outcome,
        message_row: Option<i64>,
    ) {
        let fingerprint = inbound.parsed.fingerprint.clone();
        self.receipts
            .insert((channel.team_id, fingerprint.clone()), outcome.ticket_id());
        self.receipts_out.push(Receipt {
            team_id: channel.team_id,
            fingerprint,
            channel_id: channel.id,
            source: inbound.source.clone(),
            outcome: outcome.name(),
            ticket_id: outcome.ticket_id(),
            message_id: message_row,
        });
    }

    async fn apply_one(
        &mut self,
        conn: &mut AnyConnection,
        dir: &Directory,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        now: i64,
        remaining: usize,
    ) -> Result<Outcome, sqlx::Error> {
        let message = &inbound.parsed;
        // Exactly once: the same message (per team) is recorded only once.
        if let Some(ticket_id) = self
            .receipts
            .get(&(channel.team_id, message.fingerprint.clone()))
        {
            return Ok(Outcome::Duplicate {
                ticket_id: *ticket_id,
            });
        }
        let contact = message
            .from
            .as_ref()
            .and_then(|f| self.contacts.get(&f.address).copied());
        let found = self
            .find_ticket(conn, channel.team_id, &dir.secret.0, message, contact)
            .await?;
        if let Found::Echo(ticket_id) = found {
            let outcome = Outcome::Duplicate {
                ticket_id: Some(ticket_id),
            };
            self.receipt(channel, inbound, &outcome, None);
            return Ok(outcome);
        }
        let automatic = message.flags.is_automatic();
        let channel_pipeline = dir.pipeline_of(channel);

        let (outcome, message_row) = match found {
            Found::Ticket(ticket_id) => {
                let ticket = self.tickets[&ticket_id].clone();
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
                    let new = self
                        .create_ticket(
                            conn,
                            channel,
                            pipeline.id,
                            pipeline.default_status,
                            message,
                            contact,
                            Some(ticket.id),
                            now,
                            remaining,
                        )
                        .await?;
                    let row = self
                        .add_message(conn, Some(new.id), channel, inbound, contact, remaining)
                        .await?;
                    self.event(
                        ticket.id,
                        "follow_up_created",
                        json!({ "ticket_id": new.id, "number": new.number }),
                    );
                    self.event(new.id, "created", json!({ "channel": channel.key, "message": row, "follow_up_of": ticket.id }));
                    self.touched.insert(ticket.id);
                    let outcome = Outcome::Created {
                        ticket_id: new.id,
                        number: new.number,
                        follow_up_of: Some(ticket.id),
                    };
                    (outcome, row)
                } else {
                    let row = self
                        .add_message(conn, Some(ticket.id), channel, inbound, contact, remaining)
                        .await?;
                    // A person writing to a waiting or closed ticket reopens it;
                    // auto-replies, bounces and list mail never do.
                    let reopened = status_kind != StatusKind::Open && !automatic;
                    if reopened {
                        let state = self.tickets.get_mut(&ticket.id).expect("loaded");
                        state.status_id = pipeline.reopen_status;
                        state.status_changed_at = now;
                        self.status_changed.insert(ticket.id);
                        self.event(
                            ticket.id,
                            "status_changed",
                            json!({ "from": ticket.status_id, "to": pipeline.reopen_status, "reason": "customer_reply" }),
                        );
                    }
                    self.touched.insert(ticket.id);
                    // Replies go to participants by default: bounces, auto-
                    // replies and marker-only matches do not make one.
                    if let (Some(contact), false, false) = (contact, automatic, self.weak_match) {
                        self.participants.push((ticket.id, contact, "participant"));
                    }
                    self.event(
                        ticket.id,
                        "message_received",
                        json!({ "message": row, "channel": channel.key, "flags": message.flags.names() }),
                    );
                    let outcome = Outcome::Appended {
                        ticket_id: ticket.id,
                        number: ticket.number,
                        reopened,
                    };
                    (outcome, row)
                }
            }
            Found::None if channel.create_tickets => {
                // A form may name the status a new ticket starts in.
                let status = inbound
                    .hints
                    .status
                    .as_deref()
                    .and_then(|name| {
                        dir.statuses
                            .values()
                            .find(|s| s.pipeline_id == channel_pipeline.id && s.name == name)
                    })
                    .map_or(channel_pipeline.default_status, |s| s.id);
                let new = self
                    .create_ticket(
                        conn,
                        channel,
                        channel_pipeline.id,
                        status,
                        message,
                        contact,
                        None,
                        now,
                        remaining,
                    )
                    .await?;
                if !inbound.hints.properties.is_empty() {
                    if let Some(t) = self.new_tickets.last_mut() {
                        t.properties = serde_json::to_string(&inbound.hints.properties)
                            .unwrap_or_else(|_| "{}".into());
                    }
                }
                let row = self
                    .add_message(conn, Some(new.id), channel, inbound, contact, remaining)
                    .await?;
                self.event(
                    new.id,
                    "created",
                    json!({ "channel": channel.key, "message": row, "flags": message.flags.names() }),
                );
                let outcome = Outcome::Created {
                    ticket_id: new.id,
                    number: new.number,
                    follow_up_of: None,
                };
                (outcome, row)
            }
            Found::None => {
                let row = self
                    .add_message(conn, None, channel, inbound, contact, remaining)
                    .await?;
                (Outcome::Recorded, row)
            }
            Found::Echo(_) => unreachable!("handled above"),
        };
        if message.flags.bounce && !message.flags.bounced_message_ids.is_empty() {
            let detail = bounce_detail(message);
            // A hostile report can name any number of messages; a real one
            // names one or a few.
            let ids = &message.flags.bounced_message_ids;
            let failed = mark_bounced(
                conn,
                self.backend,
                channel.team_id,
                &ids[..ids.len().min(MAX_BOUNCED_IDS)],
                &detail,
            )
            .await?;
            for (message_id, ticket_id) in failed {
                self.bounced.push((message_id, ticket_id, detail.clone()));
            }
        }
        self.receipt(channel, inbound, &outcome, Some(message_row));
        Ok(outcome)
    }

    /// Writes everything deferred to the end of the batch, parents first.
    async fn flush(&mut self, conn: &mut AnyConnection, now: i64) -> Result<(), sqlx::Error> {
        if let Some((next, stored)) = self.numbers {
            if next - 1 != stored {
                sqlx::query("UPDATE counters SET value = $1 WHERE name = 'ticket_number'")
                    .bind(next - 1)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO tickets (id, number, subject, team_id, pipeline_id, status_id, channel_id, company_id,
               follow_up_of, reply_token, created_at, updated_at, status_changed_at, properties)",
            "",
            14,
            &self.new_tickets,
            |t| t.subject.len(),
            |args, t| {
                add(args, t.id);
                add(args, t.number);
                add(args, t.subject.clone());
                add(args, t.team_id);
                add(args, t.pipeline_id);
                add(args, t.status_id);
                add(args, t.channel_id);
                // Filled from the contact just below: see the UPDATE.
                add(args, None::<i64>);
                add(args, t.follow_up_of);
                add(args, hex::encode(rand::random::<[u8; 16]>()));
                add(args, now);
                add(args, now);
                add(args, now);
                add(args, t.properties.clone());
            },
        )
        .await?;
        let list = |v: &[Mailbox]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO messages (id, ticket_id, team_id, channel_id, direction, author_contact_id, message_id,
               synthetic_id, in_reply_to, refs, from_addr, from_name, to_addrs, cc_addrs, reply_to, subject,
               body_text, body_html, flags, thread_index_root, fingerprint, raw_sha256, sent_at, received_at)",
            "",
            24,
            &self.new_messages,
            |n| n.inbound.parsed.body_text.len() + n.inbound.parsed.body_html.as_ref().map_or(0, String::len) + 512,
            |args, n| {
                let m = &n.inbound.parsed;
                add(args, n.id);
                add(args, n.ticket_id);
                add(args, n.channel.team_id);
                add(args, n.channel.id);
                add(args, "inbound");
                add(args, n.contact);
                add(args, m.message_id.clone());
                add(args, m.synthetic_id as i64);
                add(args, serde_json::to_string(&m.in_reply_to).unwrap_or_default());
                add(args, serde_json::to_string(&m.references).unwrap_or_default());
                add(args, m.from.as_ref().map(|f| f.address.clone()).unwrap_or_default());
                add(args, m.from.as_ref().and_then(|f| f.name.clone()));
                add(args, list(&m.to));
                add(args, list(&m.cc));
                add(args, m.reply_to.as_ref().map(|r| r.address.clone()));
                add(args, m.subject.clone());
                add(args, m.body_text.clone());
                add(args, m.body_html.clone());
                add(args, m.flags.to_db());
                add(args, m.thread_index_root.clone());
                add(args, m.fingerprint.clone());
                add(args, m.raw_sha256.clone());
                add(args, m.date);
                add(args, now);
            },
        )
        .await?;
        let attachments: Vec<(i64, &Attachment)> = self
            .new_messages
            .iter()
            .flat_map(|n| n.inbound.parsed.attachments.iter().map(move |a| (n.id, a)))
            .collect();
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO attachments (message_id, sha256, filename, content_type, size, content_id, inline)",
            "",
            7,
            &attachments,
            |(_, a)| a.filename.len(),
            |args, (id, a)| {
                add(args, *id);
                add(args, a.sha256.clone());
                add(args, a.filename.clone());
                add(args, a.content_type.clone());
                add(args, a.data.len() as i64);
                add(args, a.content_id.clone());
                add(args, a.inline as i64);
            },
        )
        .await?;
        for id in &self.status_changed {
            let t = &self.tickets[id];
            sqlx::query("UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $3 WHERE id = $4")
                .bind(t.status_id)
                .bind(t.status_changed_at)
                .bind(now)
                .bind(t.id)
                .execute(&mut *conn)
                .await?;
        }
        let touched: Vec<i64> = self
            .touched
            .difference(&self.status_changed)
            .copied()
            .collect();
        for chunk in touched.chunks(CHUNK) {
            let sql = format!(
                "UPDATE tickets SET updated_at = {} WHERE id IN ({})",
                placeholders(self.backend, 1, 1),
                placeholders(self.backend, 2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *conn).await?;
        }
        let mut seen = HashSet::new();
        self.participants.retain(|(t, c, _)| seen.insert((*t, *c)));
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO ticket_contacts (ticket_id, contact_id, role)",
            "ON CONFLICT (ticket_id, contact_id) DO NOTHING",
            3,
            &self.participants,
            |_| 16,
            |args, (t, c, role)| {
                add(args, *t);
                add(args, *c);
                add(args, *role);
            },
        )
        .await?;
        let new_ids: Vec<i64> = self
            .new_tickets
            .iter()
            .filter(|t| t.contact.is_some())
            .map(|t| t.id)
            .collect();
        for chunk in new_ids.chunks(CHUNK) {
            // A ticket belongs to its requester's company, if they have one.
            let sql = format!(
                "UPDATE tickets SET company_id = (SELECT c.company_id FROM ticket_contacts tc
                   JOIN contacts c ON c.id = tc.contact_id WHERE tc.ticket_id = tickets.id AND tc.role = 'requester')
                 WHERE id IN ({}) AND EXISTS (SELECT 1 FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
                   WHERE tc.ticket_id = tickets.id AND c.company_id IS NOT NULL)",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *conn).await?;
        }
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at)",
            "",
            5,
            &self.events,
            |(_, _, data)| data.len(),
            |args, (t, kind, data)| {
                add(args, *t);
                add(args, *kind);
                add(args, data.clone());
                add(args, "mailroom");
                add(args, now);
            },
        )
        .await?;
        insert_rows(
            conn,
            self.backend,
            "INSERT INTO receipts (team_id, fingerprint, channel_id, source, outcome, ticket_id, message_id, created_at)",
            "",
            8,
            &self.receipts_out,
            |r| r.source.as_ref().map_or(0, String::len),
            |args, r| {
                add(args, r.team_id);
                add(args, r.fingerprint.clone());
                add(args, r.channel_id);
                add(args, r.source.clone());
                add(args, r.outcome);
                add(args, r.ticket_id);
                add(args, r.message_id);
                add(args, now);
            },
        )
        .await
    }
}

enum Found {
    Ticket(i64),
    /// Our own outbound message came back in (a Bcc to the team mailbox).
    Echo(i64),
    None,
}

/// Applies a batch of messages in order. The caller owns the transaction and
/// commits it; an error means none of the batch may be acknowledged.
pub async fn apply_batch(
    conn: &mut AnyConnection,
    backend: Backend,
    dir: &Directory,
    items: &[(&ChannelInfo, &Inbound)],
    now: i64,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut batch = Batch {
        backend,
        receipts: HashMap::new(),
        known_ids: HashMap::new(),
        thread_roots: HashMap::new(),
        tickets: HashMap::new(),
        contacts: HashMap::new(),
        status_changed: HashSet::new(),
        touched: HashSet::new(),
        numbers: None,
        reserved_ids: HashMap::new(),
        last_reserved: HashMap::new(),
        new_tickets: Vec::new(),
        new_messages: Vec::new(),
        participants: Vec::new(),
        weak_match: false,
        bounced: Vec::new(),
        events: Vec::new(),
        receipts_out: Vec::new(),
    };
    batch.prefetch(conn, items).await?;
    batch.prewrite(conn, items, now).await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, (channel, inbound)) in items.iter().enumerate() {
        outcomes.push(
            batch
                .apply_one(conn, dir, channel, inbound, now, items.len() - i)
                .await?,
        );
    }
    batch.flush(conn, now).await?;
    for (message, ticket, reason) in &batch.bounced {
        crate::outbound::outbox::note_failure(conn, dir, *ticket, *message, reason, now).await?;
    }
    Ok(outcomes)
}

/// What a bounce says went wrong: its Diagnostic-Code or Status line, else
/// the start of its human-readable part.
fn bounce_detail(message: &ParsedMessage) -> String {
    let text = &message.body_text;
    let line = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("diagnostic-code:"))
        .or_else(|| {
            text.lines()
                .find(|l| l.to_ascii_lowercase().starts_with("status:"))
        })
        .map(str::trim)
        .unwrap_or_else(|| text.trim());
    let mut detail: String = line.chars().take(300).collect();
    if detail.is_empty() {
        detail = message.subject.clone();
    }
    format!("bounced: {detail}")
}

/// Bounced Message-IDs looked at per report.
const MAX_BOUNCED_IDS: usize = 10;

/// A bounce marks the outbound message it reports on as failed, with what
/// the bounce says, and returns (message, ticket) of each newly failed one.
/// (The bounce itself is threaded onto the same ticket.)
async fn mark_bounced(
    conn: &mut AnyConnection,
    backend: Backend,
    team_id: i64,
    ids: &[String],
    detail: &str,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let sql = format!(
        "UPDATE messages SET delivery_state = 'failed', delivery_detail = {}
         WHERE team_id = {} AND direction = 'outbound' AND delivery_state <> 'failed'
           AND ticket_id IS NOT NULL AND message_id IN ({})
         RETURNING id, ticket_id",
        placeholders(backend, 1, 1),
        placeholders(backend, 2, 1),
        placeholders(backend, 3, ids.len())
    );
    let mut query = sqlx::query(&sql).bind(detail).bind(team_id);
    for id in ids {
        query = query.bind(id);
    }
    query
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
