//! Email addresses: one [`Mailbox`] type for parsed mail, replies and the
//! store, one syntax check for config, forms and replies, and one stored
//! form for address lists (a JSON array of `{"address", "name"}` objects).

use serde::{Deserialize, Deserializer, Serialize};

/// An address with an optional display name; the address is lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Mailbox {
    pub fn new(address: impl Into<String>, name: Option<String>) -> Mailbox {
        Mailbox {
            address: address.into(),
            name,
        }
    }
}

/// Reads the stored form, and also a bare address string: replies queued
/// before address lists had one form stored plain strings.
impl<'de> Deserialize<'de> for Mailbox {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Plain(String),
            Object {
                address: String,
                #[serde(default)]
                name: Option<String>,
            },
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Plain(address) => Mailbox {
                address,
                name: None,
            },
            Stored::Object { address, name } => Mailbox { address, name },
        })
    }
}

/// The stored form of an address list.
pub fn list_to_json(list: &[Mailbox]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// Reads a stored address list; an unreadable one reads as empty.
pub fn list_from_json(json: &str) -> Vec<Mailbox> {
    serde_json::from_str(json).unwrap_or_default()
}

/// Trims, strips angle brackets and lower-cases an address from a header.
pub fn normalize(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_lowercase()
}

/// Why an address is refused, as a sentence for the person who typed it.
/// The rules are the ones the SMTP step applies (RFC 5321 dot-atom local
/// part of at most 64 characters, a host name of letters, digits and
/// hyphens), so nothing accepted here is refused when it is sent. Quoted
/// local parts, address literals and non-ASCII addresses are refused: few
/// relays take them and none of our users needs them.
pub fn check(address: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("{address:?} is not an email address ({why})"));
    if !address.is_ascii() {
        return Err(format!(
            "{address:?}: internationalized (non-ASCII) addresses are not supported"
        ));
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return refuse("no @");
    };
    if local.is_empty() || local.len() > 64 {
        return refuse("the part before @ must be 1 to 64 characters");
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if local
        .split('.')
        .any(|atom| atom.is_empty() || !atom.chars().all(atext))
    {
        return refuse("the part before @ may have letters, digits, !#$%&'*+-/=?^_`{|}~ and single dots between them");
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || domain.split('.').count() < 2 || !domain.split('.').all(label_ok) {
        return refuse("the domain must be a host name like example.com");
    }
    Ok(())
}

/// Longest display name accepted from a person (a name is for reading).
pub const MAX_NAME_CHARS: usize = 200;

/// Parses `addr` or `Name <addr>` typed by a person (API, CLI), refusing
/// anything that could break out of its header or that we cannot send to.
/// One entry is one address: a pasted list is refused rather than sent to
/// whichever address came last.
pub fn parse_input(input: &str) -> Result<Mailbox, String> {
    if super::ids::breaks_header(input) {
        return Err("must not contain CR, LF or NUL".into());
    }
    let input = input.trim();
    if looks_like_a_list(input) {
        return Err(format!(
            "{input:?} holds several addresses: give one address per entry"
        ));
    }
    let (name, address) = match (input.rfind('<'), input.ends_with('>')) {
        (Some(open), true) => {
            let name = input[..open].trim().trim_matches('"').trim();
            (
                (!name.is_empty()).then(|| name.to_string()),
                &input[open + 1..input.len() - 1],
            )
        }
        _ => (None, input),
    };
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
    {
        return Err(format!(
            "the display name is longer than {MAX_NAME_CHARS} characters"
        ));
    }
    let address = address.trim();
    check(address)?;
    Ok(Mailbox {
        address: address.to_lowercase(),
        name,
    })
}

/// More than one `@`, or a `,`/`;` outside a quoted name.
fn looks_like_a_list(input: &str) -> bool {
    let mut quoted = false;
    let mut ats = 0;
    for c in input.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' | ';' if !quoted => return true,
            '@' if !quoted => ats += 1,
            _ => {}
        }
    }
    ats > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_stored_shapes_read_back() {
        let list = vec![
            Mailbox::new("dave@customer.test", Some("Dave".into())),
            Mailbox::new("eve@customer.test", None),
        ];
        assert_eq!(list_from_json(&list_to_json(&list)), list);
        let legacy = list_from_json(r#"["dave@customer.test"]"#);
        assert_eq!(legacy, vec![Mailbox::new("dave@customer.test", None)]);
        assert!(list_from_json("not json").is_empty());
    }

    #[test]
    fn the_one_check_refuses_what_could_inject_or_bounce() {
        assert!(check("ann@example.com").is_ok());
        for bad in [
            "ann",
            "ann@",
            "@x.com",
            "ann@localhost",
            "a b@x.com",
            "a@x.com\r\nBcc: e@x.com",
            "a@@x.com",
            "<a@x.com>",
            "a@x.com.",
            "john..doe@x.com",
            ".john@x.com",
            "john.@x.com",
            "carol@customer.test.",
            "ü@exämple.test",
            "x@[127.0.0.1]",
            "a@-x.com",
            "a@x_y.com",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check(&format!("{}@x.com", "a".repeat(64))).is_ok());
        assert!(check(&format!("{}@x.com", "a".repeat(65))).is_err());
    }

    /// Everything the one check accepts, the SMTP step (lettre) accepts too.
    #[test]
    fn accepted_addresses_are_sendable() {
        for good in [
            "ann@example.com",
            "o'brien+tag@mail.example.co.uk",
            "a.b.c@x-y.example",
            "x!#$%&*/=?^_`{|}~-@x.io",
            &format!("{}@x.com", "a".repeat(64)),
        ] {
            assert!(check(good).is_ok(), "{good}");
            assert!(
                good.parse::<lettre::Address>().is_ok(),
                "lettre refuses {good}"
            );
        }
    }

    #[test]
    fn one_entry_is_one_address() {
        assert!(parse_input("Ann <ann@x.com>").is_ok());
        let quoted = parse_input("\"Doe, John\" <john@x.com>").unwrap();
        assert_eq!(quoted.name.as_deref(), Some("Doe, John"));
        for list in [
            "ann@x.com, bob@y.com",
            "ann@x.com; bob@y.com",
            "ann@x.com bob@y.com",
            "Ann ann@x.com <bob@y.com>",
        ] {
            let e = parse_input(list).unwrap_err();
            assert!(e.contains("several addresses"), "{list}: {e}");
        }
        let long = format!("{} <a@x.com>", "n".repeat(MAX_NAME_CHARS + 1));
        assert!(parse_input(&long).unwrap_err().contains("display name"));
    }
}
