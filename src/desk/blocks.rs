//! Blocked senders (admins): an address or a whole domain. Mail from one is
//! kept in the quarantine as blocked, creates no ticket and triggers
//! nothing, until an admin releases it (`pipeline::Pipeline::retry_quarantined`).

use super::{invalid, require_admin, ActionError};
use crate::store::blocks::BlockView;
use crate::store::directory::Actor;
use crate::store::Store;

/// `value` as stored and its kind: `someone@example.com` is an address;
/// `example.com` or `@example.com` a domain.
pub fn normalize(value: &str) -> Result<(String, &'static str), ActionError> {
    let value = value.trim().to_lowercase();
    if let Some(domain) = value
        .strip_prefix('@')
        .or((!value.contains('@')).then_some(value.as_str()))
    {
        let ok = domain.contains('.')
            && domain.len() <= 253
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        return match ok {
            true => Ok((domain.to_string(), "domain")),
            false => Err(invalid("value", format!("{domain:?} is not a mail domain"))),
        };
    }
    crate::mail::address::check(&value).map_err(|m| invalid("value", m))?;
    Ok((value, "address"))
}

pub async fn list(store: &Store, actor: &Actor) -> Result<Vec<BlockView>, ActionError> {
    require_admin(actor, "see blocked senders")?;
    Ok(store.blocks().await?)
}

/// Blocks an address or domain; true when it was not blocked yet.
pub async fn block(
    store: &Store,
    actor: &Actor,
    value: &str,
    reason: Option<&str>,
) -> Result<(BlockView, bool), ActionError> {
    require_admin(actor, "block senders")?;
    let (value, kind) = normalize(value)?;
    if let Some(r) = reason {
        if r.chars().count() > 500 {
            return Err(invalid("reason", "at most 500 characters"));
        }
    }
    let label = actor.label();
    let result = store.block(&value, kind, reason, &label).await?;
    tracing::info!(%value, kind, actor = %label, "Sender blocked.");
    Ok(result)
}

pub async fn unblock(store: &Store, actor: &Actor, value: &str) -> Result<(), ActionError> {
    require_admin(actor, "unblock senders")?;
    let (value, _) = normalize(value)?;
    match store.unblock(&value).await? {
        true => {
            tracing::info!(%value, actor = %actor.label(), "Sender unblocked.");
            Ok(())
        }
        false => Err(ActionError::NotFound(format!("{value} is not blocked"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_addresses_from_domains() {
        assert_eq!(
            normalize("Spam@Example.COM").unwrap(),
            ("spam@example.com".into(), "address")
        );
        assert_eq!(
            normalize("@example.com").unwrap(),
            ("example.com".into(), "domain")
        );
        assert_eq!(
            normalize("example.com").unwrap(),
            ("example.com".into(), "domain")
        );
        assert!(normalize("localhost").is_err());
        assert!(normalize("a b@example.com").is_err());
        assert!(normalize("%.com").is_err());
    }
}
