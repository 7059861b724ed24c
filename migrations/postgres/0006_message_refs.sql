-- Which stored messages name a Message-ID in their In-Reply-To or
-- References: a parent that arrives after its reply finds the reply's
-- ticket here (reverse lookup). Filled for inbound mail on a ticket; the
-- messages stored before this migration are filled from their columns.
-- The ticket is the referring message's (merges are followed when read).
CREATE TABLE message_refs (
    referenced  TEXT NOT NULL,
    team_id     BIGINT NOT NULL,
    ticket_id   BIGINT NOT NULL,
    message_id  BIGINT NOT NULL
);
CREATE INDEX message_refs_lookup ON message_refs (referenced, team_id);

INSERT INTO message_refs (referenced, team_id, ticket_id, message_id)
SELECT DISTINCT j.value, m.team_id, m.ticket_id, m.id
FROM messages m,
     LATERAL (SELECT jsonb_array_elements_text(m.in_reply_to::jsonb)
              UNION SELECT jsonb_array_elements_text(m.refs::jsonb)) AS j(value)
WHERE m.direction = 'inbound' AND m.ticket_id IS NOT NULL AND j.value <> m.message_id;
