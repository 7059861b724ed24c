//! Raw bytes → [`ParsedMessage`]: everything later steps need, decoded and
//! owned. Pure: no I/O, so it can run on a blocking thread under a timeout.

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use super::classify::{classify, Flags};
use crate::crypto::sha256_hex;
use crate::mail::address::normalize as normalize_address;
use crate::mail::ids::{clean_id, SYNTHETIC_DOMAIN};
use crate::mail::quote::cut_note;
pub use crate::mail::quote::MAX_BODY_TEXT_BYTES;
pub use crate::mail::Mailbox;

/// An attachment's metadata and contents (stored once by SHA-256).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub inline: bool,
    pub sha256: String,
    pub data: Vec<u8>,
}

/// A decoded message: what classify, thread and apply work from.
#[derive(Debug, Clone)]
pub struct ParsedMessage {
    /// Message-ID without angle brackets; synthetic when the message has none.
    pub message_id: String,
    pub synthetic_id: bool,
    /// In-Reply-To values, in header order.
    pub in_reply_to: Vec<String>,
    /// References values, oldest first as written.
    pub references: Vec<String>,
    pub from: Option<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub subject: String,
    /// The Date header, unix milliseconds.
    pub date: Option<i64>,
    pub body_text: String,
    pub body_html: Option<String>,
    /// The last [`CUT_TAIL_BYTES`] of text or HTML cut from the kept bodies
    /// (a quoted notification's reply marker sits at the end); empty when
    /// nothing was cut. Read for threading only, never stored.
    pub cut_tail: String,
    pub attachments: Vec<Attachment>,
    pub flags: Flags,
    /// The conversation part of an Outlook Thread-Index (its first 22 bytes), hex.
    pub thread_index_root: Option<String>,
    /// Identity of the message for de-duplication: Message-ID, addressing
    /// headers and body, but not transport headers (Received, Delivered-To …),
    /// so a re-delivery of the same message has the same fingerprint.
    pub fingerprint: String,
    /// SHA-256 of the raw bytes as received.
    pub raw_sha256: String,
    /// Addresses of the Delivered-To, X-Original-To and X-Forwarded-To
    /// headers, in that order (routing by recipient).
    pub delivered_to: Vec<Mailbox>,
    /// What the ingest limits are checked against.
    pub shape: Shape,
}

/// The dimensions of a message that hostile mail inflates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub parts: usize,
    /// Multipart and attached-message nesting below the top.
    pub depth: usize,
    pub header_fields: usize,
    pub header_bytes: usize,
    /// The most addresses in one address header.
    pub addresses: usize,
    pub attachment_bytes: u64,
}

fn shape(
    message: &mail_parser::Message<'_>,
    attachments: &[Attachment],
    to: usize,
    cc: usize,
) -> Shape {
    let root = message.root_part();
    let bcc = message.bcc().map_or(0, |a| a.iter().count());
    Shape {
        parts: message.parts.len(),
        depth: depth(message, 0, 0),
        header_fields: root.headers.len(),
        header_bytes: root.offset_body.saturating_sub(root.offset_header) as usize,
        addresses: to.max(cc).max(bcc),
        attachment_bytes: attachments.iter().map(|a| a.data.len() as u64).sum(),
    }
}

