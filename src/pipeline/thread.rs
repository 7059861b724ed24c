//! The threading decision, pure: which ticket an inbound message continues,
//! decided over a [`Snapshot`] of what the store knows (fetched for the whole
//! batch beforehand, and kept up to date as the batch is applied). First
//! match wins:
//!
//! 0. The message's own Message-ID is one of our outbound messages: an echo
//!    (a Bcc to the team mailbox), recorded as a duplicate.
//! 1. Our own Message-IDs (HMAC-tagged) in In-Reply-To or References: the
//!    ticket id in them is verified, so no stored message is needed. Only a
//!    ticket of the receiving team counts.
//! 2. Stored Message-IDs: the message's own, then In-Reply-To, then
//!    References nearest parent first, then those a bounce reports on.
//! 3. Reverse: a stored message names this message's own ID as a parent
//!    (the reply arrived first). The oldest such ticket wins; the others
//!    are related tickets ([`related_tickets`]).
//! 4. The body marker of one of our replies quoted back (providers that
//!    rewrite Message-IDs). A weak match: the sender may be anyone who saw
//!    the quote, so they do not become a participant.
//! 5. A `[#number]` subject tag, only when the sender already takes part in
//!    that ticket (a stranger's "Re: [#12]" does not get into someone
//!    else's ticket).
//! 6. An Outlook Thread-Index continuing a conversation from the same sender.
//! 7. Opt-in per pipeline: the same sender's one open, recent ticket with
//!    the same base subject, for a message with no threading headers
//!    ([`subject_fallback`], applied by `apply`).
//! 8. Otherwise a new ticket (if the channel creates tickets).
//!
//! Which ticket a message joins does not decide who hears back: a sender
//! the ticket does not know is flagged `new_participant` (see `apply`).
//! docs/THREADING.md has the rules with examples.
//!
//! Merged tickets resolve to the surviving ticket; deleted ones count for
//! nothing. A changed subject does not break a thread: references win.

use super::parse::{base_subject, subject_tag, ParsedMessage};
use crate::config::{FollowUp, StatusKind};
use crate::mail::ids;
use crate::store::directory::PipelineInfo;
use crate::store::inbound::{Snapshot, TicketState};

/// Upper bound on Message-IDs looked up per message. References chains can be
/// very long; the nearest parents are the ones that matter.
pub const MAX_REFERENCES: usize = 64;

/// Everything about a message that can tie it to a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadKeys {
    /// The message's own Message-ID (none when synthetic).
    pub own_id: Option<String>,
    /// Candidate Message-IDs, most specific first, without duplicates.
    pub message_ids: Vec<String>,
    /// Tickets named by our own (verified) Message-IDs among them, in order.
    pub our_tickets: Vec<i64>,
    /// The ticket named by a verified body marker.
    pub marker_ticket: Option<i64>,
    pub subject_tag: Option<i64>,
    pub thread_index_root: Option<String>,
    /// The sender's address.
    pub sender: Option<String>,
    /// The subject without reply prefixes and tags, for the opt-in
    /// subject-and-sender fallback.
    pub base_subject: String,
    /// Neither In-Reply-To nor References: a reply that lost its headers,
    /// or a new message.
    pub unthreaded: bool,
    pub automatic: bool,
}

/// The thread keys of `message`; `secret` verifies our own identifiers.
pub fn thread_keys(message: &ParsedMessage, secret: &[u8]) -> ThreadKeys {
    let mut ids: Vec<String> = Vec::new();
    let mut push = |id: &String| {
        if !id.is_empty() && !ids.contains(id) && ids.len() < MAX_REFERENCES {
            ids.push(id.clone());
        }
    };
    if !message.synthetic_id {
        push(&message.message_id);
    }
    message.in_reply_to.iter().for_each(&mut push);
    message.references.iter().rev().for_each(&mut push);
    // A bounce continues the conversation of the message it reports on.
    message.flags.bounced_message_ids.iter().for_each(&mut push);
    let our_tickets = ids
        .iter()
        .filter_map(|id| ids::ticket_of_message_id(secret, id))
        .collect();
    ThreadKeys {
        own_id: (!message.synthetic_id).then(|| message.message_id.clone()),
        our_tickets,
        marker_ticket: ids::ticket_of_body(
            secret,
            &message.body_text,
            message.body_html.as_deref(),
        )
        .or_else(|| ids::ticket_of_body(secret, &message.cut_tail, None)),
        message_ids: ids,
        subject_tag: subject_tag(&message.subject),
        thread_index_root: message.thread_index_root.clone(),
        sender: message.from.as_ref().map(|f| f.address.clone()),
        base_subject: base_subject(&message.subject),
        unthreaded: message.in_reply_to.is_empty() && message.references.is_empty(),
        automatic: message.flags.is_automatic(),
    }
}

