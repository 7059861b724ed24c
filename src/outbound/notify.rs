//! Notification mail to agents. One pass, in one transaction (so nothing
//! is announced twice, or lost, whichever instance runs it):
//!
//! 1. Ticket events since the notifier's cursor become notifications
//!    (a new ticket, a customer's message, an assignment) for the agents
//!    the team's `notify` settings name, less the one who caused it. Automatic mail (auto-replies, bounces,
//!    lists, reports, our own mail coming back) announces nothing.
//! 2. Every notification not yet mailed (mentions included) is rendered
//!    and queued in the outbox, unless the team sends no notification
//!    mail, the agent muted it, the address is one of our own, or the
//!    address had its hour's share of automatic mail (then it is held
//!    back, and counted in `mailroom status`).

use serde_json::Value;

use super::compose::{self, NoticeDraft};
use crate::config::{Audience, Config, NotifyConfig, NotifyEvent};
use crate::mail::quote::{new_part, SEPARATOR};
use crate::mail::token::{plus_address, Purpose, Token};
use crate::mail::{ids, Mailbox};
use crate::store::directory::{AgentInfo, Directory, TeamInfo};
use crate::store::notify::{NewNotification, NoticeContent, PendingNotice, TicketPeople};
use crate::store::{now_ms, Store, Tx};

/// Events and notifications looked at per pass.
const PASS_LIMIT: i64 = 200;
/// Lines of the customer's message a notification quotes.
const QUOTED_LINES: usize = 40;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub notified: usize,
    pub queued: usize,
    pub held: usize,
}

/// Runs one pass; `queued` > 0 means the outbox should be woken.
pub async fn run_pass(
    store: &Store,
    dir: &Directory,
    config: &Config,
) -> Result<Pass, sqlx::Error> {
    let now = now_ms();
    let mut pass = Pass::default();
    let any_team = config.teams.values().any(|t| t.notify.is_some());
    if !any_team || !store.notify_work_waiting().await? {
        return Ok(pass);
    }
    let mut w = store.begin_write().await?;
    let cursor = store.notify_cursor(&mut w.tx).await?;
    let events = store.notify_events(&mut w.tx, cursor, PASS_LIMIT).await?;
    for event in &events {
        pass.notified += announce(store, &mut w.tx, dir, config, event, now).await?;
    }
    let last = match events.last() {
        Some(e) => e.id,
        None => store.last_event_id(&mut w.tx).await?,
    };
    if last > cursor {
        store.set_notify_cursor(&mut w.tx, last).await?;
    }
    for notice in store.pending_notices(&mut w.tx, PASS_LIMIT).await? {
        match mail_notice(store, &mut w.tx, dir, config, &notice, now).await? {
            "queued" => pass.queued += 1,
            "held" => pass.held += 1,
            _ => {}
        }
    }
    w.commit().await?;
    if pass.held > 0 {
        metrics::counter!("mailroom_automatic_mail_held_total").increment(pass.held as u64);
    }
    Ok(pass)
}

fn team_notify<'c>(config: &'c Config, team: &TeamInfo) -> Option<&'c NotifyConfig> {
    config.teams.get(&team.key)?.notify.as_ref()
}

fn muted(config: &Config, agent: &AgentInfo, event: NotifyEvent) -> bool {
    config
        .agents
        .get(&agent.key)
        .is_some_and(|a| a.mute.contains(&event))
}

/// Automatic mail is recorded, never announced.
fn automatic(data: &Value) -> bool {
    const AUTOMATIC: &[&str] = &["auto_reply", "bounce", "bulk", "report", "loop"];
    data["flags"].as_array().is_some_and(|flags| {
        flags
            .iter()
            .any(|f| AUTOMATIC.contains(&f.as_str().unwrap_or("")))
    })
}

