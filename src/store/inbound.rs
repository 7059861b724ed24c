//! The store side of applying inbound mail, a batch per transaction:
//!
//! - [`Snapshot`]: what the store knows about a batch's messages (receipts,
//!   stored Message-IDs, their tickets, senders, tag and Thread-Index
//!   candidates), fetched with one query per kind for the whole batch. The
//!   threading decision (`pipeline::thread`) is made over it, in memory;
//!   the batch keeps it up to date as it goes, so a reply later in a batch
//!   sees a ticket created earlier in it.
//! - [`Writer`]: what the batch will write. Ids are reserved ahead, blobs
//!   and contacts are written first (everything else refers to them), the
//!   rest with multi-row statements at the end. The statements per batch
//!   are nearly constant instead of about a dozen per message: each costs a
//!   thread hand-off in sqlx-sqlite, and a round trip on PostgreSQL.

use std::collections::{HashMap, HashSet, VecDeque};

use sqlx::AnyConnection;

use super::sql::{add, execute_in, placeholders, select_in, Insert, CHUNK};
use super::Backend;
use crate::mail::Mailbox;

/// A ticket as the threading decision sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TicketState {
    pub id: i64,
    pub number: i64,
    pub team_id: i64,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub status_changed_at: i64,
    pub merged_into: Option<i64>,
    pub deleted_at: Option<i64>,
}

/// Hops followed through merged tickets; more means a cycle written by hand.
const MAX_MERGE_HOPS: usize = 16;

/// Where following a ticket's merges ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged<'a> {
    /// The surviving ticket.
    Live(&'a TicketState),
    /// A deleted ticket on the way.
    Deleted(&'a TicketState),
    /// A ticket that is not there.
    Missing(i64),
    /// More hops than any real chain has: a cycle.
    Loop,
}

/// Follows merged tickets from `id` to the surviving one, over `tickets`
/// (the one place merges are followed: threading and replies alike).
pub fn follow_merges(tickets: &HashMap<i64, TicketState>, mut id: i64) -> Merged<'_> {
    for _ in 0..MAX_MERGE_HOPS {
        let Some(ticket) = tickets.get(&id) else {
            return Merged::Missing(id);
        };
        if ticket.deleted_at.is_some() {
            return Merged::Deleted(ticket);
        }
        match ticket.merged_into {
            Some(target) => id = target,
            None => return Merged::Live(ticket),
        }
    }
    Merged::Loop
}

/// What the store knows about a batch, and what the batch has added so far.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (team, fingerprint) → ticket of messages already taken in.
    pub receipts: HashMap<(i64, String), Option<i64>>,
    /// (team, Message-ID) → (ticket, direction) of stored messages.
    pub messages: HashMap<(i64, String), (i64, String)>,
    pub tickets: HashMap<i64, TicketState>,
    /// Contact email → id.
    pub contacts: HashMap<String, i64>,
    /// (team, ticket number, participant's email) → ticket: where a subject
    /// tag may lead.
    pub tagged: HashMap<(i64, i64, String), i64>,
    /// (team, Thread-Index root, sender) → the latest ticket of that
    /// Outlook conversation from that sender.
    pub thread_roots: HashMap<(i64, String, String), i64>,
    /// (ticket, contact) for the participants of the tickets loaded.
    pub participants: HashSet<(i64, i64)>,
    /// (team, Message-ID) → tickets of stored messages whose In-Reply-To or
    /// References name it: where a parent that arrives late belongs.
    pub referrers: HashMap<(i64, String), Vec<i64>>,
    /// Open tickets the batch's unthreaded senders take part in, for the
    /// opt-in subject-and-sender fallback.
    pub subject_candidates: Vec<SubjectCandidate>,
}

/// An open ticket a contact takes part in, with its base subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectCandidate {
    pub team_id: i64,
    pub contact_id: i64,
    pub ticket_id: i64,
    pub base_subject: String,
    /// When it was last written to (unix ms).
    pub last_at: i64,
}

