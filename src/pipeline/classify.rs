//! Recognises mail that no person wrote: auto-replies (RFC 3834 and vendor
//! variants), bounces (DSN, RFC 3464) and list/bulk mail. Such mail is stored
//! but never reopens a ticket or triggers an automatic answer.

use mail_parser::{HeaderValue, Message, MimeHeaders, PartType};

use crate::mail::ids::clean_id;

/// What kind of automatic mail a message is. Several can be true at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub auto_reply: bool,
    pub bounce: bool,
    pub bulk: bool,
    /// An abuse/feedback (ARF) or DMARC report: kept and countable, never
    /// a ticket of its own.
    pub report: bool,
    /// Carries our own loop header: mailroom sent it (a notification or an
    /// answer to an agent) and it came back in. Recorded, never answered.
    pub own_loop: bool,
    /// An agent forwarded it in; this is the original (`pipeline::forward`).
    pub forwarded: bool,
    /// For a bounce: Message-IDs of the message(s) it reports on.
    pub bounced_message_ids: Vec<String>,
    /// For a bounce: the failed recipient, status and diagnostic, as far
    /// as the report or the MTA's text says them.
    pub bounce_reason: Option<String>,
}

impl Flags {
    /// True when a person did not write this message.
    pub fn is_automatic(&self) -> bool {
        self.auto_reply || self.bounce || self.bulk || self.report || self.own_loop
    }

    /// Comma-separated names, as stored in `messages.flags`.
    pub fn to_db(&self) -> String {
        self.names().join(",")
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.auto_reply {
            names.push("auto_reply");
        }
        if self.bounce {
            names.push("bounce");
        }
        if self.bulk {
            names.push("bulk");
        }
        if self.report {
            names.push("report");
        }
        if self.own_loop {
            names.push("loop");
        }
        if self.forwarded {
            names.push("forwarded");
        }
        names
    }
}

fn header_text<'a>(message: &'a Message<'_>, name: &'a str) -> Option<&'a str> {
    message.header_raw(name).map(str::trim)
}

/// What the headers say about who sent a message, read once.
struct Signals {
    subject: String,
    precedence: String,
    report_type: Option<String>,
    null_return_path: bool,
    /// The sender's local part, lower-case.
    sender_local: String,
    sender_name: String,
    sender_address: String,
}

fn signals(message: &Message<'_>) -> Signals {
    let sender = message.from().and_then(|a| a.first());
    let sender_address = sender
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_ascii_lowercase();
    Signals {
        subject: message
            .subject()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
        precedence: header_text(message, "Precedence")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default(),
        report_type: message.content_type().and_then(|ct| {
            let report = ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"));
            report.then(|| {
                ct.attribute("report-type")
                    .unwrap_or_default()
                    .to_ascii_lowercase()
            })
        }),
        null_return_path: header_text(message, "Return-Path").is_some_and(|v| {
            v.trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace())
                .is_empty()
        }),
        sender_local: sender_address
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string(),
        sender_name: sender
            .and_then(|a| a.name())
            .unwrap_or_default()
            .to_lowercase(),
        sender_address,
    }
}

pub fn classify(message: &Message<'_>) -> Flags {
    let s = signals(message);
    let report = is_report(message, &s);
    let bounce = !report && is_bounce(message, &s);
    let mut flags = Flags {
        auto_reply: is_auto_reply(message, &s),
        // Lists and bulk senders.
        bulk: !matches!(message.list_id(), HeaderValue::Empty)
            || !matches!(message.list_unsubscribe(), HeaderValue::Empty)
            || ["bulk", "list", "junk"]
                .iter()
                .any(|p| s.precedence.contains(p)),
        bounce,
        report,
        own_loop: header_text(message, crate::mail::LOOP_HEADER).is_some(),
        forwarded: false,
        bounced_message_ids: Vec::new(),
        bounce_reason: None,
    };
    if flags.bounce {
        flags.bounced_message_ids = bounced_ids(message);
        flags.bounce_reason = bounce_reason(message);
    }
    flags
}