/// Turns one event into notifications; returns how many.
async fn announce(
    store: &Store,
    tx: &mut Tx,
    dir: &Directory,
    config: &Config,
    event: &crate::store::notify::EventRow,
    now: i64,
) -> Result<usize, sqlx::Error> {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let kind = match event.kind.as_str() {
        "created" => NotifyEvent::NewTicket,
        "message_received" => NotifyEvent::CustomerReply,
        "assigned" => NotifyEvent::Assigned,
        _ => return Ok(0),
    };
    if automatic(&data) {
        return Ok(0);
    }
    let Some(people) = store.ticket_people(tx, event.ticket_id).await? else {
        return Ok(0);
    };
    let Some(team) = dir.team_by_id(people.team_id) else {
        return Ok(0);
    };
    let Some(notify) = team_notify(config, team) else {
        return Ok(0);
    };
    let audience = match kind {
        NotifyEvent::NewTicket => &notify.new_ticket,
        NotifyEvent::CustomerReply => &notify.customer_reply,
        NotifyEvent::Assigned => &notify.assigned,
        NotifyEvent::Mention => &notify.mention,
    };
    let assignee = data["to"].as_i64();
    let message = data["message"].as_i64();
    let mut count = 0;
    for agent in recipients(dir, &people, audience, assignee) {
        let actor = format!("agent:{}", agent.key);
        // A muted event is still a notification (the API lists it); its
        // mail is what muting stops.
        if actor == event.actor {
            continue;
        }
        store
            .add_event_notification(
                tx,
                agent.id,
                event.ticket_id,
                kind.name(),
                message,
                &event.actor,
                None,
                now,
            )
            .await?;
        count += 1;
    }
    Ok(count)
}

/// The agents an audience names, each once, only members of the team.
fn recipients<'d>(
    dir: &'d Directory,
    people: &TicketPeople,
    audience: &[Audience],
    assignee: Option<i64>,
) -> Vec<&'d AgentInfo> {
    let team = people.team_id;
    let mut ids: Vec<i64> = Vec::new();
    let members = || {
        let mut members: Vec<&AgentInfo> = dir
            .agents
            .values()
            .filter(|a| a.team_ids.contains(&team))
            .collect();
        members.sort_by_key(|a| a.id);
        members.into_iter().map(|a| a.id).collect::<Vec<_>>()
    };
    for who in audience {
        match who {
            Audience::Team => ids.extend(members()),
            Audience::Owner => match people.owner {
                Some(owner) => ids.push(owner),
                None => ids.extend(members()),
            },
            Audience::Followers => ids.extend(&people.followers),
            Audience::Assignee => ids.extend(assignee),
            Audience::Mentioned => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(*id))
        .filter_map(|id| dir.agent_by_id(id))
        .filter(|a| a.team_ids.contains(&team))
        .collect()
}

/// Decides and, when it goes, queues one notification's mail. Returns the
/// state recorded.
async fn mail_notice(
    store: &Store,
    tx: &mut Tx,
    dir: &Directory,
    config: &Config,
    notice: &PendingNotice,
    now: i64,
) -> Result<&'static str, sqlx::Error> {
    let content = store.notice_content(tx, notice).await?;
    let team = dir.team_by_id(content.team_id);
    let notify = team.and_then(|t| team_notify(config, t));
    let agent = dir.agent_by_id(notice.agent_id);
    let state = match (team, notify, agent) {
        _ if content.deleted => "skipped",
        (Some(team), Some(notify), Some(agent)) => {
            let event = NotifyEvent::from_name(&notice.kind);
            if event.is_some_and(|e| muted(config, agent, e)) {
                "muted"
            } else if super::plan::is_own(dir, &agent.email) {
                // Never to one of our own mailboxes: that is a loop.
                "skipped"
            } else if store
                .auto_mail_count(tx, &agent.email, now - 3_600_000)
                .await?
                >= i64::from(config.notifications.max_per_address_per_hour)
            {
                tracing::warn!(
                    agent = %agent.key,
                    ticket = content.number,
                    limit = config.notifications.max_per_address_per_hour,
                    "Notification mail held back: the address had its hour's share of automatic mail."
                );
                "held"
            } else {
                queue(
                    store, tx, dir, config, team, notify, agent, notice, &content, now,
                )
                .await?;
                "queued"
            }
        }
        _ => "skipped",
    };
    store.set_mail_state(tx, notice.id, state, now).await?;
    Ok(state)
}

