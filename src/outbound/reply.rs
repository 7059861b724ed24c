//! Queueing an agent's reply: check it, read what the ticket needs, plan it
//! (`plan.rs`, pure), render it (`compose.rs`), and store the message and
//! its outbox row in one transaction, together with any status change and
//! assignment. Nothing is sent here; the outbox worker sends. A crash at any
//! point either leaves nothing or a complete, queued reply.

use super::compose::{self, Draft};
use super::plan::{self, invalid, parse_recipient, ActionError, Known, Plan, ReplyRequest};
use crate::config::Config;
use crate::mail::ids;
use crate::store::directory::{Actor, Directory};
use crate::store::replies::{NewReply, ReplyTicket, TicketMissing};
use crate::store::{now_ms, Store, Tx};

/// The queued reply.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// The message's row id.
    pub message: i64,
    /// Its RFC 5322 Message-ID.
    pub message_id: String,
    pub ticket: i64,
    pub from: String,
    pub status: String,
    pub owner: Option<String>,
    /// True when an earlier request with the same Idempotency-Key made it.
    pub replayed: bool,
}

/// Queues a reply on ticket `number`. Every check runs before anything is
/// written; on success the reply is stored and queued, and the outbox's
/// `wake` should be signalled so it goes out at once.
pub async fn queue_reply(
    store: &Store,
    dir: &Directory,
    config: &Config,
    actor: &Actor,
    number: i64,
    request: ReplyRequest,
) -> Result<Queued, ActionError> {
    let keyed = request.idempotency_key.is_some();
    match queue_reply_once(store, dir, config, actor, number, &request).await {
        // Two requests with one Idempotency-Key at once: the loser meets the
        // unique index; a second try finds the winner's reply and returns it.
        Err(ActionError::Store(sqlx::Error::Database(e))) if keyed && e.is_unique_violation() => {
            queue_reply_once(store, dir, config, actor, number, &request).await
        }
        other => other,
    }
}

async fn queue_reply_once(
    store: &Store,
    dir: &Directory,
    config: &Config,
    actor: &Actor,
    number: i64,
    request: &ReplyRequest,
) -> Result<Queued, ActionError> {
    let recipients = plan::check_request(request, config.outbox.max_recipients)?;
    let now = now_ms();
    let mut w = store.begin_write().await?;
    let tx = &mut w.tx;
    let ticket = accessible_ticket(store, tx, actor, number).await?;
    if let Some(key) = &request.idempotency_key {
        if let Some(earlier) = store.earlier_reply(tx, ticket.id, key).await? {
            return Ok(Queued {
                message: earlier.id,
                message_id: earlier.message_id,
                ticket: ticket.number,
                from: earlier.from_addr,
                status: status_name(dir, ticket.status_id),
                owner: None,
                replayed: true,
            });
        }
    }
    let team = dir.team_by_id(ticket.team_id).ok_or_else(|| {
        ActionError::NotFound(format!("ticket #{number}'s team is no longer configured"))
    })?;
    let asked_from = request
        .from
        .as_deref()
        .map(|f| parse_recipient("from", f))
        .transpose()?
        .map(|m| m.address);
    let contacts = match recipients.to {
        Some(_) => Vec::new(),
        None => store.reply_recipients(tx, ticket.id).await?,
    };
    let parent = store
        .reply_parent(tx, ticket.id, request.in_reply_to)
        .await?;
    let known = Known {
        ticket: &ticket,
        team,
        from: store
            .team_address(tx, ticket.team_id, asked_from.as_deref())
            .await?,
        asked_from,
        contacts,
        parent_missing: request.in_reply_to.is_some() && parent.is_none(),
        parent,
    };
    let plan = plan::plan(request, recipients, known, dir, config, actor)?;
    let queued = store_reply(store, tx, dir, actor, &ticket, request, &plan, now).await?;
    w.commit().await?;
    Ok(queued)
}

/// The ticket, if it exists and the actor works in its team. Another team's
/// ticket answers exactly like a missing one: numbers are not for probing.
pub(crate) async fn accessible_ticket(
    store: &Store,
    tx: &mut Tx,
    actor: &Actor,
    number: i64,
) -> Result<ReplyTicket, ActionError> {
    let missing = || ActionError::NotFound(format!("ticket #{number} does not exist"));
    match store.reply_ticket(tx, number).await? {
        Ok(ticket) if actor.can_access_team(ticket.team_id) => Ok(ticket),
        Ok(_) | Err(TicketMissing::NotFound(_)) => Err(missing()),
        Err(TicketMissing::Deleted { team_id, .. }) if !actor.can_access_team(team_id) => {
            Err(missing())
        }
        Err(TicketMissing::Deleted { number: n, .. }) => {
            Err(ActionError::NotFound(format!("ticket #{n} was deleted")))
        }
        // Its team is unknown, so it answers like a missing one (the loop
        // is logged for ops).
        Err(TicketMissing::MergeLoop(n)) => {
            tracing::warn!(ticket = n, "Ticket is merged in a loop; fix merged_into.");
            Err(missing())
        }
    }
}