/// RFC 3834 Auto-Submitted (anything but "no"), the vendor headers seen in
/// the wild, read receipts (RFC 8098), and the subjects out-of-office
/// answers carry, in several languages.
fn is_auto_reply(message: &Message<'_>, s: &Signals) -> bool {
    let lower = |name: &str| header_text(message, name).map(str::to_ascii_lowercase);
    if lower("Auto-Submitted").is_some_and(|v| !v.is_empty() && !v.starts_with("no")) {
        return true;
    }
    let vendor = [
        "X-Autoreply",
        "X-Autorespond",
        "X-Autoresponder",
        "X-Autogenerated",
        "X-AutoReply-From",
        "X-Mail-Autoreply",
        "X-FC-MachineGenerated",
    ];
    if vendor
        .iter()
        .filter_map(|name| lower(name))
        .any(|v| v != "no" && v != "false")
    {
        return true;
    }
    if s.precedence.contains("auto_reply") || s.precedence.contains("auto-reply") {
        return true;
    }
    if s.report_type.as_deref() == Some("disposition-notification") || sns_notification(s) {
        return true;
    }
    // Prefixes only a machine writes, colon included.
    const MACHINE_PREFIXES: [&str; 19] = [
        "resposta automática:",
        "自动回复:",
        "自动回复：",
        "自動回覆:",
        "自動返信:",
        "automatiskt svar:",
        "autosvar:",
        "automaattinen vastaus:",
        "odpowiedź automatyczna:",
        "automatic reply:",
        "automatische antwort:",
        "out of office autoreply:",
        "auto-reply:",
        "autoreply:",
        "abwesenheitsnotiz:",
        "réponse automatique",
        "respuesta automática:",
        "risposta automatica:",
        "automatisch antwoord:",
    ];
    if MACHINE_PREFIXES.iter().any(|p| s.subject.starts_with(p)) {
        return true;
    }
    // Looser prefixes ("Auto:", "Out of office") count with a header that
    // says a machine answered.
    let machine_header = message.header_raw("X-Auto-Response-Suppress").is_some()
        || message
            .header_raw("X-MS-Exchange-Inbox-Rules-Loop")
            .is_some()
        || s.null_return_path;
    let loose = [
        "auto:",
        "out of office",
        "autoreply",
        "vacation",
        "abwesend",
        "resposta automática",
        "自动回复",
    ];
    if machine_header && loose.iter().any(|p| s.subject.starts_with(p)) {
        return true;
    }
    message
        .header_raw("X-MS-Exchange-Generated-Message-Source")
        .is_some()
}

/// Subjects delivery failures and warnings carry, from many MTAs and in
/// several languages (lower-case, matched anywhere).
const BOUNCE_SUBJECTS: [&str; 30] = [
    "undeliver",
    "undelivered mail",
    "delivery status notification",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "delivery notification",
    "delivery problem",
    "delivery delayed",
    "delayed mail",
    "mail delivery failed",
    "mail delivery failure",
    "mail delivery system",
    "returned mail",
    "returned to sender",
    "failure notice",
    "nondeliverable",
    "non-deliverable",
    "non delivery",
    "could not send message",
    "message not delivered",
    "warning: message",
    "unzustellbar",
    "nicht zustellbar",
    "non remis",
    "no se puede entregar",
    "mancato recapito",
    "onbestelbaar",
    "não entregue",
    "nao entregue",
];

