-- Leases: a named piece of work (an IMAP mailbox) belongs to one instance
-- until `expires_at`; the holder renews it, and another instance may take it
-- once it has expired (its holder died or lost the database).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- Failed replies are counted (metrics, status) and listed often.
CREATE INDEX outbox_failed ON outbox (id) WHERE state = 'failed';
