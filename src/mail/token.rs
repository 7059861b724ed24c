//! Reply tokens: the `+<token>` in the Reply-To of a notification, which
//! says "agent A may answer ticket T this way until day D". Only the server
//! secret makes one, so a reply carrying it came from someone who received
//! that notification; the sender check and DMARC decide whether that
//! someone is the agent.
//!
//! Form: `<ticket>-<agent>-<purpose>-<expiry day>-<tag>`, lower-case, so a
//! mail server that folds the local part's case keeps it valid. The tag is
//! 80 bits of HMAC-SHA256 over the rest, compared in constant time.

use crate::crypto::{constant_time_eq, hmac_sha256};

const TAG_HEX: usize = 20;
const DAY_MS: i64 = 86_400_000;

/// What an answer through the token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Answer the customer (a new ticket or a customer's message).
    Reply,
    /// Add an internal comment (a mention or a comment).
    Comment,
}

impl Purpose {
    fn letter(self) -> char {
        match self {
            Purpose::Reply => 'r',
            Purpose::Comment => 'c',
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Reply => "reply",
            Purpose::Comment => "comment",
        }
    }
    pub fn from_name(name: &str) -> Option<Purpose> {
        match name {
            "reply" => Some(Purpose::Reply),
            "comment" => Some(Purpose::Comment),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub ticket: i64,
    pub agent: i64,
    pub purpose: Purpose,
    /// Valid until the end of this day (days since the Unix epoch, UTC).
    pub expires_day: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the reply token is malformed")]
    Malformed,
    #[error("the reply token's signature is wrong")]
    BadTag,
    #[error("the reply token expired")]
    Expired,
}

impl Token {
    /// A token for `agent` on `ticket`, valid `days` from `now_ms`.
    pub fn new(ticket: i64, agent: i64, purpose: Purpose, now_ms: i64, days: u32) -> Token {
        Token {
            ticket,
            agent,
            purpose,
            expires_day: now_ms.div_euclid(DAY_MS) + i64::from(days),
        }
    }

    fn body(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.ticket,
            self.agent,
            self.purpose.letter(),
            self.expires_day
        )
    }

    pub fn encode(&self, secret: &[u8]) -> String {
        let body = self.body();
        format!("{body}-{}", tag(secret, &body))
    }

    /// The token in `text`, if its tag is ours; expiry is checked against
    /// `now_ms`.
    pub fn decode(secret: &[u8], text: &str, now_ms: i64) -> Result<Token, TokenError> {
        let text = text.to_ascii_lowercase();
        let parts: Vec<&str> = text.split('-').collect();
        let [ticket, agent, purpose, day, given] = parts[..] else {
            return Err(TokenError::Malformed);
        };
        let number = |s: &str| s.parse::<i64>().map_err(|_| TokenError::Malformed);
        let purpose = match purpose {
            "r" => Purpose::Reply,
            "c" => Purpose::Comment,
            _ => return Err(TokenError::Malformed),
        };
        let token = Token {
            ticket: number(ticket)?,
            agent: number(agent)?,
            purpose,
            expires_day: number(day)?,
        };
        // Re-encoded from the parsed numbers: "007" and "7" are not both valid.
        if token.body() != text[..text.len() - given.len() - 1] {
            return Err(TokenError::Malformed);
        }
        if !constant_time_eq(tag(secret, &token.body()).as_bytes(), given.as_bytes()) {
            return Err(TokenError::BadTag);
        }
        if now_ms.div_euclid(DAY_MS) > token.expires_day {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }
}

fn tag(secret: &[u8], body: &str) -> String {
    let mut out = hex::encode(hmac_sha256(secret, &[b"reply-token.", body.as_bytes()]));
    out.truncate(TAG_HEX);
    out
}

/// `local+token@domain` for the notification address `local@domain`.
pub fn plus_address(address: &str, token: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}+{token}@{domain}"),
        None => address.to_string(),
    }
}

/// `user@domain` and the `detail` of `user+detail@domain`; None without a `+`.
pub fn split_detail(address: &str) -> Option<(String, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    let (user, detail) = local.split_once('+')?;
    Some((format!("{user}@{domain}"), detail))
}

/// The `+detail` of `address` when the address without it is `base`
/// (case-insensitive).
pub fn detail_for<'a>(address: &'a str, base: &str) -> Option<&'a str> {
    let (without, detail) = split_detail(address)?;
    without.eq_ignore_ascii_case(base).then_some(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn a_token_decodes_to_what_was_encoded_and_nothing_else_does() {
        let token = Token::new(12, 3, Purpose::Reply, NOW, 30);
        let text = token.encode(b"secret");
        assert_eq!(Token::decode(b"secret", &text, NOW), Ok(token));
        assert_eq!(
            Token::decode(b"secret", &text.to_ascii_uppercase(), NOW),
            Ok(token)
        );
        assert_eq!(Token::decode(b"other", &text, NOW), Err(TokenError::BadTag));
        // Another ticket, agent or purpose under the same tag.
        for forged in [
            text.replacen("12-", "13-", 1),
            text.replacen("-3-", "-4-", 1),
            text.replacen("-r-", "-c-", 1),
        ] {
            assert_eq!(
                Token::decode(b"secret", &forged, NOW),
                Err(TokenError::BadTag)
            );
        }
        assert_eq!(
            Token::decode(b"secret", &format!("0{text}"), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            Token::decode(b"secret", "12-3-r", NOW),
            Err(TokenError::Malformed)
        );
        let later = NOW + 31 * DAY_MS;
        assert_eq!(
            Token::decode(b"secret", &text, later),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn plus_addresses_carry_the_token_of_their_base_only() {
        let address = plus_address("support@example.com", "12-3-r-1-ab");
        assert_eq!(address, "support+12-3-r-1-ab@example.com");
        assert_eq!(
            detail_for(&address, "Support@Example.com"),
            Some("12-3-r-1-ab")
        );
        assert_eq!(detail_for(&address, "sales@example.com"), None);
        assert_eq!(
            detail_for("support@example.com", "support@example.com"),
            None
        );
    }
}
