//! Agents' mail waiting to be verified and acted on (`desk::agent_mail`):
//! claimed with a lease like the outbox, so an instance that dies midway
//! leaves it to another, and finished with what became of it.

use super::{blobs, Backend, Store};
use crate::mail::address::list_from_json;

/// One agent's mail to act on, as the pipeline stored it.
#[derive(Debug, Clone)]
pub struct AgentMail {
    /// The message's row id.
    pub message: i64,
    pub ticket_id: i64,
    pub ticket_number: i64,
    pub team_id: i64,
    pub pipeline_id: i64,
    /// Reply tokens found in its recipient addresses.
    pub tokens: Vec<String>,
    pub from_addr: String,
    pub to: Vec<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: String,
    pub body_text: String,
    pub received_at: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    message_id: i64,
    ticket_id: i64,
    number: i64,
    team_id: i64,
    pipeline_id: i64,
    tokens: String,
    from_addr: String,
    to_addrs: String,
    in_reply_to: String,
    refs: String,
    subject: String,
    body_text: String,
    received_at: i64,
}

/// A file of an agent's mail, to send along.
pub struct MailFile {
    pub filename: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

impl Store {
    /// Claims up to `limit` pending (or abandoned) agents' mails until now +
    /// `lease_ms`.
    pub async fn claim_agent_mail(
        &self,
        now: i64,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<AgentMail>, sqlx::Error> {
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM agent_mail WHERE state = 'pending' AND (claimed_until IS NULL OR claimed_until < $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut w = self.begin_write().await?;
        let claimed: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE agent_mail SET claimed_until = $1, updated_at = $2
             WHERE message_id IN (SELECT message_id FROM agent_mail
                                  WHERE state = 'pending' AND (claimed_until IS NULL OR claimed_until < $2)
                                  ORDER BY message_id LIMIT $3 {lock})
             RETURNING message_id"
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *w.tx)
        .await?;
        let mut out = Vec::with_capacity(claimed.len());
        for id in claimed {
            let row: Option<Row> = sqlx::query_as(
                "SELECT a.message_id, m.ticket_id, t.number, t.team_id, t.pipeline_id, a.tokens, m.from_addr, m.to_addrs,
                        m.in_reply_to, m.refs, m.subject, m.body_text, m.received_at
                 FROM agent_mail a JOIN messages m ON m.id = a.message_id
                 JOIN tickets t ON t.id = m.ticket_id WHERE a.message_id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *w.tx)
            .await?;
            let Some(row) = row else { continue };
            let list = |json: &str| serde_json::from_str::<Vec<String>>(json).unwrap_or_default();
            out.push(AgentMail {
                message: row.message_id,
                ticket_id: row.ticket_id,
                ticket_number: row.number,
                team_id: row.team_id,
                pipeline_id: row.pipeline_id,
                tokens: list(&row.tokens),
                from_addr: row.from_addr,
                to: list_from_json(&row.to_addrs)
                    .into_iter()
                    .map(|m| m.address)
                    .collect(),
                in_reply_to: list(&row.in_reply_to),
                references: list(&row.refs),
                subject: row.subject,
                body_text: row.body_text,
                received_at: row.received_at,
            });
        }
        w.commit().await?;
        Ok(out)
    }

    /// The files of message `id`, with their contents.
    pub async fn message_files(&self, id: i64) -> Result<Vec<MailFile>, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT filename, content_type, sha256 FROM attachments WHERE message_id = $1 AND inline = 0
             ORDER BY id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let mut conn = self.pool().acquire().await?;
        let mut files = Vec::with_capacity(rows.len());
        for (filename, content_type, sha) in rows {
            let data = blobs::get(&mut conn, &sha).await?;
            files.push(MailFile {
                filename,
                content_type,
                data,
            });
        }
        Ok(files)
    }

    /// Records what became of an agent's mail: `state` is `done` (acted on)
    /// or `unverified`; the message's `agent_mail` flag becomes `flag`
    /// (with the reason for an unverified one), its author the agent when
    /// verified, and the ticket's timeline says so. `answer` is mailed to
    /// the agent (a refusal explained) as a `command_reply` notification.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_agent_mail(
        &self,
        mail: &AgentMail,
        state: &str,
        flag: &str,
        agent: Option<i64>,
        outcome: &str,
        answer: Option<&str>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        if let (Some(agent), Some(answer)) = (agent, answer) {
            self.add_event_notification(
                &mut w.tx,
                agent,
                mail.ticket_id,
                "command_reply",
                Some(mail.message),
                "mailroom",
                Some(answer),
                now,
            )
            .await?;
        }
        sqlx::query(
            "UPDATE agent_mail SET state = $1, outcome = $2, claimed_until = NULL, updated_at = $3
             WHERE message_id = $4",
        )
        .bind(state)
        .bind(outcome)
        .bind(now)
        .bind(mail.message)
        .execute(&mut *w.tx)
        .await?;
        let flags: String = sqlx::query_scalar("SELECT flags FROM messages WHERE id = $1")
            .bind(mail.message)
            .fetch_one(&mut *w.tx)
            .await?;
        let flags: Vec<&str> = flags
            .split(',')
            .filter(|f| !f.is_empty() && *f != "agent_mail")
            .chain([flag])
            .collect();
        sqlx::query(
            "UPDATE messages SET flags = $1, author_agent_id = COALESCE($2, author_agent_id) WHERE id = $3",
        )
        .bind(flags.join(","))
        .bind(agent)
        .bind(mail.message)
        .execute(&mut *w.tx)
        .await?;
        let kind = match state {
            "done" => "agent_mail_handled",
            _ => "agent_mail_unverified",
        };
        let data = serde_json::json!({ "message": mail.message, "outcome": outcome });
        super::events::insert(&mut w.tx, mail.ticket_id, kind, &data, "mailroom", now).await?;
        w.commit().await
    }

    /// Agents' mail waiting to be acted on (for `mailroom status`).
    pub async fn pending_agent_mail(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM agent_mail WHERE state = 'pending'")
            .fetch_one(self.pool())
            .await
    }

    /// The message as it arrived (for DKIM, which signs the exact bytes).
    pub async fn message_raw(&self, id: i64) -> Result<Vec<u8>, sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        let sha: String = sqlx::query_scalar("SELECT raw_sha256 FROM messages WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        blobs::get(&mut conn, &sha).await
    }

    /// Leaves an agent's mail pending until `until` (the DNS did not
    /// answer; it is looked at again then).
    pub async fn defer_agent_mail(&self, id: i64, until: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE agent_mail SET claimed_until = $1 WHERE message_id = $2 AND state = 'pending'",
        )
        .bind(until)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
