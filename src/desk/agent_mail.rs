//! Agents answering by email. The pipeline stores mail from an agent (or
//! carrying a reply token) that threads to a ticket and queues it here;
//! this verifies it and acts on it.
//!
//! Verified only when it carries a valid reply token for this ticket and
//! this agent (in a recipient address, or through the notification it
//! answers), its From is that agent, the agent is still in the ticket's
//! team, and, where the From domain publishes DMARC, the mail passes it
//! (`net::dmarc`; a DNS failure is retried for an hour). Anything else stays on the ticket flagged `unverified`
//! with the reason, is logged, and is never relayed.
//!
//! A verified answer, without quote and signature, is sent to the
//! customer as the team (`outbound::queue_reply`, with its rules for
//! status and owner), its files along; an answer to a mention becomes an
//! internal comment. A first-line command changes what happens: `#note`,
//! `#status <name>`, `#assign <me|email>`, `#close`. A refusal or an
//! unknown command is answered to the agent, and nothing reaches the
//! customer.

use std::collections::BTreeMap;

use crate::config::{Config, Role, StatusKind};
use crate::mail::ids;
use crate::mail::quote::new_part;
use crate::mail::token::{Purpose, Token, TokenError};
use crate::net::dmarc::{Dmarc, Verdict};
use crate::outbound::compose::NewAttachment;
use crate::outbound::{queue_reply, ActionError, ReplyRequest};
use crate::store::agent_mail::AgentMail;
use crate::store::directory::{Actor, AgentInfo, Directory};
use crate::store::{now_ms, Store};

/// Claimed per pass, and how long a claim lasts.
const PASS_LIMIT: i64 = 20;
const LEASE_MS: i64 = 120_000;
const DAY_MS: i64 = 86_400_000;
/// A DNS failure is retried this often, for this long after arrival.
const DNS_RETRY_MS: i64 = 60_000;
const DNS_PATIENCE_MS: i64 = 3_600_000;

/// The commands an agent may start an answer with.
pub const COMMANDS: &str = "#note, #status <name>, #assign <me|email>, #close";

/// A first-line command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Note,
    Status(String),
    Assign(String),
    Close,
    Unknown(String),
}

/// The command on the first non-empty line of `text`, and the text
/// without it. `#12` or `# heading` is not a command.
pub fn parse_command(text: &str) -> (Option<Command>, String) {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let Some(first) = lines.next() else {
        return (None, String::new());
    };
    let first = first.trim();
    let Some(word) = first.strip_prefix('#') else {
        return (None, text.trim().to_string());
    };
    let (name, argument) = word.split_once(char::is_whitespace).unwrap_or((word, ""));
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic()) {
        return (None, text.trim().to_string());
    }
    let argument = argument.trim().to_string();
    let command = match name.to_ascii_lowercase().as_str() {
        "note" => Command::Note,
        "close" => Command::Close,
        "status" => Command::Status(argument),
        "assign" => Command::Assign(argument),
        other => Command::Unknown(other.to_string()),
    };
    let rest: Vec<&str> = lines.collect();
    (Some(command), rest.join("\n").trim().to_string())
}

