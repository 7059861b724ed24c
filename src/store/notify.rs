//! What the notifier reads and writes: ticket events since its cursor, the
//! people a ticket concerns, notifications not yet mailed, and the
//! notification mail itself (a message row that is on no ticket's
//! timeline, with its outbox row).

use super::{blobs, Backend, Store, Tx};
use crate::crypto::sha256_hex;
use crate::mail::address::list_to_json;
use crate::mail::Mailbox;

const CURSOR_KEY: &str = "notify.event_cursor";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub ticket_id: i64,
    pub kind: String,
    pub data: String,
    pub actor: String,
}

/// Who a ticket concerns.
#[derive(Debug, Clone)]
pub struct TicketPeople {
    pub team_id: i64,
    pub owner: Option<i64>,
    pub followers: Vec<i64>,
}

/// A notification whose mail has not been decided yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingNotice {
    pub id: i64,
    pub agent_id: i64,
    pub ticket_id: i64,
    pub kind: String,
    pub comment_id: Option<i64>,
    pub message_id: Option<i64>,
    pub actor: String,
    pub detail: Option<String>,
}

/// What a notification mail shows.
#[derive(Debug, Clone, Default)]
pub struct NoticeContent {
    pub number: i64,
    pub subject: String,
    pub team_id: i64,
    /// Who wrote what is quoted (address or agent label).
    pub author: String,
    /// The customer's message or the comment.
    pub text: String,
    pub deleted: bool,
}

/// A notification mail to write with its outbox row.
pub struct NewNotification<'a> {
    pub ticket: i64,
    pub team: i64,
    pub agent: i64,
    pub message_id: &'a str,
    pub from: &'a Mailbox,
    pub to: &'a Mailbox,
    pub subject: &'a str,
    pub body_text: &'a str,
    /// `reply` or `comment`: what an answer through it does.
    pub purpose: &'a str,
    pub raw: &'a [u8],
    pub relay: &'a str,
    pub now: i64,
}

/// See `Store::automatic_mail_counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutomaticMailCounts {
    pub held: i64,
    pub held_last_day: i64,
    pub agent_mail_pending: i64,
    pub agent_mail_unverified: i64,
}