/// A delivery-status report, an `X-Failed-Recipients` header, a mail
/// daemon or a null return path with a delivery subject, or a provider's
/// bounce notification (Amazon SES through SNS).
fn is_bounce(message: &Message<'_>, s: &Signals) -> bool {
    if s.report_type.as_deref() == Some("delivery-status")
        || message.header_raw("X-Failed-Recipients").is_some()
    {
        return true;
    }
    let daemon_locals = [
        "mailer-daemon",
        "mailerdaemon",
        "mail-daemon",
        "postmaster",
        "bounce",
        "bounces",
        "mdaemon",
    ];
    let daemon = daemon_locals.contains(&s.sender_local.as_str())
        || s.sender_local.starts_with("bounce+")
        || s.sender_local.starts_with("bounces+")
        || ["mail delivery", "mailer-daemon", "mail administrator"]
            .iter()
            .any(|n| s.sender_name.contains(n));
    let delivery_subject = BOUNCE_SUBJECTS.iter().any(|p| s.subject.contains(p))
        || s.subject.starts_with("bounce")
        || s.subject.contains("配信")
        || s.subject.contains("不能");
    if (daemon || s.null_return_path) && delivery_subject {
        return true;
    }
    if daemon && s.null_return_path {
        return true;
    }
    // Amazon SES reports bounces and complaints as SNS notifications.
    sns_notification(s)
        && message.body_text(0).is_some_and(|b| {
            let b = b.replace(' ', "");
            b.contains("\"notificationType\":\"Bounce\"")
                || b.contains("\"notificationType\":\"Complaint\"")
        })
}

/// An Amazon SNS notification mail (SES bounces, complaints, deliveries).
fn sns_notification(s: &Signals) -> bool {
    s.sender_address.ends_with("@sns.amazonaws.com") && s.subject.contains("aws notification")
}

/// An ARF abuse/feedback report (RFC 5965) or a DMARC report (aggregate or
/// failure): kept, counted, never a ticket of its own.
fn is_report(message: &Message<'_>, s: &Signals) -> bool {
    if s.report_type.as_deref() == Some("feedback-report") {
        return true;
    }
    let dmarc_subject = s.subject.starts_with("report domain:")
        || s.subject.starts_with("report-id:")
        || s.subject.contains("dmarc aggregate report")
        || s.subject.contains("dmarc report");
    let dmarc_sender = s.sender_local.contains("dmarc");
    let attached_report = message.attachments().any(|a| {
        a.content_type().is_some_and(|ct| {
            let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
            ["zip", "gzip", "x-gzip", "xml"].contains(&sub.as_str())
        })
    });
    (dmarc_subject && (dmarc_sender || attached_report)) || (dmarc_sender && attached_report)
}

/// Message-IDs of the original message a DSN carries (as message/rfc822 or
/// text/rfc822-headers), so the outbound message can be marked failed.
fn bounced_ids(message: &Message<'_>) -> Vec<String> {
    let mut found: Vec<Option<String>> = message
        .parts
        .iter()
        .map(|part| match &part.body {
            PartType::Message(inner) => inner.message_id().map(clean_id),
            _ if part.is_content_type("text", "rfc822-headers") => {
                header_line(&String::from_utf8_lossy(part.contents()), "message-id")
            }
            _ => None,
        })
        .collect();
    if found.iter().all(Option::is_none) {
        // Bounces without a report part (qmail, Exim, sendmail V5, many
        // carriers) quote the original's headers in their text.
        found = message
            .parts
            .iter()
            .map(|part| match &part.body {
                PartType::Text(text) => header_line(text, "message-id"),
                _ => None,
            })
            .collect();
    }
    let mut ids: Vec<String> = Vec::new();
    for id in found.into_iter().flatten().filter(|id| !id.is_empty()) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The value of the first `name:` line of `text` (quoted or indented
/// lines too), as a Message-ID.
fn header_line(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
        let (field, value) = l.split_once(':')?;
        field
            .trim()
            .eq_ignore_ascii_case(name)
            .then(|| clean_id(value))
    })
}

