//! Drafts: one per agent per ticket, seen only by its author. A PUT
//! replaces it whole (idempotent, one upsert: fit for autosave); the
//! agent's queued reply on the ticket removes it.

use serde::{Deserialize, Serialize};

use super::{invalid, visible_ticket, ActionError};
use crate::store::directory::Actor;
use crate::store::drafts::DraftView;
use crate::store::{now_ms, Store};

/// What a draft holds: the reply being written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftContent {
    pub body: Option<String>,
    pub body_html: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The message (row id) the reply will answer.
    pub in_reply_to: Option<i64>,
    /// Files already stored, by reference.
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

/// An attachment of a message on the ticket.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRef {
    pub message: i64,
    pub filename: String,
}

/// Most entries in a draft's address lists and attachments: as a reply.
const MAX_LIST: usize = 300;

fn agent_of(actor: &Actor) -> Result<i64, ActionError> {
    actor
        .agent_id()
        .ok_or_else(|| invalid("agent", "drafts belong to an agent"))
}

/// The live ticket's id; a merged one says where to draft instead.
async fn draft_ticket(store: &Store, actor: &Actor, number: i64) -> Result<i64, ActionError> {
    let ticket = visible_ticket(store, actor, number).await?;
    if ticket.merged_into.is_some() {
        let into = store.merged_number(ticket.id).await?;
        return Err(invalid(
            "ticket",
            format!(
                "ticket #{number} was merged into #{}; draft there",
                into.unwrap_or(0)
            ),
        ));
    }
    Ok(ticket.id)
}

/// Saves the draft; true when it was new.
pub async fn put(
    store: &Store,
    actor: &Actor,
    number: i64,
    content: &DraftContent,
) -> Result<bool, ActionError> {
    let agent = agent_of(actor)?;
    let lists = [
        content.to.as_ref().map_or(0, Vec::len),
        content.cc.len(),
        content.bcc.len(),
        content.attachments.len(),
    ];
    if lists.iter().any(|n| *n > MAX_LIST) {
        return Err(invalid(
            "to",
            format!("at most {MAX_LIST} entries per list"),
        ));
    }
    let ticket = draft_ticket(store, actor, number).await?;
    let text = serde_json::to_string(content).map_err(|e| invalid("content", e.to_string()))?;
    Ok(store.put_draft(ticket, agent, &text, now_ms()).await?)
}

pub async fn get(store: &Store, actor: &Actor, number: i64) -> Result<DraftView, ActionError> {
    let agent = agent_of(actor)?;
    let ticket = visible_ticket(store, actor, number).await?;
    match store.draft(ticket.id, agent).await? {
        Some(row) => Ok(row.view()),
        None => Err(ActionError::NotFound(format!(
            "you have no draft on ticket #{number}"
        ))),
    }
}

pub async fn delete(store: &Store, actor: &Actor, number: i64) -> Result<(), ActionError> {
    let agent = agent_of(actor)?;
    let ticket = visible_ticket(store, actor, number).await?;
    let mut w = store.begin_write().await?;
    let found = store.delete_draft(&mut w.tx, ticket.id, agent).await?;
    w.commit().await?;
    match found {
        true => Ok(()),
        false => Err(ActionError::NotFound(format!(
            "you have no draft on ticket #{number}"
        ))),
    }
}

/// "My drafts".
pub async fn mine(store: &Store, actor: &Actor) -> Result<Vec<DraftView>, ActionError> {
    let agent = agent_of(actor)?;
    let rows = store.drafts_of(agent).await?;
    Ok(rows.into_iter().map(|r| r.view()).collect())
}
