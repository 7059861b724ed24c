//! Renders an outgoing message with mail-builder: every header value goes
//! through the library's encoder, never through string pasting. Bcc is not
//! written: those recipients are only in the SMTP envelope.

use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;

use crate::mail::Mailbox;

use mail_builder::mime::{BodyPart, MimePart};

use crate::mail::address::MAX_NAME_CHARS;
use crate::mail::wire;

fn to_address(mailbox: &Mailbox) -> Address<'static> {
    Address::new_address(
        mailbox.name.as_deref().map(|n| single_line(shorten(n))),
        single_line(&mailbox.address),
    )
}

/// At most [`MAX_NAME_CHARS`] characters of `name`: a customer's
/// 100,000-character name must not make a header line relays refuse.
fn shorten(name: &str) -> &str {
    match name.char_indices().nth(MAX_NAME_CHARS) {
        Some((cut, _)) => &name[..cut],
        None => name,
    }
}

/// A header value with any control character (CR, LF, NUL, TAB …) turned
/// into a space. User input with them is refused before it gets here; this
/// covers names and subjects that arrived in customers' mail.
pub fn single_line(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A file attached to a reply.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub filename: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// Everything a rendered reply is made of.
#[derive(Debug)]
pub struct Draft<'a> {
    pub from: &'a Mailbox,
    pub to: &'a [Mailbox],
    pub cc: &'a [Mailbox],
    pub subject: &'a str,
    pub message_id: &'a str,
    pub in_reply_to: Option<&'a str>,
    pub references: &'a [String],
    pub thread_index: &'a str,
    pub thread_topic: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    pub attachments: &'a [NewAttachment],
    pub date_ms: i64,
}

fn list(people: &[Mailbox]) -> Address<'static> {
    Address::new_list(people.iter().map(to_address).collect())
}

/// An attachment as base64, whatever its type: a text file's own line ends
/// (bare CRs, say) must not reach the wire, and base64 has none.
fn attachment_part(attachment: &NewAttachment) -> std::io::Result<MimePart<'static>> {
    let mut encoded = Vec::with_capacity(wire::base64_len(attachment.data.len()));
    mail_builder::encoders::base64::base64_encode_mime(&attachment.data, &mut encoded, false)?;
    Ok(MimePart::new(
        single_line(&attachment.content_type),
        BodyPart::Binary(encoded.into()),
    )
    .attachment(single_line(&attachment.filename))
    .transfer_encoding("base64"))
}

/// The rendered RFC 5322 bytes: CRLF line ends only and no line over 998
/// bytes (bodies are normalised, attachments base64), checked once more on
/// the finished message so nothing that could smuggle SMTP is stored.
pub fn render(draft: &Draft<'_>) -> std::io::Result<Vec<u8>> {
    let text = wire::crlf(draft.text);
    let html = wire::crlf(draft.html);
    let text_part = MimePart::new("text/plain", BodyPart::Text(text));
    let html_part = MimePart::new("text/html", BodyPart::Text(html));
    let alternative = MimePart::new("multipart/alternative", vec![text_part, html_part]);
    let body = if draft.attachments.is_empty() {
        alternative
    } else {
        let mut parts = vec![alternative];
        for attachment in draft.attachments {
            parts.push(attachment_part(attachment)?);
        }
        MimePart::new("multipart/mixed", parts)
    };
    let mut builder = MessageBuilder::new()
        .from(to_address(draft.from))
        .subject(single_line(draft.subject))
        .message_id(single_line(draft.message_id))
        .date(Date::new(draft.date_ms.div_euclid(1000)))
        .header("Thread-Topic", Text::new(single_line(draft.thread_topic)))
        .header("Thread-Index", Raw::new(single_line(draft.thread_index)))
        .body(body);
    if !draft.to.is_empty() {
        builder = builder.to(list(draft.to));
    }
    if !draft.cc.is_empty() {
        builder = builder.cc(list(draft.cc));
    }
    if let Some(parent) = draft.in_reply_to {
        builder = builder.in_reply_to(single_line(parent));
    }
    if !draft.references.is_empty() {
        builder = builder.references(MessageId::new_list(
            draft.references.iter().map(|r| single_line(r)),
        ));
    }
    // Sized up front: growing by doubling would hold two copies at once.
    let files: usize = draft.attachments.iter().map(|a| a.data.len()).sum();
    let mut raw = Vec::with_capacity(
        wire::base64_len(files) + (draft.text.len() + draft.html.len()) * 3 + 8192,
    );
    builder.write_to(&mut raw)?;
    wire::check_smtp_safe(&raw).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the rendered message is not safe to send ({e})"),
        )
    })?;
    Ok(raw)
}

/// A notification (or another automatic mail) to one agent.
#[derive(Debug)]
pub struct NoticeDraft<'a> {
    pub from: &'a Mailbox,
    pub to: &'a Mailbox,
    pub reply_to: &'a str,
    pub subject: &'a str,
    pub message_id: &'a str,
    pub references: &'a [String],
    pub text: &'a str,
    /// The host named in our loop header.
    pub loop_name: &'a str,
    pub date_ms: i64,
}