/// What the threading rules found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The message continues this (live) ticket. `weak`: matched only by a
    /// body marker, so the sender does not become a participant.
    Ticket {
        id: i64,
        weak: bool,
    },
    /// Our own outbound message came back in (a Bcc to the team mailbox).
    Echo(i64),
    None,
}

/// Applies the threading rules for a message to `team_id`, in order.
pub fn find_ticket(known: &Snapshot, keys: &ThreadKeys, team_id: i64) -> Found {
    if let Some((ticket, direction)) = keys
        .own_id
        .as_ref()
        .and_then(|id| known.messages.get(&(team_id, id.clone())))
    {
        if direction == "outbound" {
            return Found::Echo(*ticket);
        }
    }
    let strong = |id| Found::Ticket { id, weak: false };
    for ticket in &keys.our_tickets {
        if let Some(live) = known.live_ticket_of_team(*ticket, team_id) {
            return strong(live);
        }
    }
    for id in &keys.message_ids {
        if let Some((ticket, _)) = known.messages.get(&(team_id, id.clone())) {
            if let Some(live) = known.live_ticket(*ticket) {
                return strong(live);
            }
        }
    }
    if let Some(live) = late_parent_of(known, keys, team_id).into_iter().min() {
        return strong(live);
    }
    if let Some(live) = keys
        .marker_ticket
        .and_then(|t| known.live_ticket_of_team(t, team_id))
    {
        return Found::Ticket {
            id: live,
            weak: true,
        };
    }
    let Some(sender) = keys.sender.clone() else {
        return Found::None;
    };
    let tagged = keys
        .subject_tag
        .and_then(|number| known.tagged.get(&(team_id, number, sender.clone())));
    if let Some(live) = tagged.and_then(|t| known.live_ticket(*t)) {
        return strong(live);
    }
    let threaded = keys
        .thread_index_root
        .as_ref()
        .and_then(|root| known.thread_roots.get(&(team_id, root.clone(), sender)));
    if let Some(live) = threaded.and_then(|t| known.live_ticket(*t)) {
        return strong(live);
    }
    Found::None
}

/// The live tickets of `team_id` whose messages name this message's own ID
/// as a parent.
fn late_parent_of(known: &Snapshot, keys: &ThreadKeys, team_id: i64) -> Vec<i64> {
    let Some(own) = &keys.own_id else {
        return Vec::new();
    };
    let mut tickets: Vec<i64> = known
        .referrers
        .get(&(team_id, own.clone()))
        .into_iter()
        .flatten()
        .filter_map(|t| known.live_ticket_of_team(*t, team_id))
        .collect();
    tickets.sort_unstable();
    tickets.dedup();
    tickets
}

/// Other live tickets this message shows to be the same conversation as
/// `chosen`: tickets of replies that arrived before it (it is their late
/// parent). Never merged silently: the caller records the link (or merges
/// when the pipeline says so).
pub fn related_tickets(known: &Snapshot, keys: &ThreadKeys, team_id: i64, chosen: i64) -> Vec<i64> {
    late_parent_of(known, keys, team_id)
        .into_iter()
        .filter(|t| *t != chosen)
        .collect()
}

/// The opt-in fallback after every other rule: a message with no threading
/// headers, not automatic, from `contact`, whose base subject is that of
/// exactly one open ticket of `team_id` the contact takes part in, last
/// written to at or after `since` (unix ms). Several matches: none (a new
/// ticket is safer than a guess).
pub fn subject_fallback(
    known: &Snapshot,
    keys: &ThreadKeys,
    team_id: i64,
    contact: i64,
    since: i64,
) -> Option<i64> {
    if !keys.unthreaded || keys.automatic || keys.base_subject.is_empty() {
        return None;
    }
    let mut matches: Vec<i64> = known
        .subject_candidates
        .iter()
        .filter(|c| {
            c.team_id == team_id
                && c.contact_id == contact
                && c.last_at >= since
                && c.base_subject == keys.base_subject
        })
        .filter_map(|c| known.live_ticket_of_team(c.ticket_id, team_id))
        .collect();
    matches.sort_unstable();
    matches.dedup();
    match matches.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// What a message that continues a ticket does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continue {
    /// Added to the ticket; `reopen` moves a waiting or closed ticket back
    /// to the pipeline's open status.
    Append { reopen: bool },
    /// A follow-up ticket is opened instead (the old one stays closed).
    FollowUp,
}

