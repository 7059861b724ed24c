//! Who hears back: an agent adds someone to a ticket's participants, after
//! which default replies go to them too. A stranger whose mail threaded
//! onto a ticket (flagged `new_participant`) gets nothing until then.

use super::plan::{parse_recipient, ActionError};
use super::reply::accessible_ticket;
use crate::store::directory::Actor;
use crate::store::{now_ms, Store};

/// Adds `address` (`addr` or `Name <addr>`) to ticket `number`'s
/// participants; true when they were not one yet.
pub async fn add_participant(
    store: &Store,
    actor: &Actor,
    number: i64,
    address: &str,
) -> Result<bool, ActionError> {
    let person = parse_recipient("address", address)?;
    let mut w = store.begin_write().await?;
    let ticket = accessible_ticket(store, &mut w.tx, actor, number).await?;
    let added = store
        .add_participant(&mut w.tx, ticket.id, &person, &actor.label(), now_ms())
        .await?;
    w.commit().await?;
    Ok(added)
}