impl Snapshot {
    /// The live ticket for an id: merged tickets resolve to the surviving
    /// one; a deleted (or unknown) ticket is none.
    pub fn live_ticket(&self, id: i64) -> Option<i64> {
        match follow_merges(&self.tickets, id) {
            Merged::Live(ticket) => Some(ticket.id),
            _ => None,
        }
    }

    /// `live_ticket`, but only for a ticket of `team_id`: an identifier names
    /// a ticket, and mail to another team's mailbox must not reach into it.
    pub fn live_ticket_of_team(&self, id: i64, team_id: i64) -> Option<i64> {
        self.live_ticket(id)
            .filter(|t| self.tickets.get(t).is_some_and(|t| t.team_id == team_id))
    }

    pub async fn load_receipts(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        fingerprints: &[String],
    ) -> Result<(), sqlx::Error> {
        let sql = "SELECT team_id, fingerprint, ticket_id FROM receipts WHERE fingerprint IN ({})";
        let rows: Vec<(i64, String, Option<i64>)> =
            select_in(conn, backend, sql, fingerprints).await?;
        for (team, fingerprint, ticket) in rows {
            self.receipts.insert((team, fingerprint), ticket);
        }
        Ok(())
    }

    /// Records which stored messages (on a ticket) carry these Message-IDs.
    pub async fn load_messages(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        ids: &[String],
    ) -> Result<(), sqlx::Error> {
        let sql = "SELECT team_id, message_id, ticket_id, direction FROM messages
                   WHERE ticket_id IS NOT NULL AND message_id IN ({})";
        let rows: Vec<(i64, String, i64, String)> = select_in(conn, backend, sql, ids).await?;
        for (team, message_id, ticket, direction) in rows {
            self.messages
                .entry((team, message_id))
                .or_insert((ticket, direction));
        }
        Ok(())
    }

    pub async fn load_contacts(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        emails: &[String],
    ) -> Result<(), sqlx::Error> {
        let sql = "SELECT email, COALESCE(merged_into, id) FROM contacts WHERE email IN ({})";
        let rows: Vec<(String, i64)> = select_in(conn, backend, sql, emails).await?;
        self.contacts.extend(rows);
        Ok(())
    }

    /// The tickets of stored messages that name these Message-IDs as a
    /// parent (In-Reply-To or References).
    pub async fn load_referrers(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        ids: &[String],
    ) -> Result<(), sqlx::Error> {
        let sql =
            "SELECT DISTINCT team_id, referenced, ticket_id FROM message_refs WHERE referenced IN ({})";
        let rows: Vec<(i64, String, i64)> = select_in(conn, backend, sql, ids).await?;
        for (team, id, ticket) in rows {
            let tickets = self.referrers.entry((team, id)).or_default();
            if !tickets.contains(&ticket) {
                tickets.push(ticket);
            }
        }
        Ok(())
    }

