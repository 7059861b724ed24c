//! Merging a ticket into another, by a person: the one action an agent
//! takes on a `related` link a late parent recorded. The merged ticket
//! lives on in the other: threading and replies follow `merged_into`, and
//! its contacts take part in the survivor.

use serde::Serialize;

use super::plan::{invalid, ActionError};
use crate::store::directory::Actor;
use crate::store::{events, now_ms, tickets, Store};

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Merged {
    pub ticket: i64,
    pub into: i64,
}

/// Merges ticket `number` into ticket `into` (both live, of one team the
/// actor works in).
pub async fn merge_tickets(
    store: &Store,
    actor: &Actor,
    number: i64,
    into: i64,
) -> Result<Merged, ActionError> {
    if number == into {
        return Err(invalid("into", "a ticket cannot be merged into itself"));
    }
    let mut w = store.begin_write().await?;
    let found = store.tickets_for_update(&mut w.tx, [number, into]).await?;
    let pick = |n: i64| {
        found
            .iter()
            .find(|t| t.number == n && actor.can_access_team(t.team_id))
            .cloned()
            .ok_or_else(|| ActionError::NotFound(format!("ticket #{n} does not exist")))
    };
    let (from, to) = (pick(number)?, pick(into)?);
    for t in [&from, &to] {
        if t.deleted_at.is_some() {
            return Err(ActionError::NotFound(format!(
                "ticket #{} was deleted",
                t.number
            )));
        }
        if t.merged_into.is_some() {
            return Err(invalid(
                "into",
                format!("ticket #{} is already merged into another ticket", t.number),
            ));
        }
    }
    if from.team_id != to.team_id {
        return Err(invalid(
            "into",
            format!("tickets #{number} and #{into} belong to different teams; move one first"),
        ));
    }
    let now = now_ms();
    let label = actor.label();
    if !tickets::merge_into(&mut w.tx, from.id, to.id, now).await? {
        return Err(invalid(
            "into",
            "one of the tickets changed meanwhile; try again",
        ));
    }
    let data = serde_json::json!({ "into": into });
    events::insert(&mut w.tx, from.id, "merged", &data, &label, now).await?;
    let data = serde_json::json!({ "from": number });
    events::insert(&mut w.tx, to.id, "merged", &data, &label, now).await?;
    w.commit().await?;
    tracing::info!(ticket = number, into, actor = %label, "Ticket merged.");
    Ok(Merged {
        ticket: number,
        into,
    })
}