/// The pipeline's rule for a message on `ticket` (in a status of `kind`).
/// A person writing to a waiting or closed ticket reopens it; automatic
/// mail (auto-replies, bounces, lists) never changes a status. A reply to a
/// closed ticket opens a follow-up ticket when the pipeline says so (and,
/// with `new_ticket_after_days`, only once it has been closed that long).
pub fn continue_ticket(
    ticket: &TicketState,
    kind: StatusKind,
    pipeline: &PipelineInfo,
    automatic: bool,
    now: i64,
) -> Continue {
    let closed_days = (now - ticket.status_changed_at) / 86_400_000;
    let follow_up = kind == StatusKind::Closed
        && !automatic
        && pipeline.follow_up == FollowUp::NewTicket
        && pipeline
            .new_ticket_after_days
            .is_none_or(|days| closed_days >= i64::from(days));
    if follow_up {
        Continue::FollowUp
    } else {
        Continue::Append {
            reopen: kind != StatusKind::Open && !automatic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse::parse;

    const SECRET: &[u8] = b"test secret";
    const TEAM: i64 = 1;
    const OTHER_TEAM: i64 = 2;

    fn keys(raw: &str) -> ThreadKeys {
        thread_keys(&parse(raw.as_bytes()).unwrap(), SECRET)
    }

    fn ticket(id: i64, team_id: i64) -> TicketState {
        TicketState {
            id,
            number: id + 100,
            team_id,
            pipeline_id: 1,
            status_id: 1,
            status_changed_at: 0,
            merged_into: None,
            deleted_at: None,
        }
    }

    fn known(tickets: &[TicketState]) -> Snapshot {
        let mut known = Snapshot::default();
        for t in tickets {
            known.tickets.insert(t.id, t.clone());
        }
        known
    }

    fn pipeline(follow_up: FollowUp, after_days: Option<u32>) -> PipelineInfo {
        PipelineInfo {
            id: 1,
            key: "p".into(),
            default_status: 1,
            reopen_status: 1,
            follow_up,
            new_ticket_after_days: after_days,
            status_after_reply: None,
            merge_late_parents: false,
            thread_by_subject_days: None,
        }
    }

    #[test]
    fn nearest_parent_comes_first() {
        let raw = "Message-ID: <c@x>\nIn-Reply-To: <b@x>\nReferences: <a@x> <b@x>\nFrom: a@x.test\nSubject: Re: [#5] hi\n\nbody\n";
        let keys = keys(raw);
        assert_eq!(keys.message_ids, vec!["c@x", "b@x", "a@x"]);
        assert_eq!(keys.subject_tag, Some(5));
        assert_eq!(keys.sender.as_deref(), Some("a@x.test"));
    }

    /// Deliberately unlike JWZ and RFC 5256 (which take the last References
    /// entry as the parent): In-Reply-To names the message answered.
    #[test]
    fn in_reply_to_wins_when_references_disagree() {
        let raw = "Message-ID: <c@x>\nIn-Reply-To: <answered@x>\nReferences: <root@x> <other@x>\nFrom: a@x.test\n\nbody\n";
        let mut known = known(&[ticket(1, TEAM), ticket(2, TEAM)]);
        known
            .messages
            .insert((TEAM, "answered@x".into()), (1, "inbound".into()));
        known
            .messages
            .insert((TEAM, "other@x".into()), (2, "inbound".into()));
        assert_eq!(
            find_ticket(&known, &keys(raw), TEAM),
            Found::Ticket { id: 1, weak: false }
        );
    }

    #[test]
    fn synthetic_ids_are_not_thread_keys() {
        let keys = keys("From: a@x.test\nSubject: hi\n\nbody\n");
        assert!(keys.message_ids.is_empty());
        assert_eq!(keys.own_id, None);
    }

    #[test]
    fn long_chains_are_bounded() {
        let refs: Vec<String> = (0..500).map(|i| format!("<r{i}@x>")).collect();
        let raw = format!(
            "Message-ID: <c@x>\nReferences: {}\nFrom: a@x.test\n\nbody\n",
            refs.join(" ")
        );
        let keys = keys(&raw);
        assert_eq!(keys.message_ids.len(), MAX_REFERENCES);
        assert_eq!(keys.message_ids[1], "r499@x");
    }

    #[test]
    fn our_message_id_threads_without_a_stored_message_but_only_in_its_team() {
        let ours = ids::new_message_id(SECRET, 7, "example.com");
        let raw = format!("Message-ID: <n@x>\nIn-Reply-To: <{ours}>\nFrom: c@x.test\n\nhi\n");
        let keys = keys(&raw);
        assert_eq!(keys.our_tickets, vec![7]);
        assert_eq!(
            find_ticket(&known(&[ticket(7, TEAM)]), &keys, TEAM),
            Found::Ticket { id: 7, weak: false }
        );
        assert_eq!(
            find_ticket(&known(&[ticket(7, OTHER_TEAM)]), &keys, TEAM),
            Found::None
        );
        let forged = raw.replace(".7.", ".8.");
        assert!(super::tests::keys(&forged).our_tickets.is_empty());
    }

    #[test]
    fn stored_ids_thread_per_team_and_follow_merges() {
        let raw = "Message-ID: <n@x>\nReferences: <a@x> <b@x>\nFrom: c@x.test\n\nhi\n";
        let mut merged = ticket(3, TEAM);
        merged.merged_into = Some(4);
        let mut known = known(&[merged, ticket(4, TEAM)]);
        known
            .messages
            .insert((TEAM, "a@x".into()), (3, "inbound".into()));
        assert_eq!(
            find_ticket(&known, &keys(raw), TEAM),
            Found::Ticket { id: 4, weak: false }
        );
        assert_eq!(find_ticket(&known, &keys(raw), OTHER_TEAM), Found::None);
        // The nearest parent wins over an older one.
        known.tickets.insert(5, ticket(5, TEAM));
        known
            .messages
            .insert((TEAM, "b@x".into()), (5, "inbound".into()));
        assert_eq!(
            find_ticket(&known, &keys(raw), TEAM),
            Found::Ticket { id: 5, weak: false }
        );
    }

    #[test]
    fn a_late_parent_joins_the_oldest_ticket_of_its_replies_and_relates_the_rest() {
        let raw = "Message-ID: <p@x>\nFrom: c@x.test\n\nhi\n";
        let mut known = known(&[ticket(7, TEAM), ticket(3, TEAM), ticket(9, OTHER_TEAM)]);
        known.referrers.insert((TEAM, "p@x".into()), vec![7, 3, 9]);
        let keys = keys(raw);
        assert_eq!(
            find_ticket(&known, &keys, TEAM),
            Found::Ticket { id: 3, weak: false }
        );
        assert_eq!(related_tickets(&known, &keys, TEAM, 3), vec![7]);
        // Another team's reply is not this team's conversation.
        assert_eq!(find_ticket(&known, &keys, OTHER_TEAM), Found::None);
        // A stored parent of its own (rule 2) comes first; the replies'
        // ticket is related.
        known.tickets.insert(1, ticket(1, TEAM));
        let raw = "Message-ID: <p@x>\nIn-Reply-To: <root@x>\nFrom: c@x.test\n\nhi\n";
        known
            .messages
            .insert((TEAM, "root@x".into()), (1, "inbound".into()));
        let keys = super::thread_keys(&parse(raw.as_bytes()).unwrap(), SECRET);
        assert_eq!(
            find_ticket(&known, &keys, TEAM),
            Found::Ticket { id: 1, weak: false }
        );
        assert_eq!(related_tickets(&known, &keys, TEAM, 1), vec![3, 7]);
    }

    #[test]
    fn deleted_tickets_count_for_nothing() {
        let mut deleted = ticket(3, TEAM);
        deleted.deleted_at = Some(1);
        let mut known = known(&[deleted]);
        known
            .messages
            .insert((TEAM, "a@x".into()), (3, "inbound".into()));
        let raw = "Message-ID: <n@x>\nIn-Reply-To: <a@x>\nFrom: c@x.test\n\nhi\n";
        assert_eq!(find_ticket(&known, &keys(raw), TEAM), Found::None);
    }

    #[test]
    fn our_own_message_coming_back_is_an_echo() {
        let mut known = known(&[ticket(3, TEAM)]);
        known
            .messages
            .insert((TEAM, "out@x".into()), (3, "outbound".into()));
        let raw = "Message-ID: <out@x>\nFrom: support@example.com\n\nhi\n";
        assert_eq!(find_ticket(&known, &keys(raw), TEAM), Found::Echo(3));
    }

    #[test]
    fn a_quoted_body_marker_is_a_weak_match() {
        let body = format!("Thanks\n> {}", ids::text_marker(SECRET, 9));
        let raw = format!("Message-ID: <n@x>\nFrom: c@x.test\n\n{body}\n");
        let known = known(&[ticket(9, TEAM)]);
        assert_eq!(
            find_ticket(&known, &keys(&raw), TEAM),
            Found::Ticket { id: 9, weak: true }
        );
    }

    #[test]
    fn a_marker_below_the_kept_text_of_a_huge_reply_still_threads() {
        // 2 MiB written above the quote: the kept text stops at 1 MiB.
        let long = "word ".repeat(400_000);
        let body = format!("{long}\n> {}", ids::text_marker(SECRET, 9));
        let raw = format!("Message-ID: <n@x>\nFrom: c@x.test\n\n{body}\n");
        let parsed = crate::pipeline::parse::parse(raw.as_bytes()).unwrap();
        assert!(
            !parsed.body_text.contains("> "),
            "the marker is past the cut"
        );
        let known = known(&[ticket(9, TEAM)]);
        assert_eq!(
            find_ticket(&known, &keys(&raw), TEAM),
            Found::Ticket { id: 9, weak: true }
        );
    }

    #[test]
    fn a_subject_tag_counts_only_for_a_participant() {
        let raw = "Message-ID: <n@x>\nFrom: c@x.test\nSubject: Re: [#103] help\n\nhi\n";
        let mut known = known(&[ticket(3, TEAM)]);
        assert_eq!(find_ticket(&known, &keys(raw), TEAM), Found::None);
        known.tagged.insert((TEAM, 103, "c@x.test".into()), 3);
        assert_eq!(
            find_ticket(&known, &keys(raw), TEAM),
            Found::Ticket { id: 3, weak: false }
        );
        let stranger = raw.replace("c@x.test", "s@x.test");
        assert_eq!(find_ticket(&known, &keys(&stranger), TEAM), Found::None);
    }

    #[test]
    fn an_outlook_conversation_continues_for_the_same_sender() {
        let mut known = known(&[ticket(3, TEAM)]);
        known
            .thread_roots
            .insert((TEAM, "ab".into(), "c@x.test".into()), 3);
        let mut keys = keys("Message-ID: <n@x>\nFrom: c@x.test\n\nhi\n");
        keys.thread_index_root = Some("ab".into());
        assert_eq!(
            find_ticket(&known, &keys, TEAM),
            Found::Ticket { id: 3, weak: false }
        );
        keys.sender = Some("other@x.test".into());
        assert_eq!(find_ticket(&known, &keys, TEAM), Found::None);
    }

    #[test]
    fn references_win_over_tags() {
        let raw = "Message-ID: <n@x>\nIn-Reply-To: <a@x>\nFrom: c@x.test\nSubject: [#104] new topic\n\nhi\n";
        let mut known = known(&[ticket(3, TEAM), ticket(4, TEAM)]);
        known
            .messages
            .insert((TEAM, "a@x".into()), (3, "inbound".into()));
        known.tagged.insert((TEAM, 104, "c@x.test".into()), 4);
        assert_eq!(
            find_ticket(&known, &keys(raw), TEAM),
            Found::Ticket { id: 3, weak: false }
        );
    }

    #[test]
    fn a_person_reopens_and_automatic_mail_does_not() {
        let t = ticket(1, TEAM);
        let reopen = pipeline(FollowUp::Reopen, None);
        let append = |reopen| Continue::Append { reopen };
        let cases = [
            (StatusKind::Open, false, append(false)),
            (StatusKind::Waiting, false, append(true)),
            (StatusKind::Closed, false, append(true)),
            (StatusKind::Waiting, true, append(false)),
            (StatusKind::Closed, true, append(false)),
        ];
        for (kind, automatic, expected) in cases {
            assert_eq!(continue_ticket(&t, kind, &reopen, automatic, 0), expected);
        }
    }

    #[test]
    fn follow_up_policy_opens_a_new_ticket_only_when_closed_long_enough() {
        let day = 86_400_000;
        let t = ticket(1, TEAM);
        let always = pipeline(FollowUp::NewTicket, None);
        assert_eq!(
            continue_ticket(&t, StatusKind::Closed, &always, false, 0),
            Continue::FollowUp
        );
        assert_eq!(
            continue_ticket(&t, StatusKind::Waiting, &always, false, 0),
            Continue::Append { reopen: true }
        );
        assert_eq!(
            continue_ticket(&t, StatusKind::Closed, &always, true, 0),
            Continue::Append { reopen: false }
        );
        let after_week = pipeline(FollowUp::NewTicket, Some(7));
        assert_eq!(
            continue_ticket(&t, StatusKind::Closed, &after_week, false, 6 * day),
            Continue::Append { reopen: true }
        );
        assert_eq!(
            continue_ticket(&t, StatusKind::Closed, &after_week, false, 7 * day),
            Continue::FollowUp
        );
    }
}