#[allow(clippy::too_many_arguments)]
async fn queue(
    store: &Store,
    tx: &mut Tx,
    dir: &Directory,
    config: &Config,
    team: &TeamInfo,
    notify: &NotifyConfig,
    agent: &AgentInfo,
    notice: &PendingNotice,
    content: &NoticeContent,
    now: i64,
) -> Result<(), sqlx::Error> {
    let secret = &dir.secret.0;
    let purpose = match notice.kind.as_str() {
        "mention" | "comment" => Purpose::Comment,
        _ => Purpose::Reply,
    };
    let token = Token::new(
        notice.ticket_id,
        agent.id,
        purpose,
        now,
        config.notifications.token_days,
    )
    .encode(secret);
    let domain = notify
        .address
        .rsplit_once('@')
        .map_or("mailroom.invalid", |(_, d)| d);
    let message_id = ids::new_message_id(secret, notice.ticket_id, domain);
    let references = vec![ids::ticket_reference(secret, notice.ticket_id, domain)];
    let from = Mailbox {
        address: notify.address.to_lowercase(),
        name: Some(
            notify
                .name
                .clone()
                .unwrap_or_else(|| format!("{} notifications", team.name)),
        ),
    };
    let to = Mailbox {
        address: agent.email.clone(),
        name: Some(agent.name.clone()),
    };
    let (subject, text) = notice_text(team, notify, notice, content, purpose);
    let Some((relay, _)) = config.relay_for(&team.key, &notify.address) else {
        tracing::warn!(team = %team.key, "No relay for the notification address; notification not mailed.");
        return Ok(());
    };
    let reply_to = plus_address(&from.address, &token);
    let raw = compose::render_notice(&NoticeDraft {
        from: &from,
        to: &to,
        reply_to: &reply_to,
        subject: &subject,
        message_id: &message_id,
        references: &references,
        text: &text,
        loop_name: domain,
        date_ms: now,
    });
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            tracing::warn!(error = %e, "Notification could not be rendered.");
            return Ok(());
        }
    };
    store
        .queue_notification(
            tx,
            &NewNotification {
                ticket: notice.ticket_id,
                team: team.id,
                agent: agent.id,
                message_id: &message_id,
                from: &from,
                to: &to,
                subject: &subject,
                body_text: &text,
                purpose: purpose.name(),
                raw: &raw,
                relay,
                now,
            },
        )
        .await?;
    Ok(())
}

/// The subject and body of a notification.
fn notice_text(
    team: &TeamInfo,
    notify: &NotifyConfig,
    notice: &PendingNotice,
    content: &NoticeContent,
    purpose: Purpose,
) -> (String, String) {
    let number = content.number;
    let title = &content.subject;
    let who = match content.author.as_str() {
        "" => notice.actor.as_str(),
        author => author,
    };
    let (subject, headline) = match notice.kind.as_str() {
        "new_ticket" => (
            format!("[#{number}] New ticket: {title}"),
            format!("New ticket #{number} from {who}: {title}"),
        ),
        "customer_reply" => (
            format!("[#{number}] New reply: {title}"),
            format!("{who} wrote on ticket #{number}: {title}"),
        ),
        "assigned" => (
            format!("[#{number}] Assigned to you: {title}"),
            format!("Ticket #{number} is now yours ({}): {title}", notice.actor),
        ),
        "mention" => (
            format!("[#{number}] {} mentioned you: {title}", notice.actor),
            format!(
                "{} mentioned you on ticket #{number}: {title}",
                notice.actor
            ),
        ),
        _ => (
            format!("[#{number}] {title}"),
            format!("About ticket #{number}: {title}"),
        ),
    };
    let quoted: Vec<String> = match &notice.detail {
        Some(detail) => detail.lines().map(str::to_string).collect(),
        None => new_part(&content.text)
            .lines()
            .take(QUOTED_LINES)
            .map(|l| format!("> {l}"))
            .collect(),
    };
    let action = match purpose {
        Purpose::Reply => format!(
            "Answer this mail to reply to the customer as {} ({}).\n\
             Start your answer with #note to keep it internal; #status <name>, #assign me|<email> and #close work too.",
            team.name, notify.address
        ),
        Purpose::Comment => "Answer this mail to add an internal comment (the customer does not see it).".to_string(),
    };
    let text = format!(
        "{SEPARATOR}\n\n{headline}\n\n{}\n\n{action}\n\nTicket: /api/v1/tickets/{number}\n",
        quoted.join("\n")
    );
    (subject, text)
}
