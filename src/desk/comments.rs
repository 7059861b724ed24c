//! Internal comments and @mentions. A comment is for colleagues: it is
//! never sent and never part of anything a contact receives. `@key`,
//! `@email` or `@FirstName` of a member of the ticket's team makes one
//! notification for that agent (however often the comment names them).

use serde::Serialize;
use serde_json::json;

use super::{invalid, ActionError};
use crate::outbound::reply::accessible_ticket;
use crate::store::comments::{CommentView, Notice, NotificationView};
use crate::store::directory::{Actor, AgentInfo, Directory};
use crate::store::{events, now_ms, Store};

/// Most characters in a comment.
pub const MAX_COMMENT_CHARS: usize = 65_536;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Commented {
    pub ticket: i64,
    pub comment: CommentView,
    /// Agent keys notified.
    pub mentioned: Vec<String>,
}

/// The words after `@` in `body`: an email address or a name of letters,
/// digits, `.`, `_` and `-` (a trailing `.` is punctuation).
fn mention_words(body: &str) -> Vec<String> {
    let mut words = Vec::new();
    let chars: Vec<char> = body.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        // An `@` inside a word is an address's, not a mention.
        if *c != '@' || (i > 0 && !chars[i - 1].is_whitespace() && chars[i - 1] != '(') {
            continue;
        }
        let word: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'))
            .collect();
        let word = word.trim_end_matches(['.', '-']).to_lowercase();
        if !word.is_empty() {
            words.push(word);
        }
    }
    words
}

/// The members of `team` that `body` mentions, each once.
pub fn mentioned<'d>(dir: &'d Directory, team: i64, body: &str) -> Vec<&'d AgentInfo> {
    let members: Vec<&AgentInfo> = dir
        .agents
        .values()
        .filter(|a| a.team_ids.contains(&team))
        .collect();
    let mut found: Vec<&AgentInfo> = Vec::new();
    for word in mention_words(body) {
        let first_name = |a: &AgentInfo| {
            a.name
                .split_whitespace()
                .next()
                .map(str::to_lowercase)
                .unwrap_or_default()
        };
        let by_name: Vec<&&AgentInfo> = members.iter().filter(|a| first_name(a) == word).collect();
        let agent = members
            .iter()
            .find(|a| a.key.to_lowercase() == word || a.email == word)
            .or(match by_name.as_slice() {
                [one] => Some(*one),
                _ => None, // two Alices: say which by key or address
            });
        if let Some(agent) = agent {
            if !found.iter().any(|f| f.id == agent.id) {
                found.push(agent);
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    found
}

/// Adds a comment and notifies the members it mentions (not its author).
pub async fn add(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    number: i64,
    body: &str,
) -> Result<Commented, ActionError> {
    let body = body.trim();
    if body.is_empty() {
        return Err(invalid("body", "must not be empty"));
    }
    if body.chars().count() > MAX_COMMENT_CHARS {
        return Err(invalid(
            "body",
            format!("at most {MAX_COMMENT_CHARS} characters"),
        ));
    }
    let now = now_ms();
    let label = actor.label();
    let mut w = store.begin_write().await?;
    let ticket = accessible_ticket(store, &mut w.tx, actor, number).await?;
    let id = store
        .add_comment(&mut w.tx, ticket.id, actor.agent_id(), &label, body, now)
        .await?;
    let notified: Vec<&AgentInfo> = mentioned(dir, ticket.team_id, body)
        .into_iter()
        .filter(|a| Some(a.id) != actor.agent_id())
        .collect();
    for agent in &notified {
        let notice = Notice {
            agent: agent.id,
            ticket: ticket.id,
            kind: "mention",
            comment: Some(id),
            actor: &label,
            now,
        };
        store.add_notification(&mut w.tx, &notice).await?;
    }
    let keys: Vec<String> = notified.iter().map(|a| a.key.clone()).collect();
    let data = json!({ "comment": id, "mentioned": keys });
    events::insert(&mut w.tx, ticket.id, "commented", &data, &label, now).await?;
    w.commit().await?;
    Ok(Commented {
        ticket: ticket.number,
        comment: CommentView {
            id,
            author: label,
            body: body.to_string(),
            created_at: now,
        },
        mentioned: keys,
    })
}

pub async fn list(
    store: &Store,
    actor: &Actor,
    number: i64,
) -> Result<Vec<CommentView>, ActionError> {
    let ticket = super::visible_ticket(store, actor, number).await?;
    Ok(store.comments(ticket.id).await?)
}

fn agent_of(actor: &Actor) -> Result<i64, ActionError> {
    actor
        .agent_id()
        .ok_or_else(|| invalid("agent", "notifications belong to an agent"))
}

/// The agent's notifications on tickets they can still see, newest first.
pub async fn notifications(
    store: &Store,
    actor: &Actor,
    unread: bool,
) -> Result<Vec<NotificationView>, ActionError> {
    let agent = agent_of(actor)?;
    Ok(store.notifications(agent, unread, 200).await?)
}

pub async fn mark_read(store: &Store, actor: &Actor, id: i64) -> Result<(), ActionError> {
    let agent = agent_of(actor)?;
    match store.mark_read(agent, id, now_ms()).await? {
        true => Ok(()),
        false => Err(ActionError::NotFound(format!(
            "notification {id} does not exist"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mention_words_skip_addresses_and_trailing_punctuation() {
        let words = mention_words("Ping @bob and @alice@example.com. Mail x@y.z, see (@Carol).");
        assert_eq!(words, ["bob", "alice@example.com", "carol"]);
    }
}