/// The deepest nesting below part `id`, walked with an explicit bound so
/// a hostile message cannot recurse us out of stack.
fn depth(message: &mail_parser::Message<'_>, id: usize, level: usize) -> usize {
    if level > 1000 {
        return level;
    }
    let Some(part) = message.parts.get(id) else {
        return level;
    };
    match &part.body {
        mail_parser::PartType::Multipart(children) => children
            .iter()
            .filter(|&&child| child as usize != id)
            .map(|&child| depth(message, child as usize, level + 1))
            .max()
            .unwrap_or(level),
        mail_parser::PartType::Message(inner) => depth(inner, 0, level + 1),
        _ => level,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is empty")]
    Empty,
    #[error("no RFC 5322 header section found (is this an email message?)")]
    NotAMessage,
}

/// Parses a raw RFC 5322 message. Never panics on bad input by design, but
/// callers still run it isolated (`Pipeline::parse`) because it is the
/// code that meets the most hostile bytes.
pub fn parse(original: &[u8]) -> Result<ParsedMessage, ParseError> {
    if original.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    // Old Mac mailers end lines with CR alone; the parser wants LF.
    let lf_lines;
    let mut raw = original;
    if !raw.contains(&b'\n') && raw.contains(&b'\r') {
        lf_lines = raw
            .iter()
            .map(|&b| if b == b'\r' { b'\n' } else { b })
            .collect::<Vec<u8>>();
        raw = &lf_lines;
    }
    let raw = skip_leading_junk(raw).ok_or(ParseError::NotAMessage)?;
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(ParseError::NotAMessage)?;

    let fingerprint = fingerprint(&message, raw);
    let (message_id, synthetic_id) = match message.message_id().map(clean_id) {
        // An ID we made up earlier (a web form's) is as synthetic as a new one.
        Some(id) if !id.is_empty() => {
            let made_up = id.ends_with(SYNTHETIC_DOMAIN);
            (id, made_up)
        }
        _ => (format!("{}{SYNTHETIC_DOMAIN}", &fingerprint[..32]), true),
    };

    let from = sender(&message);
    let (body_text, body_html, cut_tail) = bodies(&message);
    let attachments: Vec<Attachment> = message
        .attachments()
        .enumerate()
        .map(|(i, part)| attachment(i, part))
        .collect();
    let to = mailboxes(message.to());
    let cc = mailboxes(message.cc());
    let shape = shape(&message, &attachments, to.len(), cc.len());

    let subject = message
        .subject()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();

    // PostgreSQL TEXT cannot hold NUL; broken mail sometimes carries it.
    let subject = strip_nul(subject);

    Ok(ParsedMessage {
        message_id,
        synthetic_id,
        in_reply_to: id_list(message.in_reply_to()),
        references: id_list(message.references()),
        from,
        reply_to: first_mailbox(message.reply_to()),
        to,
        cc,
        subject,
        date: message.date().map(|d| d.to_timestamp() * 1000),
        body_text,
        body_html,
        cut_tail,
        attachments,
        flags: classify(&message),
        thread_index_root: thread_index_root(&message),
        fingerprint,
        // Of the bytes as received; the stored original is those bytes too.
        raw_sha256: sha256_hex(original),
        delivered_to: delivered_to(&message),
        shape,
    })
}

/// Lines a mail server may put above the header block (a wrapper such as
/// `---- Original email message ----`) that are skipped to find it.
const MAX_JUNK_LINES: usize = 3;

/// The message from its header block on: as it is when it starts with one,
/// else after up to [`MAX_JUNK_LINES`] lines that are not headers, when a
/// header block follows (the stored original keeps those lines).
fn skip_leading_junk(raw: &[u8]) -> Option<&[u8]> {
    let mut rest = raw;
    for _ in 0..=MAX_JUNK_LINES {
        if has_header_section(rest) && header_block_follows(rest) {
            return Some(rest);
        }
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        rest = &rest[nl + 1..];
    }
    has_header_section(raw).then_some(raw)
}

/// Whether the first lines look like a header block: at least two header
/// lines before a blank line or the end (one line of `Word: text` is what
/// a wrapper line also looks like).
fn header_block_follows(raw: &[u8]) -> bool {
    let mut headers = 0;
    for line in raw.split(|&b| b == b'\n').take(64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        match line.iter().position(|&b| b == b':') {
            Some(colon) if colon > 0 && line[..colon].iter().all(|&b| b.is_ascii_graphic()) => {
                headers += 1
            }
            _ if line.starts_with(b"From ") && headers == 0 => {}
            _ => return headers >= 2,
        }
    }
    headers >= 2
}

/// The delivery headers' addresses: each header may appear several times
/// (one per hop) and hold a list.
fn delivered_to(message: &mail_parser::Message<'_>) -> Vec<Mailbox> {
    let mut found = Vec::new();
    for name in ["delivered-to", "x-original-to", "x-forwarded-to"] {
        for (header, value) in message.headers_raw() {
            if !header.eq_ignore_ascii_case(name) {
                continue;
            }
            for part in value.split([',', ';']) {
                let address = normalize_address(part);
                if address.contains('@') && !found.iter().any(|m: &Mailbox| m.address == address) {
                    found.push(Mailbox::new(address, None));
                }
            }
        }
    }
    found
}

/// Who sent it: From, else Sender, else the Return-Path.
fn sender(message: &mail_parser::Message<'_>) -> Option<Mailbox> {
    first_mailbox(message.from())
        .or_else(|| first_mailbox(message.sender()))
        .or_else(|| {
            let address = normalize_address(message.return_address()?);
            (!address.is_empty()).then_some(Mailbox {
                address,
                name: None,
            })
        })
}

/// An HTML body larger than this is not kept (the text is): HTML with
/// inline images is large, but not this large.
pub const MAX_BODY_HTML_BYTES: usize = 8 * 1024 * 1024;

/// How much of a cut body's end is kept for its reply marker.
pub const CUT_TAIL_BYTES: usize = 64 * 1024;

/// The text parts joined (up to [`MAX_BODY_TEXT_BYTES`], saying how much
/// is left out), the first HTML part, without NUL, and the end of what
/// was cut.
fn bodies(message: &mail_parser::Message<'_>) -> (String, Option<String>, String) {
    let mut text = String::new();
    let mut tail = String::new();
    let mut left_out = 0;
    for i in 0..message.text_body_count() {
        if let Some(part) = message.body_text(i) {
            let part = part.trim_end();
            let separator = if text.is_empty() { "" } else { "\n\n" };
            let room = MAX_BODY_TEXT_BYTES.saturating_sub(text.len() + separator.len());
            let end = floor_boundary(part, room);
            if end > 0 {
                text.push_str(separator);
                text.push_str(&part[..end]);
            }
            if end < part.len() {
                left_out += part.len() - end;
                tail = ending(part, CUT_TAIL_BYTES).to_string();
            }
        }
    }
    if left_out > 0 {
        text.push_str(&cut_note(left_out));
    }
    let html = message
        .html_part(0)
        .filter(|part| part.is_text_html())
        .and_then(|part| part.text_contents());
    let html = match html {
        Some(html) if html.len() > MAX_BODY_HTML_BYTES => {
            tail.push_str(ending(html, CUT_TAIL_BYTES));
            None
        }
        html => html.map(|html| strip_nul(html.to_string())),
    };
    (strip_nul(text), html, tail)
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The last `bytes` (or fewer, to a char boundary) of `text`.
fn ending(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A message must begin with at least one `Name: value` header line;
/// otherwise mail-parser would happily read any text as a body.
fn has_header_section(raw: &[u8]) -> bool {
    let start = raw
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(raw.len());
    // mbox "From " separator lines are tolerated in front of the headers.
    let mut rest = &raw[start..];
    if rest.starts_with(b"From ") {
        rest = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => &rest[nl + 1..],
            None => return false,
        };
    }
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = &rest[..line_end];
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon]
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b':'),
        _ => false,
    }
}

