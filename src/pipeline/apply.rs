//! The only pipeline step that writes: turns parsed messages into tickets or
//! messages on existing tickets, inside the caller's transaction. Receipts are
//! written in the same transaction, so a message is either fully applied and
//! recorded, or not at all.
//!
//! A batch at a time: the [`Snapshot`] the threading decision needs is
//! fetched for the whole batch, each message is decided in order by the
//! pure rules of `thread.rs` (a reply later in the batch sees a ticket
//! created earlier in it), and the store's [`Writer`] writes the lot with a
//! few multi-row statements. A batch of one is the same code.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::json;
use sqlx::AnyConnection;

use super::parse::base_subject;
use super::parse::ParsedMessage;
use super::thread::{
    continue_ticket, find_ticket, related_tickets, subject_fallback, thread_keys, Continue, Found,
    ThreadKeys,
};
use crate::config::StatusKind;
use crate::store::directory::{ChannelInfo, PipelineInfo};
use crate::store::inbound::{
    AttachmentRow, MessageRow, NewContact, NewTicket, ReceiptRow, Snapshot, TicketState, Writer,
};
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

/// Thread keys per message fetched for the whole batch; the rest of a long
/// chain is looked up only when none of these is known.
const PREFETCH_KEYS: usize = 8;

/// Bounced Message-IDs looked at per report: a hostile report can name any
/// number of messages; a real one names one or a few.
const MAX_BOUNCED_IDS: usize = 10;

/// One message of the batch with what it is applied through.
type Item<'a> = (&'a ChannelInfo, &'a Inbound);

/// Applies a batch of messages in order. The caller owns the transaction and
/// commits it; an error means none of the batch may be acknowledged.
pub async fn apply_batch(
    conn: &mut AnyConnection,
    backend: Backend,
    dir: &Directory,
    items: &[Item<'_>],
    now: i64,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let keys: Vec<ThreadKeys> = items
        .iter()
        .map(|(_, i)| thread_keys(&i.parsed, &dir.secret.0))
        .collect();
    // The subject fallback's candidates are read only where it is on.
    let subjects = items
        .iter()
        .any(|(channel, _)| dir.pipeline_of(channel).thread_by_subject_days.is_some());
    let known = snapshot(conn, backend, items, &keys, subjects).await?;
    let mut batch = Batch {
        dir,
        known,
        writer: Writer::new(backend),
        bounced: Vec::new(),
        linked: HashSet::new(),
        now,
    };
    batch.prewrite(conn, items).await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, ((channel, inbound), keys)) in items.iter().zip(&keys).enumerate() {
        let remaining = items.len() - i;
        outcomes.push(
            batch
                .apply_one(conn, channel, inbound, keys, remaining)
                .await?,
        );
    }
    batch.writer.flush(conn, now).await?;
    // After the flush: on SQLite the batch has reserved the next message ids.
    for (message, ticket, reason) in &batch.bounced {
        crate::store::outbox::note_failure(conn, dir, *ticket, *message, reason, now).await?;
    }
    Ok(outcomes)
}