    /// Whether an agent has worked on the ticket: an owner, a reply or
    /// note, or any event by someone other than mailroom itself.
    pub async fn agent_touched(conn: &mut AnyConnection, ticket: i64) -> Result<bool, sqlx::Error> {
        let touched: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM tickets WHERE id = $1 AND (owner_agent_id IS NOT NULL
               OR EXISTS (SELECT 1 FROM messages WHERE ticket_id = $1 AND direction <> 'inbound')
               OR EXISTS (SELECT 1 FROM ticket_events WHERE ticket_id = $1 AND actor <> 'mailroom'))",
        )
        .bind(ticket)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(touched.is_some())
    }

    /// Those of `tickets` that are live (not merged, not deleted), in id
    /// order, locked for the rest of the transaction on PostgreSQL (in id
    /// order, as a person's merge locks them, so the two cannot deadlock).
    pub async fn lock_live(
        conn: &mut AnyConnection,
        backend: Backend,
        tickets: &[i64],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let lock = match backend {
            Backend::Postgres => "FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT id FROM tickets WHERE id IN ({{}}) AND merged_into IS NULL AND deleted_at IS NULL ORDER BY id {lock}"
        );
        let mut live: Vec<i64> = select_in::<(i64,), _>(conn, backend, &sql, tickets)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        live.sort_unstable();
        Ok(live)
    }

    /// The requester (contact) of a ticket.
    pub async fn requester(
        conn: &mut AnyConnection,
        ticket: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT contact_id FROM ticket_contacts WHERE ticket_id = $1 AND role = 'requester'",
        )
        .bind(ticket)
        .fetch_optional(&mut *conn)
        .await
    }

    /// The open (not closed) live tickets these contacts take part in;
    /// `base` turns a subject into its base form.
    pub async fn load_subject_candidates(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        contacts: &[i64],
        base: impl Fn(&str) -> String,
    ) -> Result<(), sqlx::Error> {
        let sql = "SELECT t.team_id, tc.contact_id, t.id, t.subject, t.updated_at
                   FROM ticket_contacts tc JOIN tickets t ON t.id = tc.ticket_id
                   JOIN statuses s ON s.id = t.status_id
                   WHERE s.kind <> 'closed' AND t.merged_into IS NULL AND t.deleted_at IS NULL
                     AND tc.contact_id IN ({})";
        let rows: Vec<(i64, i64, i64, String, i64)> =
            select_in(conn, backend, sql, contacts).await?;
        self.subject_candidates.extend(rows.into_iter().map(
            |(team_id, contact_id, ticket_id, subject, last_at)| SubjectCandidate {
                team_id,
                contact_id,
                ticket_id,
                base_subject: base(&subject),
                last_at,
            },
        ));
        Ok(())
    }

    /// Who takes part in these tickets.
    pub async fn load_participants(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        tickets: &[i64],
    ) -> Result<(), sqlx::Error> {
        let sql = "SELECT ticket_id, contact_id FROM ticket_contacts WHERE ticket_id IN ({})";
        let rows: Vec<(i64, i64)> = select_in(conn, backend, sql, tickets).await?;
        self.participants.extend(rows);
        Ok(())
    }

    /// Whether `address` is in the To or Cc of a message on `ticket` (or on
    /// a ticket merged into it) written by us or by a participant: someone
    /// the conversation already named. A newcomer's own Cc names nobody.
    pub async fn addressed_on_ticket(
        conn: &mut AnyConnection,
        ticket: i64,
        address: &str,
    ) -> Result<bool, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT to_addrs, cc_addrs FROM messages
             WHERE ticket_id IN (SELECT id FROM tickets WHERE id = $1 OR merged_into = $1)
               AND (direction = 'outbound' OR flags NOT LIKE '%new_participant%')",
        )
        .bind(ticket)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.iter().any(|(to, cc)| {
            crate::mail::address::list_from_json(to)
                .iter()
                .chain(&crate::mail::address::list_from_json(cc))
                .any(|m| m.address.eq_ignore_ascii_case(address))
        }))
    }

    /// Tickets with these numbers that these senders take part in.
    pub async fn load_tagged(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        numbers: &[i64],
        senders: &[String],
    ) -> Result<(), sqlx::Error> {
        for senders in senders.chunks(CHUNK) {
            for numbers in numbers.chunks(CHUNK) {
                let sql = format!(
                    "SELECT t.team_id, t.number, c.email, t.id FROM tickets t
                     JOIN ticket_contacts tc ON tc.ticket_id = t.id
                     JOIN contacts c ON c.id = tc.contact_id
                     WHERE c.email IN ({}) AND t.number IN ({})",
                    placeholders(backend, 1, senders.len()),
                    placeholders(backend, senders.len() + 1, numbers.len())
                );
                let mut query = sqlx::query_as::<_, (i64, i64, String, i64)>(&sql);
                for sender in senders {
                    query = query.bind(sender);
                }
                for number in numbers {
                    query = query.bind(number);
                }
                for (team, number, email, ticket) in query.fetch_all(&mut *conn).await? {
                    self.tagged.insert((team, number, email), ticket);
                }
            }
        }
        Ok(())
    }

    /// The latest ticket per (team, Outlook conversation, sender).
    pub async fn load_thread_roots(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        teams: &[i64],
        roots: &[String],
    ) -> Result<(), sqlx::Error> {
        if teams.is_empty() || roots.is_empty() {
            return Ok(());
        }
        let teams: Vec<String> = teams.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT team_id, thread_index_root, from_addr, ticket_id FROM messages
             WHERE team_id IN ({}) AND ticket_id IS NOT NULL AND thread_index_root IN ({{}})
             ORDER BY id",
            teams.join(", ")
        );
        let rows: Vec<(i64, String, String, i64)> = select_in(conn, backend, &sql, roots).await?;
        // In id order: the latest message of each conversation wins.
        for (team, root, sender, ticket) in rows {
            self.thread_roots.insert((team, root, sender), ticket);
        }
        Ok(())
    }

    /// Loads these tickets, and the tickets they were merged into.
    pub async fn load_tickets(
        &mut self,
        conn: &mut AnyConnection,
        backend: Backend,
        ids: impl IntoIterator<Item = i64>,
    ) -> Result<(), sqlx::Error> {
        let mut wanted: Vec<i64> = ids
            .into_iter()
            .filter(|id| !self.tickets.contains_key(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for _ in 0..MAX_MERGE_HOPS {
            if wanted.is_empty() {
                break;
            }
            let sql = "SELECT id, number, team_id, pipeline_id, status_id, status_changed_at,
                         merged_into, deleted_at FROM tickets WHERE id IN ({})";
            let rows: Vec<TicketState> = select_in(conn, backend, sql, &wanted).await?;
            wanted = rows
                .iter()
                .filter_map(|t| t.merged_into)
                .filter(|id| !self.tickets.contains_key(id))
                .collect();
            self.tickets.extend(rows.into_iter().map(|t| (t.id, t)));
        }
        Ok(())
    }
}

/// A ticket created by this batch.
pub struct NewTicket {
    pub id: i64,
    pub number: i64,
    pub subject: String,
    pub team_id: i64,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub channel_id: i64,
    pub requester: Option<i64>,
    pub follow_up_of: Option<i64>,
    /// JSON object of ticket properties (from form fields).
    pub properties: String,
}

/// A message written by this batch (borrowing from the parsed message).
pub struct MessageRow<'a> {
    pub id: i64,
    pub ticket_id: Option<i64>,
    pub team_id: i64,
    pub channel_id: i64,
    pub author_contact_id: Option<i64>,
    pub message_id: &'a str,
    pub synthetic_id: bool,
    pub in_reply_to: &'a [String],
    pub references: &'a [String],
    pub from: Option<&'a Mailbox>,
    pub to: &'a [Mailbox],
    pub cc: &'a [Mailbox],
    pub reply_to: Option<&'a str>,
    pub subject: &'a str,
    pub body_text: &'a str,
    pub body_html: Option<&'a str>,
    pub flags: String,
    pub thread_index_root: Option<&'a str>,
    pub fingerprint: &'a str,
    pub raw_sha256: &'a str,
    pub sent_at: Option<i64>,
}

