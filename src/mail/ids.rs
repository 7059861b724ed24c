//! Identifiers we put on outgoing mail so that a reply to it can be tied to
//! its ticket without trusting anything else in the reply:
//!
//! - Message-IDs `mr.<ticket>.<nonce>.<tag>@<domain>`, where the tag is an
//!   HMAC of ticket and nonce under the server secret. A reference to one
//!   verifies on its own, even if the stored message is gone.
//! - A stable per-ticket pseudo-reference `mr.<ticket>.t.<tag>@<domain>`,
//!   always first in References, so trimming never loses the thread.
//! - A body marker for providers that rewrite Message-IDs: hidden text in the
//!   HTML part and zero-width characters in the text part.
//!
//! Also: Message-ID clean-up, the synthetic domain of IDs we make up, and
//! the header-value check for user input.
//!
//! Pure functions; the secret comes from the caller.

use crate::crypto::{constant_time_eq, hmac_sha256};

/// The domain of Message-IDs mailroom makes up (for mail without one, web
/// forms, internal notes). `.invalid` is reserved, so no real mail has it.
pub const SYNTHETIC_DOMAIN: &str = "@mailroom.invalid";

/// The one form of a Message-ID, for storing and for lookup alike: angle
/// brackets, surrounding whitespace and control characters removed, and a
/// quoted local part unquoted when its content is a dot-atom (RFC 5322
/// makes `"abc"@x` and `abc@x` the same ID; some mailers quote, replies
/// often do not). Case is kept: IDs are case-sensitive. Comments and
/// folding in References are the header parser's (mail-parser) to remove.
pub fn clean_id(id: &str) -> String {
    let bare: String = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    unquote_local_part(&bare).unwrap_or(bare)
}

/// `"left"@right` as `left@right` when `left` is a dot-atom.
fn unquote_local_part(id: &str) -> Option<String> {
    let rest = id.strip_prefix('"')?;
    let (local, domain) = rest.rsplit_once("\"@")?;
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = !local.is_empty()
        && local
            .split('.')
            .all(|a| !a.is_empty() && a.chars().all(atext));
    dot_atom.then(|| format!("{local}@{domain}"))
}

/// Hex digits of HMAC kept in a Message-ID tag (64 bits).
const ID_TAG_HEX: usize = 16;
/// Hex digits kept in a body marker (48 bits: the marker must stay short).
const MARKER_TAG_HEX: usize = 12;

fn tag(secret: &[u8], data: &str, hex_len: usize) -> String {
    let mut out = hex::encode(hmac_sha256(secret, &[data.as_bytes()]));
    out.truncate(hex_len);
    out
}

fn same(a: &str, b: &str) -> bool {
    constant_time_eq(a.as_bytes(), b.as_bytes())
}

/// A fresh Message-ID (without angle brackets) for a message on `ticket_id`.
pub fn new_message_id(secret: &[u8], ticket_id: i64, domain: &str) -> String {
    let nonce = hex::encode(rand::random::<[u8; 8]>());
    let tag = tag(secret, &format!("m.{ticket_id}.{nonce}"), ID_TAG_HEX);
    format!("mr.{ticket_id}.{nonce}.{tag}@{domain}")
}

/// The ticket's stable pseudo-reference, the first entry of References.
pub fn ticket_reference(secret: &[u8], ticket_id: i64, domain: &str) -> String {
    let tag = tag(secret, &format!("m.{ticket_id}.t"), ID_TAG_HEX);
    format!("mr.{ticket_id}.t.{tag}@{domain}")
}

