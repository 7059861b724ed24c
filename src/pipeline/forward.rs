//! An agent forwarding a customer's mail to a team address: the ticket is
//! the customer's, so the forward is unwrapped into the original (its
//! sender as the contact, its subject, body and files) and remembered as
//! brought in by the agent. Two shapes: the original attached as
//! `message/rfc822`, or inline below a "Forwarded message" block in the
//! style of Gmail, Outlook, Apple Mail or Thunderbird.
//!
//! Only mail whose From is an agent, that is not automatic and carries no
//! reply token (that is an answer, `desk::agent_mail`). A forward by
//! anyone else is an ordinary message.

use super::parse::{self, ParsedMessage};
use crate::mail::Mailbox;
use crate::store::Directory;

/// The lines that open an inline forwarded message, lower-cased, after
/// dashes and underscores are trimmed.
const MARKERS: &[&str] = &[
    "forwarded message",
    "original message",
    "begin forwarded message:",
    "weitergeleitete nachricht",
    "ursprüngliche nachricht",
    "anfang der weitergeleiteten nachricht:",
    "message transféré",
    "message d'origine",
    "début du message réexpédié :",
    "début du message réexpédié:",
    "mensaje reenviado",
    "mensaje original",
    "messaggio inoltrato",
    "messaggio originale",
    "doorgestuurd bericht",
    "oorspronkelijk bericht",
    "mensagem encaminhada",
    "mensagem original",
];

/// Header names of an inline block, by what they mean.
const FROM: &[&str] = &["from", "von", "de", "da", "van"];
const SUBJECT: &[&str] = &[
    "subject",
    "betreff",
    "objet",
    "asunto",
    "oggetto",
    "onderwerp",
    "assunto",
];
const OTHER: &[&str] = &[
    "date",
    "sent",
    "to",
    "cc",
    "reply-to",
    "datum",
    "gesendet",
    "an",
    "envoyé",
    "à",
    "fecha",
    "enviado",
    "para",
    "data",
    "inviato",
    "a",
    "verzonden",
    "aan",
];

/// When `message` is an agent's forward: the original in its place, and
/// the agent's id.
pub fn unwrap(
    dir: &Directory,
    message: &ParsedMessage,
    has_token: bool,
) -> Option<(ParsedMessage, i64)> {
    if has_token || message.flags.is_automatic() {
        return None;
    }
    let sender = message.from.as_ref()?.address.as_str();
    let agent = dir.agents.values().find(|a| a.email == sender)?;
    let original = attached(message).or_else(|| inline(message))?;
    Some((original, agent.id))
}

/// The first attached `message/rfc822` that parses and has a sender.
fn attached(message: &ParsedMessage) -> Option<ParsedMessage> {
    let (index, part) = message
        .attachments
        .iter()
        .enumerate()
        .find(|(_, a)| a.content_type.eq_ignore_ascii_case("message/rfc822"))?;
    let inner = parse::parse(&part.data).ok()?;
    inner.from.as_ref()?;
    let mut original = message.clone();
    original.from = inner.from;
    original.reply_to = inner.reply_to;
    original.subject = inner.subject;
    original.date = inner.date.or(message.date);
    original.body_text = inner.body_text;
    original.body_html = inner.body_html;
    original.message_id = inner.message_id;
    original.synthetic_id = inner.synthetic_id;
    original.in_reply_to = inner.in_reply_to;
    original.references = inner.references;
    original.thread_index_root = inner.thread_index_root;
    // The original's files, and what else the agent attached.
    original.attachments = inner.attachments;
    original.attachments.extend(
        message
            .attachments
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, a)| a.clone()),
    );
    original.flags.forwarded = true;
    Some(original)
}