/// Fetches what the threading rules need to know about the whole batch.
async fn snapshot(
    conn: &mut AnyConnection,
    backend: Backend,
    items: &[Item<'_>],
    keys: &[ThreadKeys],
    subjects: bool,
) -> Result<Snapshot, sqlx::Error> {
    let mut known = Snapshot::default();
    let distinct = |values: &mut Vec<String>| {
        values.sort();
        values.dedup();
    };
    let fingerprints: Vec<String> = items
        .iter()
        .map(|(_, i)| i.parsed.fingerprint.clone())
        .collect();
    known.load_receipts(conn, backend, &fingerprints).await?;
    let mut first: Vec<String> = keys
        .iter()
        .flat_map(|k| k.message_ids.iter().take(PREFETCH_KEYS).cloned())
        .collect();
    distinct(&mut first);
    known.load_messages(conn, backend, &first).await?;
    let first_tickets: Vec<i64> = known
        .messages
        .values()
        .map(|(t, _)| *t)
        .chain(keys.iter().flat_map(|k| k.our_tickets.iter().copied()))
        .collect();
    known.load_tickets(conn, backend, first_tickets).await?;
    // The nearest parents decide almost always; the rest of a long chain
    // is looked up only for messages none of whose first keys leads to a
    // live ticket of their team (as the threading rules will see it).
    let mut rest: Vec<String> = items
        .iter()
        .zip(keys)
        .filter(|((channel, _), k)| !threads_early(&known, k, channel.team_id))
        .flat_map(|(_, k)| k.message_ids.iter().skip(PREFETCH_KEYS).cloned())
        .collect();
    distinct(&mut rest);
    known.load_messages(conn, backend, &rest).await?;
    let mut senders: Vec<String> = keys.iter().filter_map(|k| k.sender.clone()).collect();
    distinct(&mut senders);
    known.load_contacts(conn, backend, &senders).await?;
    if subjects {
        let unthreaded: Vec<i64> = keys
            .iter()
            .filter(|k| k.unthreaded && !k.automatic)
            .filter_map(|k| {
                k.sender
                    .as_ref()
                    .and_then(|s| known.contacts.get(s))
                    .copied()
            })
            .collect();
        known
            .load_subject_candidates(conn, backend, &unthreaded, base_subject)
            .await?;
    }
    let mut tags: Vec<i64> = keys.iter().filter_map(|k| k.subject_tag).collect();
    tags.sort_unstable();
    tags.dedup();
    known.load_tagged(conn, backend, &tags, &senders).await?;
    let mut teams: Vec<i64> = items.iter().map(|(c, _)| c.team_id).collect();
    teams.sort_unstable();
    teams.dedup();
    let mut roots: Vec<String> = keys
        .iter()
        .filter_map(|k| k.thread_index_root.clone())
        .collect();
    distinct(&mut roots);
    known
        .load_thread_roots(conn, backend, &teams, &roots)
        .await?;
    let mut own: Vec<String> = keys.iter().filter_map(|k| k.own_id.clone()).collect();
    distinct(&mut own);
    known.load_referrers(conn, backend, &own).await?;
    let tickets: Vec<i64> = known
        .messages
        .values()
        .map(|(t, _)| *t)
        .chain(known.tagged.values().copied())
        .chain(known.thread_roots.values().copied())
        .chain(known.referrers.values().flatten().copied())
        .chain(known.subject_candidates.iter().map(|c| c.ticket_id))
        .chain(
            keys.iter()
                .flat_map(|k| k.our_tickets.iter().copied().chain(k.marker_ticket)),
        )
        .collect();
    known.load_tickets(conn, backend, tickets).await?;
    // Who takes part in the tickets the batch may join (a few rows per
    // ticket, however long the senders' history).
    let candidates: Vec<i64> = known.tickets.keys().copied().collect();
    known.load_participants(conn, backend, &candidates).await?;
    Ok(known)
}

/// Whether rules 1 and 2 can match `keys` without the rest of its chain:
/// one of our IDs or one of its first stored IDs leads to a live ticket of
/// `team`.
fn threads_early(known: &Snapshot, keys: &ThreadKeys, team: i64) -> bool {
    keys.our_tickets
        .iter()
        .any(|t| known.live_ticket_of_team(*t, team).is_some())
        || keys.message_ids.iter().take(PREFETCH_KEYS).any(|id| {
            known
                .messages
                .get(&(team, id.clone()))
                .is_some_and(|(t, _)| known.live_ticket(*t).is_some())
        })
}

/// The batch in progress: what is known, and what will be written.
struct Batch<'a> {
    dir: &'a Directory,
    known: Snapshot,
    writer: Writer<'a>,
    /// Outbound messages a bounce in this batch failed: (message, ticket,
    /// reason); their notes are written after the flush.
    bounced: Vec<(i64, i64, String)>,
    /// Ticket pairs linked as one conversation in this batch.
    linked: HashSet<(i64, i64)>,
    now: i64,
}

/// Parents of a message recorded for reverse lookup: the nearest ones.
const MAX_RECORDED_PARENTS: usize = 20;
/// Tickets one late parent links to: a Message-ID named by replies on many
/// tickets must not make one message write an event per ticket.
const MAX_LINKS: usize = 10;