impl Store {
    /// The notifier's cursor, locked until commit so one instance at a time
    /// turns events into notifications. The migration that made it set it
    /// at the last event then: history from before is not announced.
    pub async fn notify_cursor(&self, tx: &mut Tx) -> Result<i64, sqlx::Error> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, '0') ON CONFLICT (key) DO NOTHING",
        )
        .bind(CURSOR_KEY)
        .execute(&mut **tx)
        .await?;
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE",
            Backend::Sqlite => "",
        };
        let value: String =
            sqlx::query_scalar(&format!("SELECT value FROM settings WHERE key = $1 {lock}"))
                .bind(CURSOR_KEY)
                .fetch_one(&mut **tx)
                .await?;
        Ok(value.parse().unwrap_or(0))
    }

    /// Whether a notifier pass has anything to do (a read, no lock): new
    /// events past the cursor or notifications not yet mailed.
    pub async fn notify_work_waiting(&self) -> Result<bool, sqlx::Error> {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT CASE
               WHEN EXISTS (SELECT 1 FROM notifications WHERE mail_state IS NULL) THEN 1
               WHEN NOT EXISTS (SELECT 1 FROM settings WHERE key = $1) THEN 1
               WHEN (SELECT COALESCE(MAX(id), 0) FROM ticket_events)
                    > (SELECT CAST(value AS BIGINT) FROM settings WHERE key = $1) THEN 1
               ELSE 0 END",
        )
        .bind(CURSOR_KEY)
        .fetch_one(self.pool())
        .await?;
        Ok(waiting == 1)
    }

    pub async fn set_notify_cursor(&self, tx: &mut Tx, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE settings SET value = $1 WHERE key = $2")
            .bind(id.to_string())
            .bind(CURSOR_KEY)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Events after `after` of the kinds that notify, oldest first.
    pub async fn notify_events(
        &self,
        tx: &mut Tx,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, ticket_id, kind, data, actor FROM ticket_events
             WHERE id > $1 AND kind IN ('created', 'message_received', 'assigned')
             ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
    }

    /// The last event id (the cursor moves past events that do not notify).
    pub async fn last_event_id(&self, tx: &mut Tx) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM ticket_events")
            .fetch_one(&mut **tx)
            .await
    }

    pub async fn ticket_people(
        &self,
        tx: &mut Tx,
        ticket: i64,
    ) -> Result<Option<TicketPeople>, sqlx::Error> {
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT team_id, owner_agent_id FROM tickets WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(ticket)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((team_id, owner)) = row else {
            return Ok(None);
        };
        let followers = sqlx::query_scalar("SELECT agent_id FROM followers WHERE ticket_id = $1")
            .bind(ticket)
            .fetch_all(&mut **tx)
            .await?;
        Ok(Some(TicketPeople {
            team_id,
            owner,
            followers,
        }))
    }

    /// A notification about a message or event (not a comment).
    #[allow(clippy::too_many_arguments)]
    pub async fn add_event_notification(
        &self,
        tx: &mut Tx,
        agent: i64,
        ticket: i64,
        kind: &str,
        message: Option<i64>,
        actor: &str,
        detail: Option<&str>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO notifications (agent_id, ticket_id, kind, message_id, actor, detail, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(agent)
        .bind(ticket)
        .bind(kind)
        .bind(message)
        .bind(actor)
        .bind(detail)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Notifications whose mail is undecided, oldest first.
    pub async fn pending_notices(
        &self,
        tx: &mut Tx,
        limit: i64,
    ) -> Result<Vec<PendingNotice>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, agent_id, ticket_id, kind, comment_id, message_id, actor, detail
             FROM notifications WHERE mail_state IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
    }

    /// The ticket and the text a notification quotes.
    pub async fn notice_content(
        &self,
        tx: &mut Tx,
        notice: &PendingNotice,
    ) -> Result<NoticeContent, sqlx::Error> {
        let ticket: Option<(i64, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT number, subject, team_id, deleted_at FROM tickets WHERE id = $1",
        )
        .bind(notice.ticket_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((number, subject, team_id, deleted_at)) = ticket else {
            return Ok(NoticeContent {
                deleted: true,
                ..Default::default()
            });
        };
        let quoted: Option<(String, String)> = match (notice.comment_id, notice.message_id) {
            (Some(comment), _) => {
                sqlx::query_as("SELECT actor, body FROM comments WHERE id = $1")
                    .bind(comment)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            (None, Some(message)) => {
                sqlx::query_as("SELECT from_addr, body_text FROM messages WHERE id = $1")
                    .bind(message)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            (None, None) => None,
        };
        let (author, text) = quoted.unwrap_or_default();
        Ok(NoticeContent {
            number,
            subject,
            team_id,
            author,
            text,
            deleted: deleted_at.is_some(),
        })
    }

    /// Automatic mail queued to `address` since `since` (the rate limit).
    pub async fn auto_mail_count(
        &self,
        tx: &mut Tx,
        address: &str,
        since: i64,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE auto_rcpt = $1 AND created_at >= $2")
            .bind(address)
            .bind(since)
            .fetch_one(&mut **tx)
            .await
    }

    /// Decides a notification's mail: `queued`, `held`, `muted`, `skipped`.
    pub async fn set_mail_state(
        &self,
        tx: &mut Tx,
        id: i64,
        state: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let emailed = (state == "queued").then_some(now);
        sqlx::query("UPDATE notifications SET mail_state = $1, emailed_at = $2 WHERE id = $3")
            .bind(state)
            .bind(emailed)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Notification mail held back by the rate limit (all time).
    /// Automatic mail held back and agents' mail waiting or refused, for
    /// `mailroom status` and the metrics.
    pub async fn automatic_mail_counts(
        &self,
        now: i64,
    ) -> Result<AutomaticMailCounts, sqlx::Error> {
        let (held, held_last_day): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN created_at > $1 THEN 1 ELSE 0 END), 0)
             FROM notifications WHERE mail_state = 'held'",
        )
        .bind(now - 86_400_000)
        .fetch_one(self.pool())
        .await?;
        let (pending, unverified): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN state = 'unverified' THEN 1 ELSE 0 END), 0)
             FROM agent_mail",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(AutomaticMailCounts {
            held,
            held_last_day,
            agent_mail_pending: pending,
            agent_mail_unverified: unverified,
        })
    }

    /// Writes a notification mail and its outbox row. The message is on no
    /// ticket (it is not part of the conversation) but keeps the ticket's
    /// team, the agent it went to and the purpose of its reply token, so an
    /// answer that names it can be checked.
    pub async fn queue_notification(
        &self,
        tx: &mut Tx,
        mail: &NewNotification<'_>,
    ) -> Result<i64, sqlx::Error> {
        let raw_sha = sha256_hex(mail.raw);
        blobs::put(tx, &raw_sha, mail.raw).await?;
        let message: i64 = sqlx::query_scalar(
            "INSERT INTO messages (ticket_id, team_id, direction, author_agent_id, message_id, from_addr,
               from_name, to_addrs, subject, body_text, flags, fingerprint, raw_sha256, received_at,
               delivery_state)
             VALUES (NULL, $1, 'notification', $2, $3, $4, $5, $6, $7, $8, $9, $3, $10, $11, 'queued')
             RETURNING id",
        )
        .bind(mail.team)
        .bind(mail.agent)
        .bind(mail.message_id)
        .bind(&mail.from.address)
        .bind(mail.from.name.clone())
        .bind(list_to_json(std::slice::from_ref(mail.to)))
        .bind(mail.subject)
        .bind(mail.body_text)
        .bind(mail.purpose)
        .bind(&raw_sha)
        .bind(mail.now)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (message_id, ticket_id, relay, mail_from, rcpt_to, raw_sha256, next_attempt_at,
               created_at, updated_at, kind, auto_rcpt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, 'notification', $8)",
        )
        .bind(message)
        .bind(mail.ticket)
        .bind(mail.relay)
        .bind(&mail.from.address)
        .bind(serde_json::to_string(&[&mail.to.address]).unwrap_or_default())
        .bind(&raw_sha)
        .bind(mail.now)
        .bind(&mail.to.address)
        .execute(&mut **tx)
        .await?;
        self.notify(tx, super::outbox::NOTIFY_CHANNEL).await?;
        Ok(message)
    }

    /// The notification mails among `ids` (Message-IDs an answer names):
    /// (Message-ID, agent, purpose, sent at).
    pub async fn answered_notifications(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, i64, String, i64)>, sqlx::Error> {
        let mut found = Vec::new();
        for id in ids.iter().take(20) {
            let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
                "SELECT message_id, author_agent_id, flags, received_at FROM messages
                 WHERE message_id = $1 AND direction = 'notification' AND author_agent_id IS NOT NULL",
            )
            .bind(id)
            .fetch_all(self.pool())
            .await?;
            found.extend(rows);
        }
        Ok(found)
    }
}