/// An inline block: the marker line, header lines, a blank line, the body.
fn inline(message: &ParsedMessage) -> Option<ParsedMessage> {
    let lines: Vec<&str> = message.body_text.lines().collect();
    let mut at = header_start(&lines)?;
    let mut from = None;
    let mut subject = None;
    while at < lines.len() {
        let line = lines[at].trim();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            break;
        };
        let name = name.trim().trim_matches('*').trim().to_lowercase();
        let value = value.trim().trim_matches('*').trim();
        if FROM.contains(&name.as_str()) {
            from = mailbox(value);
        } else if SUBJECT.contains(&name.as_str()) {
            subject = Some(value.to_string());
        } else if !OTHER.contains(&name.as_str()) {
            break;
        }
        at += 1;
    }
    let from = from?;
    let body = lines[at..].join("\n").trim().to_string();
    let mut original = message.clone();
    original.from = Some(from);
    original.reply_to = None;
    original.subject = subject.unwrap_or_else(|| without_prefix(&message.subject));
    original.body_text = body;
    original.body_html = None;
    // Not the original's: it was the agent's. Nothing to thread on.
    original.in_reply_to.clear();
    original.references.clear();
    original.thread_index_root = None;
    original.flags.forwarded = true;
    Some(original)
}

/// Where the forwarded header lines begin: after a marker line, after
/// Outlook's rule of underscores, or at a bare `From:` line that a
/// `Sent:`/`Date:` line follows (Outlook without a rule).
fn header_start(lines: &[&str]) -> Option<usize> {
    let next_filled = |from: usize| (from..lines.len()).find(|&i| !lines[i].trim().is_empty());
    let names = |line: &str, names: &[&str]| {
        line.split_once(':').is_some_and(|(name, _)| {
            names.contains(&name.trim().trim_matches('*').trim().to_lowercase().as_str())
        })
    };
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if is_marker(line) {
            return next_filled(i + 1);
        }
        let rule = trimmed.len() >= 10 && trimmed.chars().all(|c| c == '_');
        if rule && next_filled(i + 1).is_some_and(|n| names(lines[n], FROM)) {
            return next_filled(i + 1);
        }
        let dated = |n: usize| {
            lines
                .get(n)
                .is_some_and(|l| names(l, &["sent", "date", "gesendet", "envoyé", "enviado"]))
        };
        if names(line, FROM) && dated(i + 1) {
            return Some(i);
        }
    }
    None
}

fn is_marker(line: &str) -> bool {
    let trimmed = line
        .trim()
        .trim_matches(|c: char| c == '-' || c == '_' || c.is_whitespace())
        .to_lowercase();
    !trimmed.is_empty() && MARKERS.contains(&trimmed.as_str())
}

/// `Name <addr>`, `"Name" <addr>`, `addr`, or Outlook's `Name [mailto:addr]`.
fn mailbox(value: &str) -> Option<Mailbox> {
    let value = match value.split_once("[mailto:") {
        Some((name, rest)) => format!("{} <{}>", name.trim(), rest.trim_end_matches(']')),
        None => value.to_string(),
    };
    parse::mailbox_of(&value)
}

/// The subject without the forward's `Fwd:`/`Fw:`/`WG:`/`TR:`/`RV:` prefixes.
fn without_prefix(subject: &str) -> String {
    let mut rest = subject.trim();
    loop {
        let lower = rest.to_lowercase();
        let Some(prefix) = ["fwd:", "fw:", "wg:", "tr:", "rv:", "doorst:", "enc:"]
            .iter()
            .find(|p| lower.starts_with(*p))
        else {
            return rest.to_string();
        };
        rest = rest[prefix.len()..].trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_of_the_common_clients() {
        for line in [
            "---------- Forwarded message ---------",
            "-------- Original Message --------",
            "-----Original Message-----",
            "Begin forwarded message:",
            "-------- Weitergeleitete Nachricht --------",
            "---------- Message transféré ---------",
        ] {
            assert!(is_marker(line), "{line}");
        }
        assert!(!is_marker("----"));
        assert!(!is_marker("I forwarded the message yesterday"));
    }

    #[test]
    fn forward_prefixes_go() {
        assert_eq!(without_prefix("Fwd: FW: Printer"), "Printer");
        assert_eq!(without_prefix("WG: Drucker"), "Drucker");
        assert_eq!(without_prefix("Printer"), "Printer");
    }

    #[test]
    fn outlook_mailto_form_is_read() {
        let m = mailbox("Carol Customer [mailto:carol@customer.test]").unwrap();
        assert_eq!(m.address, "carol@customer.test");
        assert_eq!(m.name.as_deref(), Some("Carol Customer"));
        let m = mailbox("\"Carol\" <Carol@Customer.test>").unwrap();
        assert_eq!(m.address, "carol@customer.test");
    }
}