fn strip_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

fn fingerprint(message: &mail_parser::Message<'_>, raw: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for name in ["Message-ID", "From", "To", "Cc", "Subject", "Date"] {
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        if let Some(value) = message.header_raw(name) {
            // Unfold and trim, so re-folding by a relay does not matter.
            for word in value.split_ascii_whitespace() {
                hasher.update(word.as_bytes());
                hasher.update(b" ");
            }
        }
        hasher.update(b"\0");
    }
    let body_start = (message.root_part().raw_body_offset() as usize).min(raw.len());
    let body = &raw[body_start..];
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    // CRLF vs LF depends on the path the message took (IMAP vs a Maildir file).
    for chunk in body[..end].split(|&b| b == b'\r') {
        hasher.update(chunk);
    }
    hex::encode(hasher.finalize())
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    let ids: Vec<String> = match value {
        HeaderValue::Text(id) => vec![clean_id(id)],
        HeaderValue::TextList(ids) => ids.iter().map(|id| clean_id(id)).collect(),
        _ => Vec::new(),
    };
    ids.into_iter().filter(|id| !id.is_empty()).collect()
}

fn to_mailbox(addr: &mail_parser::Addr<'_>) -> Option<Mailbox> {
    let address = normalize_address(&addr.address()?.replace('\0', ""));
    if address.is_empty() {
        return None;
    }
    let name = addr
        .name()
        .map(|n| {
            n.replace('\0', "")
                .trim()
                .trim_matches('"')
                .trim()
                .to_string()
        })
        .filter(|n| !n.is_empty() && n.to_lowercase() != address);
    Some(Mailbox { address, name })
}