fn status_name(dir: &Directory, status: i64) -> String {
    dir.status(status)
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// Renders the planned reply and writes it in the caller's transaction.
#[allow(clippy::too_many_arguments)]
async fn store_reply(
    store: &Store,
    tx: &mut Tx,
    dir: &Directory,
    actor: &Actor,
    ticket: &ReplyTicket,
    request: &ReplyRequest,
    plan: &Plan,
    now: i64,
) -> Result<Queued, ActionError> {
    let team = dir.team_by_id(ticket.team_id);
    let subject_tag = team.is_some_and(|t| t.subject_tag);
    let rendered = render(&dir.secret.0, ticket, request, plan, subject_tag, now)?;
    let attachments = request
        .attachments
        .iter()
        .map(|a| {
            (
                a.filename.as_str(),
                a.content_type.as_str(),
                a.data.as_slice(),
            )
        })
        .collect();
    let actor_label = actor.label();
    let reply = NewReply {
        ticket,
        author: actor.agent_id(),
        actor: &actor_label,
        message_id: &rendered.message_id,
        in_reply_to: plan.parent_id.as_deref(),
        references: &rendered.references,
        from: &plan.from,
        to: &plan.to,
        cc: &plan.cc,
        bcc: &plan.bcc,
        subject: &rendered.subject,
        body_text: &rendered.text,
        body_html: &rendered.html,
        thread_index_root: rendered.thread_root,
        raw: &rendered.raw,
        attachments,
        relay: &plan.relay,
        envelope: &plan.envelope,
        sent_copy: plan.sent_copy.clone(),
        idempotency_key: request.idempotency_key.as_deref(),
        owner: plan.owner,
        status_id: plan.status_id,
        properties: &plan.properties,
        events: &plan.events,
        now,
    };
    let message = store.insert_reply(tx, &reply).await?;
    let owner = match plan.owner {
        Some(id) => store.agent_key(tx, id).await?,
        None => None,
    };
    Ok(Queued {
        message,
        message_id: rendered.message_id,
        ticket: ticket.number,
        from: plan.from.address.clone(),
        status: status_name(dir, plan.status_id),
        owner,
        replayed: false,
    })
}

/// A reply as it goes out, and what is stored about it.
struct Rendered {
    raw: Vec<u8>,
    message_id: String,
    references: Vec<String>,
    subject: String,
    /// The bodies as stored (without the markers).
    text: String,
    html: String,
    /// The Outlook conversation (first 22 bytes of Thread-Index), hex.
    thread_root: Option<String>,
}

/// Renders the reply: `Re: [#N] subject`, a fresh Message-ID under the From
/// domain, In-Reply-To and References (the ticket's pseudo-reference first),
/// Thread-Index/Topic, text and HTML parts (each made from the other when
/// only one is given) with the body markers, and the attachments.
fn render(
    secret: &[u8],
    ticket: &ReplyTicket,
    request: &ReplyRequest,
    plan: &Plan,
    subject_tag: bool,
    now: i64,
) -> Result<Rendered, ActionError> {
    let domain = plan
        .from
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let message_id = ids::new_message_id(secret, ticket.id, &domain);
    let pseudo = ids::ticket_reference(secret, ticket.id, &domain);
    let references = ids::references(&pseudo, &plan.chain);
    let subject = compose::reply_subject(&ticket.subject, ticket.number, subject_tag);
    let thread_index = ids::thread_index(
        secret,
        ticket.id,
        ticket.created_at,
        plan.thread_root.as_deref(),
        now,
    );
    let thread_root = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&thread_index)
            .ok()
            .map(|b| hex::encode(&b[..22.min(b.len())]))
    };
    let text = request.body_text.clone().unwrap_or_default();
    let html = request
        .body_html
        .clone()
        .unwrap_or_else(|| compose::text_to_html(&text));
    let text = match text.trim().is_empty() {
        true => mail_parser::decoders::html::html_to_text(&html),
        false => text,
    };
    let marked_text = format!("{text}\n{}", ids::text_marker(secret, ticket.id));
    let marked_html = format!("{html}\n{}", ids::html_marker(secret, ticket.id));
    let thread_topic = compose::reply_subject(&ticket.subject, ticket.number, false)
        .trim_start_matches("Re: ")
        .to_string();
    let raw = compose::render(&Draft {
        from: &plan.from,
        to: &plan.to,
        cc: &plan.cc,
        subject: &subject,
        message_id: &message_id,
        in_reply_to: plan.parent_id.as_deref(),
        references: &references,
        thread_index: &thread_index,
        thread_topic: &thread_topic,
        text: &marked_text,
        html: &marked_html,
        attachments: &request.attachments,
        date_ms: now,
    })
    .map_err(|e| invalid("body", format!("cannot render the message: {e}")))?;
    Ok(Rendered {
        raw,
        message_id,
        references,
        subject,
        text,
        html,
        thread_root,
    })
}

/// Makes `address` the team's default From address. Only an admin of the
/// team (or a super admin, or the operator) may.
pub async fn set_default_address(
    store: &Store,
    dir: &Directory,
    actor: &Actor,
    team_key: &str,
    address: &str,
) -> Result<(), ActionError> {
    let team = dir
        .teams
        .get(team_key)
        .ok_or_else(|| ActionError::NotFound(format!("team {team_key:?} does not exist")))?;
    if !actor.can_admin_team(team.id) {
        return Err(ActionError::Forbidden(format!(
            "only an admin of team {team_key} or a super admin can change its default address"
        )));
    }
    let address = parse_recipient("address", address)?.address;
    if !store.set_default_address(team.id, &address).await? {
        return Err(invalid(
            "address",
            format!("{address} is not a configured address of team {team_key}"),
        ));
    }
    tracing::info!(team = team_key, %address, actor = %actor.label(), "Team default address changed.");
    Ok(())
}
