-- Agents working by email: notification mail, agents' answers, and the
-- automatic mail rate limit.

-- What a notification is about (the customer's message) and, for an answer
-- to an agent's emailed command, the text to send; `mail_state` says what
-- became of its mail: queued, held (rate limit), muted, skipped.
ALTER TABLE notifications ADD COLUMN message_id BIGINT;
ALTER TABLE notifications ADD COLUMN detail TEXT;
ALTER TABLE notifications ADD COLUMN mail_state TEXT;
CREATE INDEX notifications_unmailed ON notifications (id) WHERE mail_state IS NULL;

-- `reply` (to a customer) or `notification` (automatic mail to an agent:
-- no ticket event, no failure note); `auto_rcpt` is the one recipient of
-- automatic mail, counted by the rate limit.
ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'reply';
ALTER TABLE outbox ADD COLUMN auto_rcpt TEXT;
CREATE INDEX outbox_auto_rcpt ON outbox (auto_rcpt, created_at) WHERE auto_rcpt IS NOT NULL;

-- Mail from an agent (or carrying a reply token) that threads to a ticket,
-- waiting to be verified and acted on: relayed, kept as a comment, a
-- command, or flagged unverified with the reason.
CREATE TABLE agent_mail (
    message_id     BIGINT PRIMARY KEY REFERENCES messages(id),
    ticket_id      BIGINT NOT NULL REFERENCES tickets(id),
    -- Reply tokens found in its recipient addresses (JSON list).
    tokens         TEXT NOT NULL DEFAULT '[]',
    state          TEXT NOT NULL DEFAULT 'pending',
    claimed_until  BIGINT,
    outcome        TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX agent_mail_pending ON agent_mail (message_id) WHERE state = 'pending';

-- The notifier announces events after this one: not the history from
-- before the upgrade.
INSERT INTO settings (key, value)
SELECT 'notify.event_cursor', CAST(COALESCE(MAX(id), 0) AS TEXT) FROM ticket_events;
