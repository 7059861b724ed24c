-- The help desk's own records: internal comments and the notifications
-- their @mentions make, followers, one draft per agent per ticket, saved
-- snippets, blocked senders, company mail domains, visitors and contact
-- merges, and the indexes the ticket list filters by.

CREATE TABLE comments (
    id               INTEGER PRIMARY KEY,
    ticket_id        BIGINT NOT NULL REFERENCES tickets(id),
    author_agent_id  BIGINT REFERENCES agents(id),
    actor            TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX comments_ticket ON comments (ticket_id, id);

-- Unread until the agent marks them; `emailed_at` is for notification mail.
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY,
    agent_id    BIGINT NOT NULL REFERENCES agents(id),
    ticket_id   BIGINT NOT NULL REFERENCES tickets(id),
    kind        TEXT NOT NULL,
    comment_id  BIGINT REFERENCES comments(id),
    actor       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    read_at     BIGINT,
    emailed_at  BIGINT,
    UNIQUE (agent_id, comment_id, kind)
);
CREATE INDEX notifications_agent ON notifications (agent_id, read_at, id);

CREATE TABLE followers (
    ticket_id   BIGINT NOT NULL REFERENCES tickets(id),
    agent_id    BIGINT NOT NULL REFERENCES agents(id),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (ticket_id, agent_id)
);
CREATE INDEX followers_agent ON followers (agent_id);

-- The draft's fields as one JSON document: an autosave is one upsert.
CREATE TABLE drafts (
    ticket_id   BIGINT NOT NULL REFERENCES tickets(id),
    agent_id    BIGINT NOT NULL REFERENCES agents(id),
    content     TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (ticket_id, agent_id)
);
CREATE INDEX drafts_agent ON drafts (agent_id, updated_at);

-- team_id 0 is a snippet shared by every team.
CREATE TABLE snippets (
    id          INTEGER PRIMARY KEY,
    team_id     BIGINT NOT NULL,
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (team_id, name)
);

-- An address (`kind` address) or a whole domain (`kind` domain), lower-case.
CREATE TABLE blocked_senders (
    id          INTEGER PRIMARY KEY,
    value       TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    reason      TEXT,
    actor       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE company_domains (
    domain      TEXT PRIMARY KEY,
    company_id  BIGINT NOT NULL REFERENCES companies(id)
);
INSERT INTO company_domains (domain, company_id)
SELECT lower(domain), id FROM companies WHERE domain IS NOT NULL;

-- A contact first seen in mail or a form is a visitor until an agent makes
-- them a contact or attaches them to one (`merged_into`; their address then
-- resolves to that contact).
ALTER TABLE contacts ADD COLUMN kind TEXT NOT NULL DEFAULT 'visitor';
ALTER TABLE contacts ADD COLUMN merged_into BIGINT REFERENCES contacts(id);

-- Every message touches its ticket's updated_at, so every index holding
-- it costs on ingest: one for the list's order, and one for "my tickets".
CREATE INDEX tickets_updated ON tickets (updated_at, id);
CREATE INDEX tickets_owner ON tickets (owner_agent_id, updated_at, id);
CREATE INDEX tickets_company ON tickets (company_id);