/// The ticket a Message-ID of ours names, if `id` is one and its tag verifies.
pub fn ticket_of_message_id(secret: &[u8], id: &str) -> Option<i64> {
    let local = id.split('@').next()?;
    let mut parts = local.split('.');
    let (Some("mr"), Some(ticket), Some(nonce), Some(given), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let ticket_id: i64 = ticket.parse().ok()?;
    let expected = tag(secret, &format!("m.{ticket_id}.{nonce}"), ID_TAG_HEX);
    same(&expected, &given.to_ascii_lowercase()).then_some(ticket_id)
}

/// The marker token: `<ticket>-<tag>`.
fn marker_token(secret: &[u8], ticket_id: i64) -> String {
    let tag = tag(secret, &format!("b.{ticket_id}"), MARKER_TAG_HEX);
    format!("{ticket_id}-{tag}")
}

fn verify_marker_token(secret: &[u8], token: &str) -> Option<i64> {
    let (ticket, given) = token.split_once('-')?;
    let ticket_id: i64 = ticket.parse().ok()?;
    let expected = tag(secret, &format!("b.{ticket_id}"), MARKER_TAG_HEX);
    same(&expected, given).then_some(ticket_id)
}

const HTML_MARKER_PREFIX: &str = "mailroom-ref:";

/// A hidden element for the HTML part; clients that quote HTML keep it.
pub fn html_marker(secret: &[u8], ticket_id: i64) -> String {
    format!(
        "<div style=\"display:none;max-height:0;overflow:hidden;font-size:0;line-height:0;mso-hide:all\" aria-hidden=\"true\">{HTML_MARKER_PREFIX}{}</div>",
        marker_token(secret, ticket_id)
    )
}

// Zero-width characters: start and end fences, and one char per bit.
const ZW_START: char = '\u{2060}';
const ZW_END: char = '\u{2063}';
const ZW_ZERO: char = '\u{200B}';
const ZW_ONE: char = '\u{200C}';

/// The marker for the text part: invisible, survives quoting as text.
pub fn text_marker(secret: &[u8], ticket_id: i64) -> String {
    let mut out = String::from(ZW_START);
    for byte in marker_token(secret, ticket_id).bytes() {
        for bit in (0..8).rev() {
            out.push(if byte >> bit & 1 == 1 {
                ZW_ONE
            } else {
                ZW_ZERO
            });
        }
    }
    out.push(ZW_END);
    out
}

/// The ticket named by a verified marker in either body, if any.
pub fn ticket_of_body(secret: &[u8], text: &str, html: Option<&str>) -> Option<i64> {
    for body in [Some(text), html].into_iter().flatten() {
        let mut rest = body;
        while let Some(at) = rest.find(HTML_MARKER_PREFIX) {
            rest = &rest[at + HTML_MARKER_PREFIX.len()..];
            let token: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect();
            if let Some(ticket) = verify_marker_token(secret, &token) {
                return Some(ticket);
            }
        }
        let mut rest = body;
        while let Some(at) = rest.find(ZW_START) {
            rest = &rest[at + ZW_START.len_utf8()..];
            let mut bytes = Vec::new();
            let mut bits = 0u8;
            let mut count = 0;
            for c in rest.chars().take(8 * 40 + 1) {
                let bit = match c {
                    ZW_ZERO => 0,
                    ZW_ONE => 1,
                    _ => break,
                };
                bits = bits << 1 | bit;
                count += 1;
                if count == 8 {
                    bytes.push(bits);
                    (bits, count) = (0, 0);
                }
            }
            if let Ok(token) = std::str::from_utf8(&bytes) {
                if let Some(ticket) = verify_marker_token(secret, token) {
                    return Some(ticket);
                }
            }
        }
    }
    None
}

/// Most entries kept in an outgoing References header. Some relays and
/// clients refuse or truncate very long ones; the pseudo-reference plus the
/// latest IDs keep the thread.
pub const MAX_OUTGOING_REFERENCES: usize = 20;

/// References for a reply: the ticket's pseudo-reference first, then the
/// answered message's chain, trimmed to the latest entries.
pub fn references(pseudo: &str, chain: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = chain
        .iter()
        .filter(|id| id.as_str() != pseudo && !id.is_empty())
        .cloned()
        .collect();
    chain.dedup();
    let keep = MAX_OUTGOING_REFERENCES - 1;
    if chain.len() > keep {
        chain.drain(..chain.len() - keep);
    }
    let mut out = vec![pseudo.to_string()];
    out.extend(chain);
    out
}

/// An Outlook Thread-Index for a reply: the conversation's 22-byte header
/// (the answered message's, or one derived from the ticket) plus a 5-byte
/// child block for this message.
pub fn thread_index(
    secret: &[u8],
    ticket_id: i64,
    ticket_created_ms: i64,
    root_hex: Option<&str>,
    now_ms: i64,
) -> String {
    use base64::Engine as _;
    let filetime = |ms: i64| (ms.max(0) as u64 + 11_644_473_600_000) * 10_000;
    let root = root_hex
        .and_then(|h| hex::decode(h).ok())
        .filter(|b| b.len() == 22)
        .unwrap_or_else(|| {
            let mut root = vec![0x01];
            root.extend_from_slice(&(filetime(ticket_created_ms) >> 24).to_be_bytes()[3..8]);
            let guid = tag(secret, &format!("ti.{ticket_id}"), 32);
            root.extend(hex::decode(guid).expect("hex"));
            root
        });
    let mut header_time = [0u8; 8];
    header_time[3..8].copy_from_slice(&root[1..6]);
    let delta = filetime(now_ms).saturating_sub(u64::from_be_bytes(header_time) << 24);
    let mut out = root;
    out.extend_from_slice(&(((delta >> 18) & 0x7FFF_FFFF) as u32).to_be_bytes());
    out.push(rand::random::<u8>());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// True when `value` holds CR, LF or NUL: put in a header it could end the
/// line and smuggle in another header.
pub fn breaks_header(value: &str) -> bool {
    value.contains(['\r', '\n', '\0'])
}

/// Refuses a header value from user input that could smuggle in a header.
pub fn check_header_value(field: &str, value: &str) -> Result<(), String> {
    if breaks_header(value) {
        return Err(format!("{field} must not contain CR, LF or NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_have_one_form() {
        assert_eq!(clean_id(" <abc@x.test> "), "abc@x.test");
        assert_eq!(
            clean_id("<\"01KF8JCEOCBS0045PS\"@xxx.yyy.com>"),
            "01KF8JCEOCBS0045PS@xxx.yyy.com"
        );
        assert_eq!(clean_id("\"a.b\"@x.com"), "a.b@x.com");
        // Not a dot-atom inside: the quotes are part of the ID.
        assert_eq!(clean_id("\"q r\"@x.com"), "\"q r\"@x.com");
        assert_eq!(clean_id("\"a..b\"@x.com"), "\"a..b\"@x.com");
        assert_eq!(clean_id("\"\"@x.com"), "\"\"@x.com");
        // Case is kept.
        assert_eq!(clean_id("<AbC@X.test>"), "AbC@X.test");
    }

    const SECRET: &[u8] = b"test secret";

    #[test]
    fn our_message_ids_verify_and_forgeries_do_not() {
        let id = new_message_id(SECRET, 42, "example.test");
        assert!(id.starts_with("mr.42.") && id.ends_with("@example.test"));
        assert_eq!(ticket_of_message_id(SECRET, &id), Some(42));
        assert_eq!(ticket_of_message_id(b"other secret", &id), None);
        let forged = id.replacen("mr.42.", "mr.43.", 1);
        assert_eq!(ticket_of_message_id(SECRET, &forged), None);
        assert_eq!(ticket_of_message_id(SECRET, "abc@example.test"), None);
        let pseudo = ticket_reference(SECRET, 7, "example.test");
        assert_eq!(ticket_of_message_id(SECRET, &pseudo), Some(7));
    }

    #[test]
    fn body_markers_survive_quoting() {
        let text = format!("Thanks!\n\n> Hello{}\n> old text", text_marker(SECRET, 9));
        assert_eq!(ticket_of_body(SECRET, &text, None), Some(9));
        let html = format!("<blockquote>hi{}</blockquote>", html_marker(SECRET, 11));
        assert_eq!(ticket_of_body(SECRET, "", Some(&html)), Some(11));
        let forged = "mailroom-ref:12-000000000000";
        assert_eq!(ticket_of_body(SECRET, forged, None), None);
        assert_eq!(ticket_of_body(b"x", &text, None), None);
    }

    #[test]
    fn references_keep_the_pseudo_reference_and_the_latest_ids() {
        let chain: Vec<String> = (0..50).map(|i| format!("r{i}@x")).collect();
        let refs = references("p@x", &chain);
        assert_eq!(refs.len(), MAX_OUTGOING_REFERENCES);
        assert_eq!(refs[0], "p@x");
        assert_eq!(refs.last().unwrap(), "r49@x");
        assert_eq!(refs[1], "r31@x");
    }

    #[test]
    fn thread_index_continues_the_conversation() {
        use base64::Engine as _;
        let decode = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let fresh = decode(&thread_index(
            SECRET,
            1,
            1_700_000_000_000,
            None,
            1_700_000_060_000,
        ));
        assert_eq!(fresh.len(), 27);
        let root = hex::encode(&fresh[..22]);
        let reply = decode(&thread_index(SECRET, 1, 0, Some(&root), 1_700_000_120_000));
        assert_eq!(&reply[..22], &fresh[..22]);
    }

    /// Random text made of the characters the parsers look for.
    fn noise(rng: &mut impl rand::Rng, len: usize) -> String {
        const PIECES: &[&str] = &[
            "mr",
            ".",
            "-",
            "@",
            "t",
            "0",
            "9",
            "f",
            "a",
            "\u{2060}",
            "\u{2063}",
            "\u{200B}",
            "\u{200C}",
            "mailroom-ref:",
            "é",
            "\u{1F600}",
            " ",
            "\n",
            "<",
            ">",
        ];
        (0..len)
            .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
            .collect()
    }

    #[test]
    fn hostile_text_never_panics_and_never_verifies() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..80);
            let text = noise(&mut rng, len);
            assert_eq!(ticket_of_message_id(SECRET, &text), None, "{text:?}");
            assert_eq!(ticket_of_body(SECRET, &text, Some(&text)), None, "{text:?}");
        }
        // A marker cut short, or with a bit flipped, does not verify either.
        let marker = text_marker(SECRET, 5);
        let chars: Vec<char> = marker.chars().collect();
        for cut in 0..chars.len() - 1 {
            let cut: String = chars[..cut].iter().collect();
            assert_eq!(ticket_of_body(SECRET, &cut, None), None);
        }
        let flipped: String = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| match (i, c) {
                (9, ZW_ZERO) => ZW_ONE,
                (9, ZW_ONE) => ZW_ZERO,
                (_, c) => c,
            })
            .collect();
        assert_eq!(ticket_of_body(SECRET, &flipped, None), None);
    }

    #[test]
    fn header_values_with_line_breaks_are_refused() {
        assert!(check_header_value("subject", "Hi").is_ok());
        assert!(check_header_value("subject", "Hi\r\nBcc: x@y").is_err());
        assert!(check_header_value("name", "a\0b").is_err());
    }
}
