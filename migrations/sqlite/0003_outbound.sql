-- Outbound replies: the outbox, per-address state, and server-wide settings.

-- Server-wide values every instance must agree on (the HMAC secret when the
-- config does not set one).
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- An address removed from the config stays for history but can no longer send.
ALTER TABLE team_addresses ADD COLUMN active BIGINT NOT NULL DEFAULT 1;

-- The relay's answer (or the bounce) for an outbound message.
ALTER TABLE messages ADD COLUMN delivery_detail TEXT;
-- An API caller's Idempotency-Key: a retried reply request is not sent twice.
ALTER TABLE messages ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX messages_idempotency ON messages (ticket_id, idempotency_key);

-- One row per outbound message to send. The rendered MIME is the message's
-- raw blob; the envelope is here because Bcc recipients are not in the MIME.
-- A row is claimed by setting claimed_by/claimed_until; an expired claim
-- (a crashed instance) may be taken over.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    message_id       BIGINT NOT NULL UNIQUE REFERENCES messages(id),
    ticket_id        BIGINT NOT NULL REFERENCES tickets(id),
    relay            TEXT NOT NULL,
    mail_from        TEXT NOT NULL,
    rcpt_to          TEXT NOT NULL,
    raw_sha256       TEXT NOT NULL REFERENCES blobs(sha256),
    state            TEXT NOT NULL DEFAULT 'queued',
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    claimed_by       TEXT,
    claimed_until    BIGINT,
    last_answer      TEXT,
    sent_copy        TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'queued';
