//! Threading keys: which stored messages or tickets an inbound message may
//! continue. Pure; `apply` resolves the keys against the store in order:
//!
//! 1. Message-IDs (ours or stored inbound ones) in In-Reply-To, then
//!    References nearest parent first — the message's own Message-ID first of
//!    all, so the same ID with a different body lands on the same ticket.
//! 2. A `[#number]` subject tag, only when the sender already takes part in
//!    that ticket (a stranger's "Re: [#12]" does not get into someone else's
//!    ticket).
//! 3. An Outlook Thread-Index continuing a conversation from the same sender
//!    (Outlook replies without References).
//! 4. Otherwise a new ticket.
//!
//! A changed subject does not break a thread: if the references say the
//! message continues a ticket, it does, whatever its subject now says.

use super::parse::{subject_tag, ParsedMessage};

/// Upper bound on Message-IDs looked up per message. References chains can be
/// very long; the nearest parents are the ones that matter.
pub const MAX_REFERENCES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadKeys {
    /// Candidate Message-IDs, most specific first, without duplicates.
    pub message_ids: Vec<String>,
    pub subject_tag: Option<i64>,
    pub thread_index_root: Option<String>,
}

pub fn thread_keys(message: &ParsedMessage) -> ThreadKeys {
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
    ThreadKeys {
        message_ids: ids,
        subject_tag: subject_tag(&message.subject),
        thread_index_root: message.thread_index_root.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse::parse;

    #[test]
    fn nearest_parent_comes_first() {
        let raw = b"Message-ID: <c@x>\nIn-Reply-To: <b@x>\nReferences: <a@x> <b@x>\nFrom: a@x.test\nSubject: Re: [#5] hi\n\nbody\n";
        let keys = thread_keys(&parse(raw).unwrap());
        assert_eq!(keys.message_ids, vec!["c@x", "b@x", "a@x"]);
        assert_eq!(keys.subject_tag, Some(5));
    }

    #[test]
    fn synthetic_ids_are_not_thread_keys() {
        let keys = thread_keys(&parse(b"From: a@x.test\nSubject: hi\n\nbody\n").unwrap());
        assert!(keys.message_ids.is_empty());
    }

    #[test]
    fn long_chains_are_bounded() {
        let refs: Vec<String> = (0..500).map(|i| format!("<r{i}@x>")).collect();
        let raw = format!(
            "Message-ID: <c@x>\nReferences: {}\nFrom: a@x.test\n\nbody\n",
            refs.join(" ")
        );
        let keys = thread_keys(&parse(raw.as_bytes()).unwrap());
        assert_eq!(keys.message_ids.len(), MAX_REFERENCES);
        assert_eq!(keys.message_ids[1], "r499@x");
    }
}