/// Until `stop`: agents' mail is acted on, then notifications are mailed,
/// every `notifications.poll_interval_ms`; the outbox is woken for what
/// was queued. A database outage is logged and waited out.
pub async fn run(
    store: Store,
    dir: std::sync::Arc<Directory>,
    config: std::sync::Arc<Config>,
    dmarc: std::sync::Arc<Dmarc>,
    wake: std::sync::Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let interval = std::time::Duration::from_millis(config.notifications.poll_interval_ms);
    loop {
        match run_pass(&store, &dir, &config, &dmarc).await {
            Ok(0) => {}
            Ok(_) => wake.notify_one(),
            Err(e) => tracing::warn!(error = %e, "Agents' mail could not be handled; retrying."),
        }
        match crate::outbound::notify::run_pass(&store, &dir, &config).await {
            Ok(pass) if pass.queued > 0 => wake.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Notifications could not be mailed; retrying."),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Verifies and acts on pending agents' mail; returns how many were done.
pub async fn run_pass(
    store: &Store,
    dir: &Directory,
    config: &Config,
    dmarc: &Dmarc,
) -> Result<usize, sqlx::Error> {
    let now = now_ms();
    let claimed = store.claim_agent_mail(now, PASS_LIMIT, LEASE_MS).await?;
    let count = claimed.len();
    for mail in claimed {
        let verdict = match verify(store, dir, config, &mail, now).await? {
            Ok(grant) => match authenticate(store, config, dmarc, &mail, now).await? {
                Verdict::Pass => Ok(grant),
                Verdict::Fail(reason) => Err(reason),
                Verdict::TryLater(reason) => {
                    tracing::info!(ticket = mail.ticket_number, reason = %reason, "An agent's answer waits for DNS.");
                    store
                        .defer_agent_mail(mail.message, now + DNS_RETRY_MS)
                        .await?;
                    continue;
                }
            },
            Err(reason) => Err(reason),
        };
        match verdict {
            Err(reason) => {
                tracing::warn!(
                    ticket = mail.ticket_number,
                    message = mail.message,
                    from = %mail.from_addr,
                    reason = %reason,
                    "Mail that looks like an agent's answer was not verified; kept on the ticket, not relayed."
                );
                store
                    .finish_agent_mail(&mail, "unverified", "unverified", None, &reason, None, now)
                    .await?;
            }
            Ok((agent, purpose)) => act(store, dir, config, &mail, agent, purpose, now).await?,
        }
    }
    Ok(count)
}

/// The agent and what their answer may do, or why it is not theirs.
async fn verify<'d>(
    store: &Store,
    dir: &'d Directory,
    config: &Config,
    mail: &AgentMail,
    now: i64,
) -> Result<Result<(&'d AgentInfo, Purpose), String>, sqlx::Error> {
    let grant = match token_grant(dir, mail, now) {
        Some(grant) => grant,
        None => notification_grant(store, dir, config, mail, now).await?,
    };
    let (agent_id, purpose) = match grant {
        Ok(grant) => grant,
        Err(reason) => return Ok(Err(reason)),
    };
    let sender = dir.agents.values().find(|a| a.email == mail.from_addr);
    let owner = dir.agent_by_id(agent_id);
    let owner_label = owner.map_or_else(
        || format!("agent #{agent_id}"),
        |a| format!("agent {}", a.key),
    );
    Ok(match sender {
        None => Err(format!(
            "the sender {} is not an agent (the reply token is {owner_label}'s)",
            mail.from_addr
        )),
        Some(a) if a.id != agent_id => Err(format!(
            "the reply token is {owner_label}'s, not the sender's ({})",
            a.key
        )),
        Some(a) if !a.team_ids.contains(&mail.team_id) && a.role != Role::SuperAdmin => Err(
            format!("agent {} is no longer a member of the ticket's team", a.key),
        ),
        Some(a) => Ok((a, purpose)),
    })
}

/// DMARC of the From domain; a DNS failure that lasts past
/// `DNS_PATIENCE_MS` after arrival fails it.
async fn authenticate(
    store: &Store,
    config: &Config,
    dmarc: &Dmarc,
    mail: &AgentMail,
    now: i64,
) -> Result<Verdict, sqlx::Error> {
    let settings = &config.agent_mail;
    if settings.dmarc == crate::config::DmarcCheck::Off {
        return Ok(Verdict::Pass);
    }
    let raw = store.message_raw(mail.message).await?;
    Ok(
        match dmarc
            .check(&raw, settings.dmarc, settings.authserv_id.as_deref())
            .await
        {
            Verdict::TryLater(reason) if now > mail.received_at + DNS_PATIENCE_MS => {
                Verdict::Fail(format!("{reason} (for over an hour)"))
            }
            verdict => verdict,
        },
    )
}

/// From the reply tokens in the recipient addresses: the first valid one
/// decides; `None` when there are none.
fn token_grant(
    dir: &Directory,
    mail: &AgentMail,
    now: i64,
) -> Option<Result<(i64, Purpose), String>> {
    if mail.tokens.is_empty() {
        return None;
    }
    let mut reason = String::new();
    for text in &mail.tokens {
        match Token::decode(&dir.secret.0, text, now) {
            Ok(token) if token.ticket == mail.ticket_id => {
                return Some(Ok((token.agent, token.purpose)))
            }
            Ok(_) => reason = "the reply token is for another ticket".into(),
            Err(TokenError::Expired) => reason = "the reply token expired".into(),
            Err(e) if reason.is_empty() => reason = e.to_string(),
            Err(_) => {}
        }
    }
    Some(Err(reason))
}

/// Through the notification the mail answers (its In-Reply-To or
/// References), for clients that answer the From rather than Reply-To.
async fn notification_grant(
    store: &Store,
    dir: &Directory,
    config: &Config,
    mail: &AgentMail,
    now: i64,
) -> Result<Result<(i64, Purpose), String>, sqlx::Error> {
    let secret = &dir.secret.0;
    let ours: Vec<String> = mail
        .in_reply_to
        .iter()
        .chain(mail.references.iter().rev())
        .filter(|id| ids::ticket_of_message_id(secret, id).is_some())
        .cloned()
        .collect();
    let found = store.answered_notifications(&ours).await?;
    let days = i64::from(config.notifications.token_days);
    let mut reason = "no reply token: it does not answer one of our notifications".to_string();
    for (id, agent, purpose, sent_at) in found {
        if ids::ticket_of_message_id(secret, &id) != Some(mail.ticket_id) {
            reason = "the notification it answers is for another ticket".into();
            continue;
        }
        if now > sent_at + days * DAY_MS {
            reason = "the notification it answers is too old (its reply token expired)".into();
            continue;
        }
        let purpose = Purpose::from_name(&purpose).unwrap_or(Purpose::Reply);
        return Ok(Ok((agent, purpose)));
    }
    Ok(Err(reason))
}

/// Does what a verified answer asks.
#[allow(clippy::too_many_arguments)]
async fn act(
    store: &Store,
    dir: &Directory,
    config: &Config,
    mail: &AgentMail,
    agent: &AgentInfo,
    purpose: Purpose,
    now: i64,
) -> Result<(), sqlx::Error> {
    let number = mail.ticket_number;
    match perform(store, dir, config, mail, agent, purpose).await {
        Ok((flag, outcome)) => {
            tracing::info!(ticket = number, agent = %agent.key, outcome = %outcome, "Agent's emailed answer done.");
            store
                .finish_agent_mail(mail, "done", flag, Some(agent.id), &outcome, None, now)
                .await
        }
        Err(ActionError::Store(e)) => Err(e),
        Err(refusal) => {
            let explanation = format!(
                "Your answer to ticket #{number} was not carried out, and nothing was sent to the customer: {refusal}.\n\n\
                 Answer the notification again once fixed; the commands are {COMMANDS}."
            );
            tracing::info!(ticket = number, agent = %agent.key, reason = %refusal, "Agent's emailed answer refused.");
            store
                .finish_agent_mail(
                    mail,
                    "done",
                    "agent_refused",
                    Some(agent.id),
                    &refusal.to_string(),
                    Some(&explanation),
                    now,
                )
                .await
        }
    }
}

/// What the answer asks, done: the flag and outcome, or the refusal.
async fn perform(
    store: &Store,
    dir: &Directory,
    config: &Config,
    mail: &AgentMail,
    agent: &AgentInfo,
    purpose: Purpose,
) -> Result<(&'static str, String), ActionError> {
    let actor = Actor::Agent(agent.clone());
    let number = mail.ticket_number;
    // Cut, it would reach the customer short and with our note in it.
    if crate::mail::quote::is_cut(&mail.body_text) {
        return Err(crate::outbound::plan::invalid(
            "body",
            "the answer is over 1 MiB of text; send it through the API, or as an attachment",
        ));
    }
    let (command, text) = parse_command(&new_part(&mail.body_text));
    // What follows #assign is for the colleague, not the customer.
    let internal = purpose == Purpose::Comment
        || matches!(command, Some(Command::Note) | Some(Command::Assign(_)));
    if let Some(Command::Unknown(name)) = &command {
        return Err(crate::outbound::plan::invalid(
            "command",
            format!("#{name} is not a command; the commands are {COMMANDS}"),
        ));
    }
    if let Some(Command::Assign(who)) = &command {
        let key = assignee(dir, agent, who)?;
        super::tickets::assign(store, dir, &actor, number, Some(key)).await?;
    }
    let status = match &command {
        Some(Command::Status(name)) if name.is_empty() => {
            return Err(crate::outbound::plan::invalid(
                "status",
                "#status needs a status name",
            ))
        }
        Some(Command::Status(name)) => Some(name.clone()),
        Some(Command::Close) => Some(closed_status(dir, mail)?),
        _ => None,
    };
    // Nothing to relay: the words (if any) are a comment, and the status
    // is set on its own instead of with a reply.
    if internal || text.is_empty() {
        if !internal && status.is_none() && command.is_none() {
            return Err(crate::outbound::plan::invalid(
                "body",
                "the answer is empty; nothing was sent",
            ));
        }
        if internal && !text.is_empty() {
            super::comments::add(store, dir, &actor, number, &text).await?;
        }
        if let Some(status) = &status {
            super::tickets::set_status(store, dir, &actor, number, status.clone(), BTreeMap::new())
                .await?;
        }
        return Ok(match (internal, status) {
            (true, _) => ("agent_note", "kept as an internal comment".to_string()),
            (false, Some(status)) => ("agent_command", format!("status set to {status}")),
            (false, None) => ("agent_command", "command done".to_string()),
        });
    }
    let attachments = store
        .message_files(mail.message)
        .await?
        .into_iter()
        .map(|f| NewAttachment {
            filename: f.filename,
            content_type: f.content_type,
            data: f.data,
        })
        .collect();
    let request = ReplyRequest {
        body_text: Some(text.clone()),
        attachments,
        status,
        idempotency_key: Some(format!("agent-mail.{}", mail.message)),
        ..Default::default()
    };
    let queued = queue_reply(store, dir, config, &actor, number, request).await?;
    Ok((
        "agent_reply",
        format!("relayed to the customer as message {}", queued.message),
    ))
}

/// `me` or an agent's address, as the agent key `assign` takes.
fn assignee(dir: &Directory, me: &AgentInfo, who: &str) -> Result<String, ActionError> {
    let who = who
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase();
    if who.is_empty() || who == "me" {
        return Ok(me.key.clone());
    }
    dir.agents
        .values()
        .find(|a| a.email == who || a.key == who)
        .map(|a| a.key.clone())
        .ok_or_else(|| crate::outbound::plan::invalid("assign", format!("no agent {who}")))
}

/// The ticket pipeline's status `#close` means: one named "closed", else
/// its first closed status.
fn closed_status(dir: &Directory, mail: &AgentMail) -> Result<String, ActionError> {
    let mut closed: Vec<&crate::store::directory::StatusInfo> = dir
        .statuses
        .values()
        .filter(|s| s.kind == StatusKind::Closed && s.pipeline_id == mail.pipeline_id)
        .collect();
    closed.sort_by_key(|s| (s.name != "closed", s.id));
    closed.first().map(|s| s.name.clone()).ok_or_else(|| {
        crate::outbound::plan::invalid("status", "the pipeline has no closed status")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_the_first_line_only() {
        assert_eq!(
            parse_command("#note\nCalled her, she is fine."),
            (Some(Command::Note), "Called her, she is fine.".into())
        );
        assert_eq!(
            parse_command("\n#Status solved\n"),
            (Some(Command::Status("solved".into())), String::new())
        );
        assert_eq!(
            parse_command("#assign bob@example.com\nBob knows this one."),
            (
                Some(Command::Assign("bob@example.com".into())),
                "Bob knows this one.".into()
            )
        );
        assert_eq!(parse_command("#close").0, Some(Command::Close));
        assert_eq!(
            parse_command("#frobnicate now").0,
            Some(Command::Unknown("frobnicate".into()))
        );
        for text in ["#12 is fixed", "# Heading", "Hello\n#note"] {
            assert_eq!(parse_command(text).0, None, "{text}");
        }
    }
}