/// `recipient: diagnostic (status)` from an RFC 3464 report, else from
/// `X-Failed-Recipients` and the MTA's text: the `<address>:` or indented
/// address line, and the first line carrying an SMTP reply code.
fn bounce_reason(message: &Message<'_>) -> Option<String> {
    let mut recipient: Option<String> = None;
    let mut status: Option<String> = None;
    let mut diagnostic: Option<String> = None;
    let texts: Vec<String> = message
        .parts
        .iter()
        .filter(|p| {
            matches!(p.body, PartType::Text(_))
                || p.is_content_type("message", "delivery-status")
                || p.is_content_type("message", "global-delivery-status")
        })
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
        .collect();
    let after_semicolon = |v: &str| v.split_once(';').map_or(v, |(_, r)| r).trim().to_string();
    for text in &texts {
        for line in text.lines() {
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            match field.trim().to_ascii_lowercase().as_str() {
                "final-recipient" | "original-recipient" if recipient.is_none() => {
                    recipient = Some(after_semicolon(value))
                }
                "status" if status.is_none() => status = Some(value.trim().to_string()),
                "diagnostic-code" if diagnostic.is_none() => {
                    diagnostic = Some(after_semicolon(value))
                }
                _ => {}
            }
        }
    }
    if recipient.is_none() {
        recipient = header_text(message, "X-Failed-Recipients")
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string());
    }
    for text in &texts {
        for line in text.lines().map(str::trim) {
            if recipient.is_none() {
                let bare = line
                    .trim_end_matches(':')
                    .trim_start_matches('<')
                    .trim_end_matches('>');
                if bare.contains('@') && !bare.contains(char::is_whitespace) {
                    recipient = Some(bare.to_string());
                    continue;
                }
            }
            if diagnostic.is_none() && has_reply_code(line) {
                diagnostic = Some(line.to_string());
            }
        }
    }
    let mut reason = match (&recipient, &diagnostic) {
        (Some(r), Some(d)) => format!("{r}: {d}"),
        (Some(r), None) => r.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => return status,
    };
    if let Some(status) = status.filter(|s| !reason.contains(s.as_str())) {
        reason.push_str(&format!(" (status {status})"));
    }
    Some(reason.chars().take(300).collect())
}

