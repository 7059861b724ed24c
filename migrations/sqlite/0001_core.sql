-- Core model: teams, agents, pipelines, channels, contacts, tickets, messages,
-- blobs (content-addressed), receipts (idempotency), events, quarantine.
-- Timestamps are unix milliseconds (BIGINT) so both backends share one Rust type.

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('ticket_number', 0);

CREATE TABLE teams (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    subject_tag  BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE team_addresses (
    id          INTEGER PRIMARY KEY,
    team_id     BIGINT NOT NULL REFERENCES teams(id),
    address     TEXT NOT NULL UNIQUE,
    name        TEXT,
    is_default  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE agents (
    id     INTEGER PRIMARY KEY,
    key    TEXT NOT NULL UNIQUE,
    email  TEXT NOT NULL UNIQUE,
    name   TEXT NOT NULL,
    role   TEXT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE agent_teams (
    agent_id BIGINT NOT NULL REFERENCES agents(id),
    team_id  BIGINT NOT NULL REFERENCES teams(id),
    PRIMARY KEY (agent_id, team_id)
);

CREATE TABLE pipelines (
    id                     INTEGER PRIMARY KEY,
    key                    TEXT NOT NULL UNIQUE,
    follow_up              TEXT NOT NULL,
    new_ticket_after_days  BIGINT
);

CREATE TABLE statuses (
    id                   INTEGER PRIMARY KEY,
    pipeline_id          BIGINT NOT NULL REFERENCES pipelines(id),
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    position             BIGINT NOT NULL,
    required_properties  TEXT NOT NULL DEFAULT '[]',
    is_default           BIGINT NOT NULL DEFAULT 0,
    UNIQUE (pipeline_id, name)
);

CREATE TABLE channels (
    id              INTEGER PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    team_id         BIGINT NOT NULL REFERENCES teams(id),
    pipeline_id     BIGINT NOT NULL REFERENCES pipelines(id),
    create_tickets  BIGINT NOT NULL DEFAULT 1,
    state           TEXT NOT NULL DEFAULT '{}',
    updated_at      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE companies (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    domain  TEXT UNIQUE
);

CREATE TABLE contacts (
    id          INTEGER PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    name        TEXT,
    company_id  BIGINT REFERENCES companies(id),
    created_at  BIGINT NOT NULL
);

CREATE TABLE tickets (
    id               INTEGER PRIMARY KEY,
    number           BIGINT NOT NULL UNIQUE,
    subject          TEXT NOT NULL,
    team_id          BIGINT NOT NULL REFERENCES teams(id),
    pipeline_id      BIGINT NOT NULL REFERENCES pipelines(id),
    status_id        BIGINT NOT NULL REFERENCES statuses(id),
    channel_id       BIGINT REFERENCES channels(id),
    owner_agent_id   BIGINT REFERENCES agents(id),
    company_id       BIGINT REFERENCES companies(id),
    properties       TEXT NOT NULL DEFAULT '{}',
    merged_into      BIGINT REFERENCES tickets(id),
    follow_up_of     BIGINT REFERENCES tickets(id),
    reply_token      TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    status_changed_at BIGINT NOT NULL,
    deleted_at       BIGINT
);
CREATE INDEX tickets_team_status ON tickets (team_id, status_id);

CREATE TABLE ticket_contacts (
    ticket_id   BIGINT NOT NULL REFERENCES tickets(id),
    contact_id  BIGINT NOT NULL REFERENCES contacts(id),
    role        TEXT NOT NULL,
    PRIMARY KEY (ticket_id, contact_id)
);
CREATE INDEX ticket_contacts_contact ON ticket_contacts (contact_id);

-- Content-addressed storage for raw originals and attachment contents: stored once.
CREATE TABLE blobs (
    sha256  TEXT PRIMARY KEY,
    size    BIGINT NOT NULL,
    data    BLOB NOT NULL
);

CREATE TABLE messages (
    id                 INTEGER PRIMARY KEY,
    ticket_id          BIGINT REFERENCES tickets(id),
    team_id            BIGINT NOT NULL REFERENCES teams(id),
    channel_id         BIGINT REFERENCES channels(id),
    direction          TEXT NOT NULL,
    author_contact_id  BIGINT REFERENCES contacts(id),
    author_agent_id    BIGINT REFERENCES agents(id),
    message_id         TEXT NOT NULL,
    synthetic_id       BIGINT NOT NULL DEFAULT 0,
    in_reply_to        TEXT NOT NULL DEFAULT '[]',
    refs               TEXT NOT NULL DEFAULT '[]',
    from_addr          TEXT NOT NULL,
    from_name          TEXT,
    to_addrs           TEXT NOT NULL DEFAULT '[]',
    cc_addrs           TEXT NOT NULL DEFAULT '[]',
    bcc_addrs          TEXT NOT NULL DEFAULT '[]',
    reply_to           TEXT,
    subject            TEXT NOT NULL,
    body_text          TEXT NOT NULL,
    body_html          TEXT,
    flags              TEXT NOT NULL DEFAULT '',
    thread_index_root  TEXT,
    fingerprint        TEXT NOT NULL,
    raw_sha256         TEXT REFERENCES blobs(sha256),
    sent_at            BIGINT,
    received_at        BIGINT NOT NULL,
    delivery_state     TEXT
);
CREATE INDEX messages_ticket ON messages (ticket_id, id);
CREATE INDEX messages_message_id ON messages (message_id);
CREATE INDEX messages_team_thread_index ON messages (team_id, thread_index_root);

CREATE TABLE attachments (
    id            INTEGER PRIMARY KEY,
    message_id    BIGINT NOT NULL REFERENCES messages(id),
    sha256        TEXT NOT NULL REFERENCES blobs(sha256),
    filename      TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size          BIGINT NOT NULL,
    content_id    TEXT,
    inline        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX attachments_message ON attachments (message_id);

-- One row per message taken in, per team: the idempotency key that makes
-- re-delivery harmless. `source` records where it came from (file, IMAP UID …).
CREATE TABLE receipts (
    id           INTEGER PRIMARY KEY,
    team_id      BIGINT NOT NULL REFERENCES teams(id),
    fingerprint  TEXT NOT NULL,
    channel_id   BIGINT REFERENCES channels(id),
    source       TEXT,
    outcome      TEXT NOT NULL,
    ticket_id    BIGINT REFERENCES tickets(id),
    message_id   BIGINT REFERENCES messages(id),
    created_at   BIGINT NOT NULL,
    UNIQUE (fingerprint, team_id)
);

CREATE TABLE ticket_events (
    id          INTEGER PRIMARY KEY,
    ticket_id   BIGINT NOT NULL REFERENCES tickets(id),
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT '{}',
    actor       TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX ticket_events_ticket ON ticket_events (ticket_id, id);

CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    channel_key TEXT,
    source      TEXT,
    reason      TEXT NOT NULL,
    raw_sha256  TEXT NOT NULL REFERENCES blobs(sha256),
    size        BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 1,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (raw_sha256)
);