/// Renders a notification: plain text, a Reply-To with the agent's reply
/// token, and the headers that keep responders quiet (RFC 3834
/// `Auto-Submitted`, Exchange's `X-Auto-Response-Suppress`, `Precedence`)
/// and our own loop header.
pub fn render_notice(draft: &NoticeDraft<'_>) -> std::io::Result<Vec<u8>> {
    let text = wire::crlf(draft.text);
    let mut builder = MessageBuilder::new()
        .from(to_address(draft.from))
        .to(to_address(draft.to))
        .reply_to(Address::new_address(
            draft.from.name.as_deref().map(|n| single_line(shorten(n))),
            single_line(draft.reply_to),
        ))
        .subject(single_line(draft.subject))
        .message_id(single_line(draft.message_id))
        .date(Date::new(draft.date_ms.div_euclid(1000)))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .header("X-Auto-Response-Suppress", Raw::new("All"))
        .header("Precedence", Raw::new("bulk"))
        .header(
            crate::mail::LOOP_HEADER,
            Raw::new(single_line(draft.loop_name)),
        )
        .body(MimePart::new("text/plain", BodyPart::Text(text)));
    if !draft.references.is_empty() {
        builder = builder.references(MessageId::new_list(
            draft.references.iter().map(|r| single_line(r)),
        ));
    }
    let mut raw = Vec::with_capacity(draft.text.len() * 2 + 2048);
    builder.write_to(&mut raw)?;
    wire::check_smtp_safe(&raw).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the rendered notification is not safe to send ({e})"),
        )
    })?;
    Ok(raw)
}

/// HTML for a reply written as plain text: escaped, line breaks kept.
pub fn text_to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str("<div style=\"white-space:pre-wrap\">");
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => {}
            '\n' => out.push_str("<br>\n"),
            c => out.push(c),
        }
    }
    out.push_str("</div>");
    out
}

/// `Re: <subject>`, with a `[#number]` tag when the team uses tags; no
/// `Re: Re:` pile-up.
pub fn reply_subject(ticket_subject: &str, number: i64, tag: bool) -> String {
    let mut base = ticket_subject.trim();
    loop {
        let lower = base.to_ascii_lowercase();
        match ["re:", "aw:", "sv:", "fwd:", "fw:"]
            .iter()
            .find(|p| lower.starts_with(**p))
        {
            Some(prefix) => base = base[prefix.len()..].trim_start(),
            None => break,
        }
    }
    let tag_text = format!("[#{number}]");
    let base = if base.is_empty() {
        "(no subject)"
    } else {
        base
    };
    if tag && !base.contains(&tag_text) {
        format!("Re: {tag_text} {base}")
    } else {
        format!("Re: {base}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_get_one_re_and_one_tag() {
        assert_eq!(reply_subject("Printer", 5, true), "Re: [#5] Printer");
        assert_eq!(reply_subject("RE: Re: Printer", 5, false), "Re: Printer");
        assert_eq!(
            reply_subject("Re: [#5] Printer", 5, true),
            "Re: [#5] Printer"
        );
        assert_eq!(reply_subject("", 5, false), "Re: (no subject)");
    }

    #[test]
    fn names_and_subjects_from_stored_mail_cannot_add_headers() {
        let from = Mailbox {
            address: "support@example.test".into(),
            name: Some("Support".into()),
        };
        let to = [Mailbox {
            address: "c@customer.test".into(),
            name: Some("Evil\r\nBcc: victim@x.test".into()),
        }];
        let raw = render(&Draft {
            from: &from,
            to: &to,
            cc: &[],
            subject: "Re: hi\r\nX-Injected: yes",
            message_id: "a@b",
            in_reply_to: None,
            references: &[],
            thread_index: "AQ==",
            thread_topic: "hi",
            text: "t",
            html: "<p>t</p>",
            attachments: &[],
            date_ms: 0,
        })
        .unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.contains("\nBcc:") && !text.contains("\nX-Injected:"),
            "{text}"
        );
    }

    #[test]
    fn plain_text_becomes_escaped_html() {
        assert_eq!(
            text_to_html("a<b>\nc"),
            "<div style=\"white-space:pre-wrap\">a&lt;b&gt;<br>\nc</div>"
        );
    }

    #[test]
    fn rendered_message_has_no_bcc_and_parses_back() {
        let from = Mailbox {
            address: "support@example.test".into(),
            name: Some("Example Support".into()),
        };
        let to = [Mailbox {
            address: "c@customer.test".into(),
            name: Some("Ünïcode Customer".into()),
        }];
        let refs = vec!["a@x".to_string(), "b@x".to_string()];
        let raw = render(&Draft {
            from: &from,
            to: &to,
            cc: &[],
            subject: "Re: [#1] Hello",
            message_id: "mr.1.x.y@example.test",
            in_reply_to: Some("b@x"),
            references: &refs,
            thread_index: "AQ==",
            thread_topic: "Hello",
            text: "Hi there",
            html: "<p>Hi there</p>",
            attachments: &[NewAttachment {
                filename: "a.txt".into(),
                content_type: "text/plain".into(),
                data: b"file".to_vec(),
            }],
            date_ms: 1_700_000_000_000,
        })
        .unwrap();
        let parsed = crate::pipeline::parse::parse(&raw).unwrap();
        assert_eq!(parsed.message_id, "mr.1.x.y@example.test");
        assert_eq!(parsed.in_reply_to, vec!["b@x"]);
        assert_eq!(parsed.references, refs);
        assert_eq!(parsed.to[0].name.as_deref(), Some("Ünïcode Customer"));
        assert_eq!(parsed.attachments.len(), 1);
        assert!(!String::from_utf8_lossy(&raw)
            .to_ascii_lowercase()
            .contains("bcc:"));
    }
}