/// The first mailbox of an address header's value (display name,
/// encoded words and all), as the header parser reads it.
pub(crate) fn mailbox_of(value: &str) -> Option<Mailbox> {
    let header = format!("From: {value}\r\n\r\n");
    let message = mail_parser::MessageParser::default().parse_headers(header.as_bytes())?;
    first_mailbox(message.from())
}

fn first_mailbox(address: Option<&Address<'_>>) -> Option<Mailbox> {
    address?.iter().find_map(to_mailbox)
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<Mailbox> {
    address
        .map(|a| a.iter().filter_map(to_mailbox).collect())
        .unwrap_or_default()
}

fn attachment(index: usize, part: &mail_parser::MessagePart<'_>) -> Attachment {
    let content_type = part
        .content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        })
        .unwrap_or_else(|| {
            if matches!(part.body, PartType::Message(_)) {
                "message/rfc822".into()
            } else {
                "application/octet-stream".into()
            }
        })
        .to_lowercase();
    let filename = part
        .attachment_name()
        .map(|n| {
            n.chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_filename(index, &content_type, part));
    let inline = part
        .content_disposition()
        .map(|d| d.ctype().eq_ignore_ascii_case("inline"))
        .unwrap_or(false)
        || matches!(part.body, PartType::InlineBinary(_));
    let data = part.contents().to_vec();
    Attachment {
        filename,
        content_type,
        content_id: part.content_id().map(clean_id).filter(|c| !c.is_empty()),
        inline,
        sha256: sha256_hex(&data),
        data,
    }
}

fn default_filename(
    index: usize,
    content_type: &str,
    part: &mail_parser::MessagePart<'_>,
) -> String {
    if let PartType::Message(inner) = &part.body {
        if let Some(subject) = inner.subject() {
            let safe: String = subject
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || c == ' ' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(60)
                .collect();
            return format!("{}.eml", safe.trim());
        }
        return "forwarded-message.eml".into();
    }
    let extension = match content_type {
        "text/calendar" => "ics",
        "text/plain" => "txt",
        "text/html" => "html",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "application/pdf" => "pdf",
        "message/delivery-status" => "txt",
        "text/rfc822-headers" => "txt",
        _ => "bin",
    };
    format!("attachment-{}.{extension}", index + 1)
}

fn thread_index_root(message: &mail_parser::Message<'_>) -> Option<String> {
    let value = message.header_raw("Thread-Index")?;
    let compact: Vec<u8> = value.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = mail_parser::decoders::base64::base64_decode(&compact)?;
    // 22 bytes of header identify the conversation; replies append 5-byte blocks.
    (bytes.len() >= 22).then(|| hex::encode(&bytes[..22]))
}

/// The ticket number in a subject tag such as `[#1042]`, if any.
/// A subject without what replies and lists add: `Re:`, `AW:`, `SV:`,
/// `Fwd:` … prefixes, `[#n]` tags and `[list]` prefixes at the front;
/// whitespace collapsed and lower-cased, for comparing.
pub fn base_subject(subject: &str) -> String {
    const PREFIXES: [&str; 12] = [
        "re:", "aw:", "sv:", "vs:", "antw:", "wg:", "fwd:", "fw:", "tr:", "rif:", "r:", "réf:",
    ];
    let lower = subject
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let mut rest = lower.as_str();
    loop {
        let before = rest;
        rest = rest.trim_start();
        if let Some(prefix) = PREFIXES.iter().find(|p| rest.starts_with(**p)) {
            rest = &rest[prefix.len()..];
        } else if rest.starts_with('[') {
            if let Some(end) = rest.find(']') {
                rest = &rest[end + 1..];
            }
        }
        if rest == before {
            return rest.trim().to_string();
        }
    }
}

