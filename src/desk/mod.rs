//! The help desk's actions on tickets, contacts and their records, as the
//! API and the CLI call them: each checks who asks (`Actor`), validates,
//! writes in one transaction with its timeline event, and answers with
//! what changed or an [`ActionError`] naming the field to fix.
//!
//! - `tickets`: list, show, create by hand, edit, status, assign, follow,
//!   move, delete, restore, purge.
//! - `comments`: internal comments, @mentions and the notifications.
//! - `drafts`: one per agent per ticket.
//! - `contacts`: contacts, visitors and companies.
//! - `snippets`: saved text with placeholders, rendered into replies.
//! - `blocks`: blocked senders.
//! - `agent_mail`: agents' emailed answers: verified, then relayed, kept
//!   as a comment, or run as a command.

pub mod agent_mail;
pub mod blocks;
pub mod comments;
pub mod contacts;
pub mod drafts;
pub mod snippets;
pub mod tickets;

pub use crate::outbound::plan::{invalid, ActionError};
use crate::store::directory::Actor;
use crate::store::tickets::TicketRef;
use crate::store::Store;

/// The ticket `number` for a read or a light write (a draft), without a
/// lock: another team's ticket answers like a missing one.
pub(crate) async fn visible_ticket(
    store: &Store,
    actor: &Actor,
    number: i64,
) -> Result<TicketRef, ActionError> {
    match store.ticket_ref(number).await? {
        Some(t) if actor.can_access_team(t.team_id) => match t.deleted_at {
            Some(_) => Err(ActionError::NotFound(format!(
                "ticket #{number} was deleted"
            ))),
            None => Ok(t),
        },
        _ => Err(ActionError::NotFound(format!(
            "ticket #{number} does not exist"
        ))),
    }
}

/// Refuses an action that takes an admin.
pub(crate) fn require_admin(actor: &Actor, what: &str) -> Result<(), ActionError> {
    match actor.is_admin() {
        true => Ok(()),
        false => Err(ActionError::Forbidden(format!("only an admin can {what}"))),
    }
}
