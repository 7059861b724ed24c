-- Refresh tokens returned by an OAuth2 provider when it rotates them. The
-- configured token is only the first one: a rotated token must survive a
-- restart, or the mailbox can no longer log in.
CREATE TABLE oauth_tokens (
    channel_key    TEXT PRIMARY KEY,
    refresh_token  TEXT NOT NULL,
    updated_at     BIGINT NOT NULL
);