pub fn subject_tag(subject: &str) -> Option<i64> {
    let mut rest = subject;
    while let Some(start) = rest.find("[#") {
        let after = &rest[start + 2..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && after[digits.len()..].starts_with(']') {
            return digits.parse().ok();
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_text_body_is_cut_where_a_character_ends_and_says_how_much_is_left() {
        // "é" is two bytes: the cut falls inside one unless it is careful.
        let body = format!("x{}", "é".repeat(MAX_BODY_TEXT_BYTES));
        let raw = format!(
            "From: a@b.test\r\nSubject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
        );
        let parsed = parse(raw.as_bytes()).unwrap();
        let (kept, note) = parsed.body_text.split_once("\n\n[").unwrap();
        assert!(kept.len() <= MAX_BODY_TEXT_BYTES && kept.len() > MAX_BODY_TEXT_BYTES - 4);
        assert!(body.starts_with(kept));
        let left = (body.len() - kept.len()).div_ceil(1024);
        assert_eq!(
            note,
            format!("{left} KiB more of this text is in the original message.]")
        );
        // A body under the limit is kept whole, with no note.
        let small = parse(b"From: a@b.test\r\nSubject: s\r\n\r\nhello\r\n").unwrap();
        assert_eq!(small.body_text, "hello");
        assert!(!crate::mail::quote::is_cut(
            "[1 KiB more of this text is in the original message.]"
        ));
    }

    #[test]
    fn an_html_body_over_its_limit_is_not_kept_but_its_end_is_searched() {
        let html = format!(
            "<p>{}</p><p>end-of-html</p>",
            "x".repeat(MAX_BODY_HTML_BYTES)
        );
        let raw = format!(
            "From: a@b.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/alternative; boundary=B\r\n\r\n\
             --B\r\nContent-Type: text/plain\r\n\r\nshort text\r\n\
             --B\r\nContent-Type: text/html\r\n\r\n{html}\r\n--B--\r\n"
        );
        let parsed = parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.body_html, None);
        assert_eq!(parsed.body_text, "short text");
        assert!(parsed.cut_tail.ends_with("<p>end-of-html</p>"));
        assert!(parsed.cut_tail.len() <= CUT_TAIL_BYTES);
    }

    #[test]
    fn encoded_words_in_the_charsets_of_real_mail() {
        for (word, text) in [
            ("=?Big5?B?q8ik4apBsMg=?=", "客戶服務"),
            ("=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?=", "請求書"),
            ("=?KOI8-R?B?8NLJ18XU?=", "Привет"),
            ("=?windows-1251?B?0fe48g==?=", "Счёт"),
            ("=?windows-1252?B?Q2Fm6SCXIOdh?=", "Café — ça"),
            ("=?GBK?B?t6LGsc7KzOI=?=", "发票问题"),
            ("=?EUC-KR?B?ua7Axw==?=", "문의"),
        ] {
            let raw = format!(
                "From: {word} <x@customer.test>\r\nSubject: {word}\r\nMessage-ID: <cs@customer.test>\r\n\r\nx\r\n"
            );
            let parsed = parse(raw.as_bytes()).unwrap();
            assert_eq!(parsed.subject, text, "{word}");
            assert_eq!(parsed.from.unwrap().name.as_deref(), Some(text), "{word}");
        }
    }

    #[test]
    fn odd_charsets_in_encoded_words_and_file_names() {
        // Shift_JIS subject, a one-character GB2312 display name, a file
        // name with a colon (RFC 2231) and one in an encoded word.
        let raw = b"From: =?GB2312?B?ztI=?= <wo@customer.test>\r\n\
To: support@example.com\r\n\
Subject: =?Shift_JIS?B?gqiW4oKijYeC7YK5gUaQv4uBj5GCyYLCgqKCxA==?=\r\n\
Message-ID: <sjis@customer.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
See the files.\r\n\
--b\r\n\
Content-Type: application/pdf\r\n\
Content-Disposition: attachment; filename*=UTF-8''Invoice%3A%202026-11.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b\r\n\
Content-Type: text/plain; name=\"=?GB2312?B?zfW3vA==?=:notes.txt\"\r\n\
Content-Disposition: attachment\r\n\
\r\n\
notes\r\n\
--b--\r\n";
        let parsed = parse(raw).unwrap();
        assert_eq!(parsed.subject, "お問い合わせ：請求書について");
        let from = parsed.from.unwrap();
        assert_eq!(from.name.as_deref(), Some("我"));
        let names: Vec<&str> = parsed
            .attachments
            .iter()
            .map(|a| a.filename.as_str())
            .collect();
        assert_eq!(names, ["Invoice: 2026-11.pdf", "王芳:notes.txt"]);
    }

    #[test]
    fn base_subjects_drop_what_replies_and_lists_add() {
        for subject in [
            "Printer on fire",
            "Re: Printer on fire",
            "RE: AW: [#12] Printer  on fire",
            "Fwd: [support-list] Re: printer ON fire",
            "SV:Printer on fire",
        ] {
            assert_eq!(base_subject(subject), "printer on fire", "{subject}");
        }
        assert_eq!(base_subject("[unclosed"), "[unclosed");
        assert_eq!(base_subject("Re:"), "");
    }

    #[test]
    fn a_wrapper_line_above_the_headers_is_skipped_and_the_original_kept() {
        let raw = b"---- Original email message ----\r\nFrom: a@b.test\r\nSubject: Hi\r\nMessage-ID: <w@b.test>\r\n\r\nbody\r\n";
        let parsed = parse(raw).unwrap();
        assert_eq!(
            (parsed.subject.as_str(), parsed.message_id.as_str()),
            ("Hi", "w@b.test")
        );
        assert_eq!(parsed.raw_sha256, sha256_hex(raw));
        // Prose is still not mail, however many lines it has.
        assert!(matches!(
            parse(b"dear diary\nno headers here\nat all\n\n"),
            Err(ParseError::NotAMessage)
        ));
        // A single header line is still a message (as before).
        assert_eq!(parse(b"Subject: only\n\nbody\n").unwrap().subject, "only");
    }

    #[test]
    fn cr_only_line_ends_parse() {
        let parsed =
            parse(b"From: a@b.test\rSubject: Mac\rMessage-ID: <m@b.test>\r\rline one\rline two\r")
                .unwrap();
        assert_eq!(parsed.subject, "Mac");
        assert!(
            parsed.body_text.contains("line one\nline two"),
            "{:?}",
            parsed.body_text
        );
    }

    #[test]
    fn transport_headers_do_not_change_the_fingerprint() {
        let a = b"Received: from a\r\nMessage-ID: <x@y>\r\nFrom: a@b.test\r\nSubject: Hi\r\n\r\nBody\r\n";
        let b = b"Received: from b\nReceived: from c\nDelivered-To: s@e.test\nMessage-ID: <x@y>\nFrom: a@b.test\nSubject: Hi\n\nBody\n";
        assert_eq!(parse(a).unwrap().fingerprint, parse(b).unwrap().fingerprint);
        let c = b"Message-ID: <x@y>\nFrom: a@b.test\nSubject: Hi\n\nAnother body\n";
        assert_ne!(parse(a).unwrap().fingerprint, parse(c).unwrap().fingerprint);
    }

    #[test]
    fn missing_message_id_gets_a_stable_synthetic_one() {
        let raw = b"From: a@b.test\nSubject: Hi\n\nBody\n";
        let first = parse(raw).unwrap();
        assert!(first.synthetic_id);
        assert!(first.message_id.ends_with("@mailroom.invalid"));
        let form =
            parse(b"Message-ID: <form-1@mailroom.invalid>\nFrom: a@b.test\n\nBody\n").unwrap();
        assert!(
            form.synthetic_id,
            "an ID we made up earlier stays synthetic"
        );
        assert_eq!(first.message_id, parse(raw).unwrap().message_id);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(parse(b"").unwrap_err(), ParseError::Empty);
        assert_eq!(parse(b"   \n").unwrap_err(), ParseError::Empty);
        assert_eq!(
            parse(b"just some text\n").unwrap_err(),
            ParseError::NotAMessage
        );
        assert_eq!(
            parse(&[0xff, 0x00, 0x12]).unwrap_err(),
            ParseError::NotAMessage
        );
    }

    #[test]
    fn subject_tags_are_found() {
        assert_eq!(subject_tag("Re: [#1042] Printer"), Some(1042));
        assert_eq!(subject_tag("[#] no [#12a] yes [#7]"), Some(7));
        assert_eq!(subject_tag("Printer #12"), None);
    }

    #[test]
    fn thread_index_root_is_its_first_22_bytes() {
        let root = [7u8; 22];
        let mut child = root.to_vec();
        child.extend_from_slice(&[1, 2, 3, 4, 5]);
        let b64 = |b: &[u8]| {
            use std::fmt::Write;
            // Tiny encoder for the test only.
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.write_char(T[(n >> (18 - 6 * i) & 63) as usize] as char)
                            .unwrap();
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        };
        let raw = |ti: &str| format!("From: a@b.test\nThread-Index: {ti}\nSubject: x\n\nb\n");
        let a = parse(raw(&b64(&root)).as_bytes()).unwrap();
        let b = parse(raw(&b64(&child)).as_bytes()).unwrap();
        assert_eq!(a.thread_index_root, Some(hex::encode(root)));
        assert_eq!(a.thread_index_root, b.thread_index_root);
    }
}