/// An attachment of a message of this batch; its contents are a blob.
pub struct AttachmentRow<'a> {
    pub message_id: i64,
    pub sha256: &'a str,
    pub filename: &'a str,
    pub content_type: &'a str,
    pub size: i64,
    pub content_id: Option<&'a str>,
    pub inline: bool,
}

/// The receipt that makes a re-delivery of the same message harmless.
pub struct ReceiptRow {
    pub team_id: i64,
    pub fingerprint: String,
    pub channel_id: i64,
    pub source: Option<String>,
    pub outcome: &'static str,
    pub ticket_id: Option<i64>,
    pub message_id: Option<i64>,
}

/// A contact to create for a sender seen for the first time.
pub struct NewContact<'a> {
    pub email: &'a str,
    pub name: Option<&'a str>,
}

/// Everything a batch writes, and the ids and ticket numbers it hands out.
pub struct Writer<'a> {
    backend: Backend,
    /// Ticket numbers handed out in this batch: (next, last stored).
    numbers: Option<(i64, i64)>,
    /// Row ids reserved for this batch, per table, and the last one reserved.
    reserved: HashMap<&'static str, VecDeque<i64>>,
    last_reserved: HashMap<&'static str, i64>,
    pub tickets: Vec<NewTicket>,
    pub messages: Vec<MessageRow<'a>>,
    pub attachments: Vec<AttachmentRow<'a>>,
    /// (ticket, contact, role); duplicates are dropped at the flush.
    pub participants: Vec<(i64, i64, &'static str)>,
    /// Ticket → (new status, changed at).
    pub status_changes: HashMap<i64, (i64, i64)>,
    /// Tickets to mark updated.
    pub touched: HashSet<i64>,
    pub events: Vec<(i64, &'static str, String)>,
    pub receipts: Vec<ReceiptRow>,
    /// (team, Message-ID named as a parent, ticket, message row) for
    /// reverse lookup.
    pub refs: Vec<(i64, String, i64, i64)>,
    /// (ticket, merged into): late parents that joined two conversations.
    pub merges: Vec<(i64, i64)>,
    /// (message row, ticket, reply tokens as JSON): agents' mail to verify.
    pub agent_mail: Vec<(i64, i64, String)>,
}

impl<'a> Writer<'a> {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn new(backend: Backend) -> Writer<'a> {
        Writer {
            backend,
            numbers: None,
            reserved: HashMap::new(),
            last_reserved: HashMap::new(),
            tickets: Vec::new(),
            messages: Vec::new(),
            attachments: Vec::new(),
            participants: Vec::new(),
            status_changes: HashMap::new(),
            agent_mail: Vec::new(),
            touched: HashSet::new(),
            events: Vec::new(),
            receipts: Vec::new(),
            refs: Vec::new(),
            merges: Vec::new(),
        }
    }

    /// The next ticket number. The first call locks the counter row until
    /// commit on PostgreSQL, so instances hand out disjoint numbers (SQLite
    /// has one writer anyway); the counter is written back at the flush.
    pub async fn next_number(&mut self, conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
        let (next, stored) = match self.numbers {
            Some(n) => n,
            None => {
                let sql = match self.backend {
                    Backend::Postgres => {
                        "SELECT value FROM counters WHERE name = 'ticket_number' FOR UPDATE"
                    }
                    Backend::Sqlite => "SELECT value FROM counters WHERE name = 'ticket_number'",
                };
                let value: i64 = sqlx::query_scalar(sql).fetch_one(&mut *conn).await?;
                (value + 1, value)
            }
        };
        self.numbers = Some((next + 1, stored));
        Ok(next)
    }

    /// Reserves a row id in `table` (`tickets` or `messages`), `want` at a
    /// time. SQLite: the transaction holds the write lock, so MAX(id) + 1
    /// onwards is ours. PostgreSQL: ids come from the identity sequence.
    pub async fn reserve_id(
        &mut self,
        conn: &mut AnyConnection,
        table: &'static str,
        want: usize,
    ) -> Result<i64, sqlx::Error> {
        if let Some(id) = self.reserved.get_mut(table).and_then(VecDeque::pop_front) {
            return Ok(id);
        }
        let ids: Vec<i64> = match self.backend {
            Backend::Sqlite => {
                let max: i64 = match self.last_reserved.get(table) {
                    // Already counting from MAX(id): continue.
                    Some(last) => *last,
                    None => {
                        sqlx::query_scalar(&format!("SELECT COALESCE(MAX(id), 0) FROM {table}"))
                            .fetch_one(&mut *conn)
                            .await?
                    }
                };
                (max + 1..=max + want.max(1) as i64).collect()
            }
            Backend::Postgres => {
                sqlx::query_scalar(&format!(
                    "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, $1)"
                ))
                .bind(want.max(1) as i64)
                .fetch_all(&mut *conn)
                .await?
            }
        };
        if let Some(last) = ids.last() {
            self.last_reserved.insert(table, *last);
        }
        let queue = self.reserved.entry(table).or_default();
        queue.extend(ids);
        queue
            .pop_front()
            .ok_or_else(|| sqlx::Error::Protocol(format!("no {table} id could be reserved")))
    }

    /// Writes raw originals and attachment contents, each once.
    pub async fn write_blobs(
        &self,
        conn: &mut AnyConnection,
        blobs: &[(&str, &[u8])],
    ) -> Result<(), sqlx::Error> {
        super::blobs::put_many(conn, self.backend, blobs).await
    }

    /// Creates contacts for first-time senders (each joins the company
    /// that owns its domain, if any) and returns every sender's id.
    pub async fn create_contacts(
        &self,
        conn: &mut AnyConnection,
        senders: &[NewContact<'_>],
        now: i64,
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        if senders.is_empty() {
            return Ok(HashMap::new());
        }
        let domain = |email: &str| email.rsplit_once('@').map(|(_, d)| d.to_string());
        let domains: Vec<String> = senders.iter().filter_map(|s| domain(s.email)).collect();
        let sql = "SELECT domain, company_id FROM company_domains WHERE domain IN ({})";
        let companies: HashMap<String, i64> =
            select_in::<(String, i64), _>(conn, self.backend, sql, &domains)
                .await?
                .into_iter()
                .collect();
        // ON CONFLICT: another instance may have created the contact meanwhile.
        let insert = Insert {
            head: "INSERT INTO contacts (email, name, company_id, created_at)",
            tail: "ON CONFLICT (email) DO NOTHING",
            width: 4,
        };
        insert
            .run(
                conn,
                self.backend,
                senders,
                |s| s.email.len(),
                |args, s| {
                    add(args, s.email.to_string());
                    add(args, s.name.map(str::to_string));
                    add(
                        args,
                        domain(s.email).and_then(|d| companies.get(&d).copied()),
                    );
                    add(args, now);
                },
            )
            .await?;
        let emails: Vec<String> = senders.iter().map(|s| s.email.to_string()).collect();
        let sql = "SELECT email, COALESCE(merged_into, id) FROM contacts WHERE email IN ({})";
        Ok(
            select_in::<(String, i64), _>(conn, self.backend, sql, &emails)
                .await?
                .into_iter()
                .collect(),
        )
    }

    /// Marks our outbound messages a bounce reports on as failed with what
    /// the bounce says; returns (message, ticket) of each newly failed one.
    pub async fn mark_bounced(
        &self,
        conn: &mut AnyConnection,
        team_id: i64,
        ids: &[String],
        detail: &str,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let sql = format!(
            "UPDATE messages SET delivery_state = 'failed', delivery_detail = {}
             WHERE team_id = {} AND direction = 'outbound' AND delivery_state <> 'failed'
               AND ticket_id IS NOT NULL AND message_id IN ({})
             RETURNING id, ticket_id",
            placeholders(self.backend, 1, 1),
            placeholders(self.backend, 2, 1),
            placeholders(self.backend, 3, ids.len())
        );
        let mut query = sqlx::query_as(&sql).bind(detail).bind(team_id);
        for id in ids {
            query = query.bind(id);
        }
        query.fetch_all(&mut *conn).await
    }

    /// Writes everything deferred to the end of the batch, parents first.
    pub async fn flush(&mut self, conn: &mut AnyConnection, now: i64) -> Result<(), sqlx::Error> {
        if let Some((next, stored)) = self.numbers {
            if next - 1 != stored {
                sqlx::query("UPDATE counters SET value = $1 WHERE name = 'ticket_number'")
                    .bind(next - 1)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        self.flush_tickets(conn, now).await?;
        self.flush_messages(conn, now).await?;
        self.flush_refs(conn).await?;
        self.flush_ticket_changes(conn, now).await?;
        self.flush_participants(conn).await?;
        // After the participants: a merged ticket's contacts, also those
        // this batch added, take part in the survivor.
        for (ticket, into) in &self.merges {
            super::tickets::merge_into(conn, *ticket, *into, now).await?;
        }
        self.flush_companies(conn).await?;
        for (message, ticket, tokens) in &self.agent_mail {
            sqlx::query(
                "INSERT INTO agent_mail (message_id, ticket_id, tokens, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(message)
            .bind(ticket)
            .bind(tokens)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        let backend = self.backend;
        super::events::insert_many(conn, backend, &self.events, "mailroom", now).await?;
        let receipts = Insert {
            head: "INSERT INTO receipts (team_id, fingerprint, channel_id, source, outcome, ticket_id, message_id, created_at)",
            tail: "",
            width: 8,
        };
        receipts
            .run(
                conn,
                backend,
                &self.receipts,
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

    async fn flush_tickets(&self, conn: &mut AnyConnection, now: i64) -> Result<(), sqlx::Error> {
        let insert = Insert {
            head: "INSERT INTO tickets (id, number, subject, team_id, pipeline_id, status_id, channel_id,
                     follow_up_of, reply_token, created_at, updated_at, status_changed_at, properties)",
            tail: "",
            width: 13,
        };
        insert
            .run(
                conn,
                self.backend,
                &self.tickets,
                |t| t.subject.len(),
                |args, t| {
                    add(args, t.id);
                    add(args, t.number);
                    add(args, t.subject.clone());
                    add(args, t.team_id);
                    add(args, t.pipeline_id);
                    add(args, t.status_id);
                    add(args, t.channel_id);
                    add(args, t.follow_up_of);
                    add(args, hex::encode(rand::random::<[u8; 16]>()));
                    add(args, now);
                    add(args, now);
                    add(args, now);
                    add(args, t.properties.clone());
                },
            )
            .await
    }

    async fn flush_messages(&self, conn: &mut AnyConnection, now: i64) -> Result<(), sqlx::Error> {
        let insert = Insert {
            head: "INSERT INTO messages (id, ticket_id, team_id, channel_id, direction, author_contact_id, message_id,
                     synthetic_id, in_reply_to, refs, from_addr, from_name, to_addrs, cc_addrs, reply_to, subject,
                     body_text, body_html, flags, thread_index_root, fingerprint, raw_sha256, sent_at, received_at)",
            tail: "",
            width: 24,
        };
        let size = |m: &MessageRow| m.body_text.len() + m.body_html.map_or(0, str::len) + 512;
        insert
            .run(conn, self.backend, &self.messages, size, |args, m| {
                let ids_json = |ids: &[String]| serde_json::to_string(ids).unwrap_or_default();
                add(args, m.id);
                add(args, m.ticket_id);
                add(args, m.team_id);
                add(args, m.channel_id);
                add(args, "inbound");
                add(args, m.author_contact_id);
                add(args, m.message_id.to_string());
                add(args, m.synthetic_id as i64);
                add(args, ids_json(m.in_reply_to));
                add(args, ids_json(m.references));
                add(args, m.from.map(|f| f.address.clone()).unwrap_or_default());
                add(args, m.from.and_then(|f| f.name.clone()));
                add(args, crate::mail::address::list_to_json(m.to));
                add(args, crate::mail::address::list_to_json(m.cc));
                add(args, m.reply_to.map(str::to_string));
                add(args, m.subject.to_string());
                add(args, m.body_text.to_string());
                add(args, m.body_html.map(str::to_string));
                add(args, m.flags.clone());
                add(args, m.thread_index_root.map(str::to_string));
                add(args, m.fingerprint.to_string());
                add(args, m.raw_sha256.to_string());
                add(args, m.sent_at);
                add(args, now);
            })
            .await?;
        let insert = Insert {
            head: "INSERT INTO attachments (message_id, sha256, filename, content_type, size, content_id, inline)",
            tail: "",
            width: 7,
        };
        insert
            .run(
                conn,
                self.backend,
                &self.attachments,
                |a| a.filename.len(),
                |args, a| {
                    add(args, a.message_id);
                    add(args, a.sha256.to_string());
                    add(args, a.filename.to_string());
                    add(args, a.content_type.to_string());
                    add(args, a.size);
                    add(args, a.content_id.map(str::to_string));
                    add(args, a.inline as i64);
                },
            )
            .await
    }

    /// Status changes, and `updated_at` of tickets merely touched.
    async fn flush_ticket_changes(
        &self,
        conn: &mut AnyConnection,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for (id, (status, changed_at)) in &self.status_changes {
            sqlx::query("UPDATE tickets SET status_id = $1, status_changed_at = $2, updated_at = $3 WHERE id = $4")
                .bind(status)
                .bind(changed_at)
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        let touched: Vec<i64> = self
            .touched
            .iter()
            .filter(|id| !self.status_changes.contains_key(id))
            .copied()
            .collect();
        let sql = format!("UPDATE tickets SET updated_at = {now} WHERE id IN ({{}})");
        execute_in(conn, self.backend, &sql, &touched).await
    }

    async fn flush_refs(&self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let insert = Insert {
            head: "INSERT INTO message_refs (referenced, team_id, ticket_id, message_id)",
            tail: "",
            width: 4,
        };
        insert
            .run(
                conn,
                self.backend,
                &self.refs,
                |(_, id, _, _)| id.len(),
                |args, (team, id, ticket, message)| {
                    add(args, id.clone());
                    add(args, *team);
                    add(args, *ticket);
                    add(args, *message);
                },
            )
            .await
    }

    /// A new ticket belongs to its requester's company, if they have one.
    async fn flush_companies(&self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let with_requester: Vec<i64> = self
            .tickets
            .iter()
            .filter(|t| t.requester.is_some())
            .map(|t| t.id)
            .collect();
        let sql = "UPDATE tickets SET company_id = (SELECT c.company_id FROM ticket_contacts tc
                     JOIN contacts c ON c.id = tc.contact_id WHERE tc.ticket_id = tickets.id AND tc.role = 'requester')
                   WHERE id IN ({}) AND EXISTS (SELECT 1 FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id
                     WHERE tc.ticket_id = tickets.id AND c.company_id IS NOT NULL)";
        execute_in(conn, self.backend, sql, &with_requester).await
    }

    async fn flush_participants(&mut self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let mut seen = HashSet::new();
        self.participants.retain(|(t, c, _)| seen.insert((*t, *c)));
        let insert = Insert {
            head: "INSERT INTO ticket_contacts (ticket_id, contact_id, role)",
            tail: "ON CONFLICT (ticket_id, contact_id) DO NOTHING",
            width: 3,
        };
        insert
            .run(
                conn,
                self.backend,
                &self.participants,
                |_| 16,
                |args, (t, c, role)| {
                    add(args, *t);
                    add(args, *c);
                    add(args, *role);
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: i64, merged_into: Option<i64>, deleted: bool) -> (i64, TicketState) {
        let state = TicketState {
            id,
            number: id + 100,
            team_id: 1,
            pipeline_id: 1,
            status_id: 1,
            status_changed_at: 0,
            merged_into,
            deleted_at: deleted.then_some(1),
        };
        (id, state)
    }

    #[test]
    fn merges_are_followed_to_the_survivor_and_no_further() {
        let tickets: HashMap<i64, TicketState> = [
            ticket(1, Some(2), false),
            ticket(2, Some(3), false),
            ticket(3, None, false),
            ticket(4, Some(5), false),
            ticket(5, None, true),
            ticket(6, Some(7), false),
            ticket(7, Some(6), false),
            ticket(8, Some(99), false),
        ]
        .into_iter()
        .collect();
        assert!(matches!(follow_merges(&tickets, 1), Merged::Live(t) if t.id == 3));
        assert!(matches!(follow_merges(&tickets, 4), Merged::Deleted(t) if t.number == 105));
        assert_eq!(follow_merges(&tickets, 6), Merged::Loop);
        assert_eq!(follow_merges(&tickets, 8), Merged::Missing(99));
        let known = Snapshot {
            tickets,
            ..Default::default()
        };
        assert_eq!(known.live_ticket(1), Some(3));
        assert_eq!(known.live_ticket(4), None);
        assert_eq!(known.live_ticket_of_team(1, 2), None);
    }
}