impl<'a> Batch<'a> {
    /// Writes, for every message that is not a known duplicate, its raw
    /// original and attachment contents (blobs) and its sender (contact):
    /// a few statements for the whole batch, before anything refers to them.
    async fn prewrite(
        &mut self,
        conn: &mut AnyConnection,
        items: &[Item<'a>],
    ) -> Result<(), sqlx::Error> {
        let mut blobs: Vec<(&str, &[u8])> = Vec::new();
        let mut blob_seen = HashSet::new();
        let mut senders: Vec<NewContact> = Vec::new();
        let mut fresh = HashSet::new();
        for (channel, inbound) in items {
            let m = &inbound.parsed;
            let key = (channel.team_id, m.fingerprint.clone());
            if self.known.receipts.contains_key(&key) || !fresh.insert(key) {
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
                if !self.known.contacts.contains_key(&from.address)
                    && !senders.iter().any(|s| s.email == from.address)
                {
                    senders.push(NewContact {
                        email: &from.address,
                        name: from.name.as_deref(),
                    });
                }
            }
        }
        self.writer.write_blobs(conn, &blobs).await?;
        let created = self
            .writer
            .create_contacts(conn, &senders, self.now)
            .await?;
        self.known.contacts.extend(created);
        Ok(())
    }

    async fn apply_one(
        &mut self,
        conn: &mut AnyConnection,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        keys: &ThreadKeys,
        remaining: usize,
    ) -> Result<Outcome, sqlx::Error> {
        let message = &inbound.parsed;
        // Exactly once: the same message (per team) is recorded only once.
        let receipt = (channel.team_id, message.fingerprint.clone());
        if let Some(ticket_id) = self.known.receipts.get(&receipt) {
            return Ok(Outcome::Duplicate {
                ticket_id: *ticket_id,
            });
        }
        let contact = keys
            .sender
            .as_ref()
            .and_then(|s| self.known.contacts.get(s).copied());
        let found = match inbound.hints.no_threading {
            true => Found::None,
            false => find_ticket(&self.known, keys, channel.team_id),
        };
        // Last, and only where the pipeline asks for it: same sender, same
        // subject, an open ticket, recently.
        let days = self.dir.pipeline_of(channel).thread_by_subject_days;
        let found = match (found, contact, days, inbound.hints.no_threading) {
            (Found::None, Some(contact), Some(days), false) => {
                let since = self.now - i64::from(days) * 86_400_000;
                subject_fallback(&self.known, keys, channel.team_id, contact, since)
                    .map_or(Found::None, |id| Found::Ticket { id, weak: false })
            }
            (found, ..) => found,
        };
        let (outcome, row) = match found {
            Found::Echo(ticket_id) => {
                let outcome = Outcome::Duplicate {
                    ticket_id: Some(ticket_id),
                };
                self.receipt(channel, inbound, &outcome, None);
                return Ok(outcome);
            }
            Found::Ticket { id, .. } if agent_tokens(self.dir, message).is_some() => {
                let tokens = agent_tokens(self.dir, message).unwrap_or_default();
                self.agent_mail(conn, channel, inbound, id, contact, tokens, remaining)
                    .await?
            }
            Found::Ticket { id, weak } => {
                let ticket = self.known.tickets[&id].clone();
                // A second copy of a message already stored (the same mail
                // through another inbox) has linked its tickets already.
                let copy = keys.own_id.as_ref().is_some_and(|own| {
                    self.known
                        .messages
                        .contains_key(&(channel.team_id, own.clone()))
                });
                let (outcome, row) = self
                    .continue_on(conn, channel, inbound, &ticket, contact, weak, remaining)
                    .await?;
                // Appended only: a follow-up ticket is not the late
                // parent's conversation (it was opened on purpose).
                match outcome {
                    Outcome::Appended { ticket_id, .. } if !copy => {
                        self.link_late_parent(conn, channel, keys, ticket_id, row)
                            .await?
                    }
                    _ => {}
                }
                (outcome, row)
            }
            // Reports (ARF, DMARC) are kept and counted, never a ticket.
            Found::None if channel.create_tickets && !message.flags.report => {
                self.open_ticket(conn, channel, inbound, contact, remaining)
                    .await?
            }
            Found::None => {
                let row = self
                    .add_message(conn, None, channel, inbound, contact, None, remaining)
                    .await?;
                (Outcome::Recorded, row)
            }
        };
        if message.flags.bounce && !message.flags.bounced_message_ids.is_empty() {
            self.mark_bounced(conn, channel, message).await?;
        }
        self.receipt(channel, inbound, &outcome, Some(row));
        Ok(outcome)
    }

    /// A message that continues `ticket`: appended (reopening the ticket when
    /// a person writes to a waiting or closed one), or a follow-up ticket.
    #[allow(clippy::too_many_arguments)]
    async fn continue_on(
        &mut self,
        conn: &mut AnyConnection,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        ticket: &TicketState,
        contact: Option<i64>,
        weak: bool,
        remaining: usize,
    ) -> Result<(Outcome, i64), sqlx::Error> {
        let dir = self.dir;
        let pipeline = dir
            .pipeline_by_id(ticket.pipeline_id)
            .unwrap_or_else(|| dir.pipeline_of(channel));
        let kind = dir
            .status(ticket.status_id)
            .map_or(StatusKind::Open, |s| s.kind);
        let message = &inbound.parsed;
        let automatic = message.flags.is_automatic();
        let reopen = match continue_ticket(ticket, kind, pipeline, automatic, self.now) {
            Continue::FollowUp => {
                return self
                    .follow_up(conn, channel, inbound, ticket, pipeline, contact, remaining)
                    .await
            }
            Continue::Append { reopen } => reopen,
        };
        // Who may hear back is decided by the ticket's participants, not by
        // whichever Message-ID a message names: a stranger's message that
        // threads here is kept, flagged, and does not get replies.
        let newcomer = match (contact, keys_sender(message), automatic || weak) {
            (Some(contact), Some(sender), false) => {
                !self
                    .is_participant(conn, ticket.id, contact, sender)
                    .await?
            }
            _ => false,
        };
        let flag = newcomer.then_some(NEW_PARTICIPANT);
        let row = self
            .add_message(
                conn,
                Some(ticket.id),
                channel,
                inbound,
                contact,
                flag,
                remaining,
            )
            .await?;
        if newcomer {
            self.event(
                ticket.id,
                "new_participant",
                json!({ "message": row, "address": keys_sender(message) }),
            );
        }
        if reopen {
            let state = self
                .known
                .tickets
                .entry(ticket.id)
                .or_insert_with(|| ticket.clone());
            state.status_id = pipeline.reopen_status;
            state.status_changed_at = self.now;
            self.writer
                .status_changes
                .insert(ticket.id, (pipeline.reopen_status, self.now));
            self.event(
                ticket.id,
                "status_changed",
                json!({ "from": ticket.status_id, "to": pipeline.reopen_status, "reason": "customer_reply" }),
            );
        }
        self.writer.touched.insert(ticket.id);
        // Replies go to participants by default: bounces, auto-replies and
        // marker-only matches do not make one.
        if let (Some(contact), false, false, false) = (contact, automatic, weak, newcomer) {
            self.participate(
                ticket.id,
                ticket.number,
                ticket.team_id,
                contact,
                keys_sender(message),
                "participant",
            );
        }
        self.event(
            ticket.id,
            "message_received",
            json!({ "message": row, "channel": channel.key, "flags": message.flags.names() }),
        );
        let outcome = Outcome::Appended {
            ticket_id: ticket.id,
            number: ticket.number,
            reopened: reopen,
        };
        Ok((outcome, row))
    }

    /// Mail from an agent (or with a reply token) that threads to `ticket`:
    /// stored on it, flagged, and queued for `desk::agent_mail` to verify
    /// and act on. Nothing a customer's message does happens here (no
    /// participant, no reopening, no "customer replied").
    #[allow(clippy::too_many_arguments)]
    async fn agent_mail(
        &mut self,
        conn: &mut AnyConnection,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        ticket: i64,
        contact: Option<i64>,
        tokens: Vec<String>,
        remaining: usize,
    ) -> Result<(Outcome, i64), sqlx::Error> {
        let state = self.known.tickets[&ticket].clone();
        let row = self
            .add_message(
                conn,
                Some(state.id),
                channel,
                inbound,
                contact,
                Some(AGENT_MAIL),
                remaining,
            )
            .await?;
        self.writer.touched.insert(state.id);
        let tokens = serde_json::to_string(&tokens).unwrap_or_else(|_| "[]".into());
        self.writer.agent_mail.push((row, state.id, tokens));
        self.event(
            state.id,
            "agent_mail_received",
            json!({ "message": row, "from": keys_sender(&inbound.parsed) }),
        );
        let outcome = Outcome::Appended {
            ticket_id: state.id,
            number: state.number,
            reopened: false,
        };
        Ok((outcome, row))
    }

    /// A reply to a closed ticket whose pipeline opens a new ticket for it.
    #[allow(clippy::too_many_arguments)]
    async fn follow_up(
        &mut self,
        conn: &mut AnyConnection,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        old: &TicketState,
        pipeline: &PipelineInfo,
        contact: Option<i64>,
        remaining: usize,
    ) -> Result<(Outcome, i64), sqlx::Error> {
        let status = pipeline.default_status;
        let new = self
            .create_ticket(
                conn,
                channel,
                pipeline.id,
                status,
                inbound,
                contact,
                Some(old.id),
                remaining,
            )
            .await?;
        let row = self
            .add_message(
                conn,
                Some(new.id),
                channel,
                inbound,
                contact,
                None,
                remaining,
            )
            .await?;
        self.event(
            old.id,
            "follow_up_created",
            json!({ "ticket_id": new.id, "number": new.number }),
        );
        self.event(
            new.id,
            "created",
            json!({ "channel": channel.key, "message": row, "follow_up_of": old.id }),
        );
        self.writer.touched.insert(old.id);
        let outcome = Outcome::Created {
            ticket_id: new.id,
            number: new.number,
            follow_up_of: Some(old.id),
        };
        Ok((outcome, row))
    }

    /// A message that continues nothing, on a channel that creates tickets.
    async fn open_ticket(
        &mut self,
        conn: &mut AnyConnection,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        contact: Option<i64>,
        remaining: usize,
    ) -> Result<(Outcome, i64), sqlx::Error> {
        let pipeline = self.dir.pipeline_of(channel);
        // A form may name the status a new ticket starts in.
        let status = inbound
            .hints
            .status
            .as_deref()
            .and_then(|name| self.dir.status_named(pipeline.id, name))
            .map_or(pipeline.default_status, |s| s.id);
        let new = self
            .create_ticket(
                conn,
                channel,
                pipeline.id,
                status,
                inbound,
                contact,
                None,
                remaining,
            )
            .await?;
        let row = self
            .add_message(
                conn,
                Some(new.id),
                channel,
                inbound,
                contact,
                None,
                remaining,
            )
            .await?;
        let flags = inbound.parsed.flags.names();
        let mut data = json!({ "channel": channel.key, "message": row, "flags": flags });
        if let Some(agent) = inbound
            .hints
            .forwarded_by
            .and_then(|id| self.dir.agent_by_id(id))
        {
            data["forwarded_by"] = json!(agent.key);
        }
        self.event(new.id, "created", data);
        let outcome = Outcome::Created {
            ticket_id: new.id,
            number: new.number,
            follow_up_of: None,
        };
        Ok((outcome, row))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_ticket(
        &mut self,
        conn: &mut AnyConnection,
        channel: &ChannelInfo,
        pipeline_id: i64,
        status_id: i64,
        inbound: &Inbound,
        contact: Option<i64>,
        follow_up_of: Option<i64>,
        remaining: usize,
    ) -> Result<TicketState, sqlx::Error> {
        let number = self.writer.next_number(conn).await?;
        let id = self
            .writer
            .reserve_id(conn, "tickets", remaining.min(64))
            .await?;
        let message = &inbound.parsed;
        let subject = match message.subject.is_empty() {
            true => "(no subject)".to_string(),
            false => message.subject.clone(),
        };
        let properties = match inbound.hints.properties.is_empty() {
            true => "{}".to_string(),
            false => {
                serde_json::to_string(&inbound.hints.properties).unwrap_or_else(|_| "{}".into())
            }
        };
        self.writer.tickets.push(NewTicket {
            id,
            number,
            subject,
            team_id: channel.team_id,
            pipeline_id,
            status_id,
            channel_id: channel.id,
            requester: contact,
            follow_up_of,
            properties,
        });
        if let Some(contact) = contact {
            self.participate(
                id,
                number,
                channel.team_id,
                contact,
                keys_sender(message),
                "requester",
            );
            // A reply without headers later in this batch may find it.
            self.known
                .subject_candidates
                .push(crate::store::inbound::SubjectCandidate {
                    team_id: channel.team_id,
                    contact_id: contact,
                    ticket_id: id,
                    base_subject: base_subject(&message.subject),
                    last_at: self.now,
                });
        }
        let ticket = TicketState {
            id,
            number,
            team_id: channel.team_id,
            pipeline_id,
            status_id,
            status_changed_at: self.now,
            merged_into: None,
            deleted_at: None,
        };
        self.known.tickets.insert(id, ticket.clone());
        Ok(ticket)
    }

    /// Makes `contact` a participant of a ticket; its subject tag now leads
    /// there for that sender, also later in this batch.
    fn participate(
        &mut self,
        ticket: i64,
        number: i64,
        team: i64,
        contact: i64,
        sender: Option<&str>,
        role: &'static str,
    ) {
        self.writer.participants.push((ticket, contact, role));
        self.known.participants.insert((ticket, contact));
        if let Some(sender) = sender {
            self.known
                .tagged
                .insert((team, number, sender.to_string()), ticket);
        }
    }

    /// A late parent shows `chosen` and other tickets are one conversation:
    /// the link goes on both timelines, and with the pipeline's
    /// `merge_late_parents` the later ticket is merged into the earlier one
    /// when both have the same requester and no agent has worked on the
    /// later one. Never a silent merge otherwise.
    async fn link_late_parent(
        &mut self,
        conn: &mut AnyConnection,
        channel: &ChannelInfo,
        keys: &ThreadKeys,
        chosen: i64,
        row: i64,
    ) -> Result<(), sqlx::Error> {
        let related = related_tickets(&self.known, keys, channel.team_id, chosen);
        for other in related.into_iter().take(MAX_LINKS) {
            let (earlier, later) = (chosen.min(other), chosen.max(other));
            if !self.linked.insert((earlier, later)) {
                continue;
            }
            let (Some(a), Some(b)) = (
                self.known.tickets.get(&earlier).cloned(),
                self.known.tickets.get(&later).cloned(),
            ) else {
                continue;
            };
            for (on, to) in [(&a, &b), (&b, &a)] {
                let data = json!({ "ticket": to.number, "reason": "late_parent", "message": row });
                self.event(on.id, "related_ticket", data);
            }
            let requester = self.requester(conn, a.id).await?;
            let merge = self
                .dir
                .pipeline_by_id(b.pipeline_id)
                .is_some_and(|p| p.merge_late_parents)
                && requester.is_some()
                && requester == self.requester(conn, b.id).await?
                && !Snapshot::agent_touched(conn, b.id).await?
                && Snapshot::lock_live(conn, self.writer.backend(), &[a.id, b.id]).await?
                    == [a.id, b.id];
            if merge {
                self.writer.merges.push((b.id, a.id));
                if let Some(state) = self.known.tickets.get_mut(&b.id) {
                    state.merged_into = Some(a.id);
                }
                self.event(
                    a.id,
                    "merged",
                    json!({ "from": b.number, "reason": "late_parent" }),
                );
                self.event(
                    b.id,
                    "merged",
                    json!({ "into": a.number, "reason": "late_parent" }),
                );
            }
        }
        Ok(())
    }

    /// The requester of a ticket, also of one opened in this batch.
    async fn requester(
        &self,
        conn: &mut AnyConnection,
        ticket: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        match self.writer.tickets.iter().find(|t| t.id == ticket) {
            Some(new) => Ok(new.requester),
            None => Snapshot::requester(conn, ticket).await,
        }
    }

    /// Whether the sender already takes part in `ticket`: a contact of it
    /// (also earlier in this batch), one of our agents, or an address the
    /// conversation named in To or Cc.
    async fn is_participant(
        &mut self,
        conn: &mut AnyConnection,
        ticket: i64,
        contact: i64,
        sender: &str,
    ) -> Result<bool, sqlx::Error> {
        let known = &self.known;
        // Also a participant of a ticket merged into this one.
        let takes_part = known.participants.contains(&(ticket, contact))
            || known
                .participants
                .iter()
                .any(|&(t, c)| c == contact && known.live_ticket(t) == Some(ticket));
        if takes_part || self.dir.agents.values().any(|a| a.email == sender) {
            return Ok(true);
        }
        let named = Snapshot::addressed_on_ticket(conn, ticket, sender).await?;
        if named {
            self.known.participants.insert((ticket, contact));
        }
        Ok(named)
    }

    /// Stores the message (on `ticket_id`, or recorded without one), with
    /// `flag`: one of the ticket's (not of the message's own headers)
    /// stored beside its own.
    #[allow(clippy::too_many_arguments)]
    async fn add_message(
        &mut self,
        conn: &mut AnyConnection,
        ticket_id: Option<i64>,
        channel: &'a ChannelInfo,
        inbound: &'a Inbound,
        contact: Option<i64>,
        flag: Option<&'static str>,
        remaining: usize,
    ) -> Result<i64, sqlx::Error> {
        let id = self
            .writer
            .reserve_id(conn, "messages", remaining.min(256))
            .await?;
        let m = &inbound.parsed;
        if let Some(ticket_id) = ticket_id {
            self.known.messages.insert(
                (channel.team_id, m.message_id.clone()),
                (ticket_id, "inbound".into()),
            );
            if let (Some(root), Some(from)) = (&m.thread_index_root, &m.from) {
                let key = (channel.team_id, root.clone(), from.address.clone());
                self.known.thread_roots.insert(key, ticket_id);
            }
        }
        if let Some(ticket) = ticket_id {
            self.record_parents(channel.team_id, m, id, ticket);
        }
        let mut row = message_row(id, ticket_id, channel, m, contact);
        if let Some(flag) = flag {
            row.flags = [row.flags.as_str(), flag]
                .iter()
                .filter(|f| !f.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(",");
        }
        self.writer.messages.push(row);
        self.writer
            .attachments
            .extend(m.attachments.iter().map(|a| AttachmentRow {
                message_id: id,
                sha256: &a.sha256,
                filename: &a.filename,
                content_type: &a.content_type,
                size: a.data.len() as i64,
                content_id: a.content_id.as_deref(),
                inline: a.inline,
            }));
        Ok(id)
    }

    /// A bounce marks the outbound messages it reports on as failed.
    async fn mark_bounced(
        &mut self,
        conn: &mut AnyConnection,
        channel: &ChannelInfo,
        message: &ParsedMessage,
    ) -> Result<(), sqlx::Error> {
        let detail = bounce_detail(message);
        let ids = &message.flags.bounced_message_ids;
        let ids = &ids[..ids.len().min(MAX_BOUNCED_IDS)];
        let failed = self
            .writer
            .mark_bounced(conn, channel.team_id, ids, &detail)
            .await?;
        for (message_id, ticket_id) in failed {
            self.bounced.push((message_id, ticket_id, detail.clone()));
        }
        Ok(())
    }

    fn event(&mut self, ticket_id: i64, kind: &'static str, data: serde_json::Value) {
        self.writer.events.push((ticket_id, kind, data.to_string()));
    }

    fn receipt(
        &mut self,
        channel: &ChannelInfo,
        inbound: &Inbound,
        outcome: &Outcome,
        message_row: Option<i64>,
    ) {
        let fingerprint = inbound.parsed.fingerprint.clone();
        self.known
            .receipts
            .insert((channel.team_id, fingerprint.clone()), outcome.ticket_id());
        self.writer.receipts.push(ReceiptRow {
            team_id: channel.team_id,
            fingerprint,
            channel_id: channel.id,
            source: inbound.source.clone(),
            outcome: outcome.name(),
            ticket_id: outcome.ticket_id(),
            message_id: message_row,
        });
    }
}

fn keys_sender(message: &ParsedMessage) -> Option<&str> {
    message.from.as_ref().map(|f| f.address.as_str())
}

impl Batch<'_> {
    /// Records the message's nearest parents for reverse lookup, in the
    /// store and for the rest of the batch (a parent may follow its reply
    /// in the same batch). A parent already stored on a live ticket of the
    /// team is left out: it will not arrive late, and a copy of it finds
    /// its ticket by its own Message-ID. Almost every reply names only such
    /// parents, and each row is an index page written at random.
    fn record_parents(&mut self, team: i64, m: &ParsedMessage, row: i64, ticket: i64) {
        let stored_on_live_ticket = |id: &String| {
            self.known
                .messages
                .get(&(team, id.clone()))
                .and_then(|(t, _)| self.known.live_ticket_of_team(*t, team))
                .is_some()
        };
        let mut parents: Vec<&String> = Vec::new();
        for id in m.in_reply_to.iter().chain(m.references.iter().rev()) {
            if *id != m.message_id
                && !parents.contains(&id)
                && parents.len() < MAX_RECORDED_PARENTS
                && !stored_on_live_ticket(id)
            {
                parents.push(id);
            }
        }
        for id in parents {
            self.writer.refs.push((team, id.clone(), ticket, row));
            let tickets = self.known.referrers.entry((team, id.clone())).or_default();
            if !tickets.contains(&ticket) {
                tickets.push(ticket);
            }
        }
    }
}

/// Stored in `messages.flags` for mail from an agent (or carrying a reply
/// token) until it is verified; see `desk::agent_mail`.
pub const AGENT_MAIL: &str = "agent_mail";

/// Reply tokens longer than this are not looked at.
const MAX_TOKEN_LEN: usize = 80;

/// For a message that is mail from an agent, the reply tokens in its
/// recipient addresses (`team+<token>@…`); `None` for anyone else's mail.
/// Automatic mail is never an agent's answer (an agent's out-of-office
/// that answers a notification is recorded, not relayed).
fn agent_tokens(dir: &Directory, message: &ParsedMessage) -> Option<Vec<String>> {
    if message.flags.is_automatic() {
        return None;
    }
    let mut tokens: Vec<String> = Vec::new();
    for token in reply_tokens(dir, message) {
        if !tokens.iter().any(|t| *t == token) {
            tokens.push(token.to_string());
        }
    }
    let sender = keys_sender(message)?;
    let from_agent = dir.agents.values().any(|a| a.email == sender);
    (from_agent || !tokens.is_empty()).then_some(tokens)
}

/// The `+detail` parts of team addresses among the recipients, where a
/// reply token would be.
pub(crate) fn reply_tokens<'m>(
    dir: &'m Directory,
    message: &'m ParsedMessage,
) -> impl Iterator<Item = &'m str> + 'm {
    message
        .delivered_to
        .iter()
        .chain(&message.to)
        .chain(&message.cc)
        .filter_map(move |mailbox| {
            let (base, detail) = crate::mail::token::split_detail(&mailbox.address)?;
            (dir.team_addresses.contains_key(&base) && detail.len() <= MAX_TOKEN_LEN)
                .then_some(detail)
        })
}

/// Stored in `messages.flags` for a message from someone the ticket did not
/// know: an agent decides whether they are in the conversation.
pub const NEW_PARTICIPANT: &str = "new_participant";

fn message_row<'a>(
    id: i64,
    ticket_id: Option<i64>,
    channel: &ChannelInfo,
    m: &'a ParsedMessage,
    contact: Option<i64>,
) -> MessageRow<'a> {
    MessageRow {
        id,
        ticket_id,
        team_id: channel.team_id,
        channel_id: channel.id,
        author_contact_id: contact,
        message_id: &m.message_id,
        synthetic_id: m.synthetic_id,
        in_reply_to: &m.in_reply_to,
        references: &m.references,
        from: m.from.as_ref(),
        to: &m.to,
        cc: &m.cc,
        reply_to: m.reply_to.as_ref().map(|r| r.address.as_str()),
        subject: &m.subject,
        body_text: &m.body_text,
        body_html: m.body_html.as_deref(),
        flags: m.flags.to_db(),
        thread_index_root: m.thread_index_root.as_deref(),
        fingerprint: &m.fingerprint,
        raw_sha256: &m.raw_sha256,
        sent_at: m.date,
    }
}

/// What a bounce says went wrong: its Diagnostic-Code or Status line, else
/// the start of its human-readable part.
fn bounce_detail(message: &ParsedMessage) -> String {
    if let Some(reason) = &message.flags.bounce_reason {
        return format!("bounced: {reason}");
    }
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