/// A line with an SMTP reply code: a word of three digits starting 4 or
/// 5, followed by more text (`550 5.1.1 …`, `said: 552-…`, `#5.1.1`).
fn has_reply_code(line: &str) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
        .any(|w| {
            let b = w.as_bytes();
            (b.len() == 3
                && (b[0] == b'4' || b[0] == b'5')
                && w.chars().all(|c| c.is_ascii_digit()))
                || (b.len() >= 5
                    && (b[0] == b'4' || b[0] == b'5')
                    && b[1] == b'.'
                    && w.split('.').count() == 3
                    && w.split('.')
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())))
        })
        && line.len() > 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn flags(raw: &str) -> Flags {
        classify(&MessageParser::default().parse(raw.as_bytes()).unwrap())
    }

    #[test]
    fn auto_submitted_no_is_a_person() {
        assert!(!flags("Auto-Submitted: no\nSubject: x\n\nb").auto_reply);
        assert!(flags("Auto-Submitted: auto-replied\nSubject: x\n\nb").auto_reply);
    }

    #[test]
    fn ordinary_mail_has_no_flags() {
        let f = flags("From: a@b.test\nSubject: Delivery of my order\n\nWhere is it?");
        assert_eq!(f, Flags::default());
        assert!(!f.is_automatic());
    }

    #[test]
    fn bounces_without_a_report_part_are_recognised() {
        for raw in [
            "From: Mail Delivery System <MAILER-DAEMON@mx.test>\nSubject: Mail delivery failed: returning message to sender\n\nx",
            "From: MAILER-DAEMON@mx.test\nSubject: failure notice\n\nHi. This is the qmail-send program",
            "From: postmaster@mx.test\nSubject: Returned mail: see transcript for details\n\nx",
            "From: someone@mx.test\nX-Failed-Recipients: a@b.test\nSubject: whatever\n\nx",
            "Return-Path: <>\nFrom: System <system@mx.test>\nSubject: Unzustellbar: Angebot\n\nx",
            "From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n{\"notificationType\":\"Bounce\",\"bounce\":{}}",
        ] {
            assert!(flags(raw).bounce, "{raw}");
        }
    }

    #[test]
    fn machine_answers_receipts_and_reports_are_automatic() {
        assert!(flags("From: a@b.test\nSubject: Automatic reply: Invoice\n\nx").auto_reply);
        assert!(flags("From: a@b.test\nSubject: Out of Office AutoReply: Invoice\n\nx").auto_reply);
        let mdn = "From: a@b.test\nSubject: Read: hi\nContent-Type: multipart/report; report-type=disposition-notification; boundary=b\n\n--b\n\nx\n--b--\n";
        assert!(flags(mdn).auto_reply);
        let arf = "From: abuse@isp.test\nSubject: report\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\n\nx\n--b--\n";
        assert!(flags(arf).report && !flags(arf).bounce);
        let dmarc = "From: noreply-dmarc-support@google.com\nSubject: Report domain: example.com Submitter: google.com Report-ID: 1\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/zip\nContent-Disposition: attachment; filename=r.zip\n\nUEs=\n--b--\n";
        assert!(flags(dmarc).report);
    }

    #[test]
    fn customers_who_write_about_delivery_are_people() {
        for raw in [
            "From: a@b.test\nSubject: Delivery of my order failed\n\nWhere is it?",
            "From: a@b.test\nSubject: Out of office printer broken\n\nhelp",
            "From: a@b.test\nSubject: Automatic reply function not working\n\nx",
            "From: Postmaster Team <postmaster-team@customer.test>\nSubject: Returned mail from your form\n\nx",
        ] {
            assert!(!flags(raw).is_automatic(), "{raw}");
        }
    }

    #[test]
    fn bounces_without_a_report_name_the_message_and_the_reason() {
        let qmail = "From: MAILER-DAEMON@mx.customer.test\nSubject: failure notice\n\n\
Hi. This is the qmail-send program at mx.customer.test.\n\
I'm afraid I wasn't able to deliver your message to the following addresses.\n\n\
<carol@customer.test>:\nRemote host said: 550 5.1.1 mailbox unavailable\n\n\
--- Below this line is a copy of the message.\n\nMessage-ID: <mr.1.abc@example.com>\nSubject: Re: x\n\nhi\n";
        let f = flags(qmail);
        assert!(f.bounce);
        assert_eq!(
            f.bounced_message_ids,
            vec!["mr.1.abc@example.com".to_string()]
        );
        assert_eq!(
            f.bounce_reason.as_deref(),
            Some("carol@customer.test: Remote host said: 550 5.1.1 mailbox unavailable")
        );
        let exim = "From: Mail Delivery System <Mailer-Daemon@mx.test>\nX-Failed-Recipients: dave@customer.test\n\
Subject: Mail delivery failed: returning message to sender\n\n\
This message was created automatically by mail delivery software.\n\n\
A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error.\n\n\
  dave@customer.test\n    host mx.customer.test [192.0.2.1]\n    SMTP error from remote mail server after RCPT TO:<dave@customer.test>:\n\
    550 No such user here\n\n------ This is a copy of the message, including all the headers. ------\n\n\
Message-ID: <mr.2.def@example.com>\n";
        let f = flags(exim);
        assert_eq!(
            f.bounced_message_ids,
            vec!["mr.2.def@example.com".to_string()]
        );
        assert_eq!(
            f.bounce_reason.as_deref(),
            Some("dave@customer.test: 550 No such user here")
        );
    }

    #[test]
    fn dsn_names_the_bounced_message() {
        let raw = "From: MAILER-DAEMON@mx.test\nSubject: Undelivered Mail\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\nStatus: 5.1.1\n--b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <sent-1@example.com>\nSubject: hi\n--b--\n";
        let f = flags(raw);
        assert!(f.bounce);
        assert_eq!(
            f.bounced_message_ids,
            vec!["sent-1@example.com".to_string()]
        );
    }
}
