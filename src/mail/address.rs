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
pub fn check(address: &str) -> Result<(), String> {
    let syntax_ok = address.len() <= 254
        && address.matches('@').count() == 1
        && address.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c));
    if syntax_ok {
        Ok(())
    } else {
        Err(format!("{address:?} is not an email address"))
    }
}

/// Parses `addr` or `Name <addr>` typed by a person (API, CLI), refusing
/// anything that could break out of its header or that we cannot send to.
pub fn parse_input(input: &str) -> Result<Mailbox, String> {
    if super::ids::breaks_header(input) {
        return Err("must not contain CR, LF or NUL".into());
    }
    let input = input.trim();
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
    let address = address.trim();
    check(address)?;
    if !address.is_ascii() {
        return Err(format!(
            "{address:?}: internationalized (non-ASCII) addresses are not supported yet"
        ));
    }
    Ok(Mailbox {
        address: address.to_lowercase(),
        name,
    })
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
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
