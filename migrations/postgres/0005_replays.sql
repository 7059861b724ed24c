-- Signed form and webhook requests seen, so each signature is accepted once
-- however many instances share the database and across restarts. A row is
-- kept until its timestamp can no longer be accepted (timestamp + window).
CREATE TABLE seen_signatures (
    digest      TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX seen_signatures_expiry ON seen_signatures (expires_at);
