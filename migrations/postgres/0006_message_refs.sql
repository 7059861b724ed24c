-- Which stored messages name a Message-ID in their In-Reply-To or
-- References: a parent that arrives after its reply finds the reply's
-- ticket here (reverse lookup). Filled for inbound mail on a ticket; the
-- messages stored before this migration are filled from their columns.
CREATE TABLE message_refs (
    team_id     BIGINT NOT NULL,
    referenced  TEXT NOT NULL,
    message_id  BIGINT NOT NULL REFERENCES messages(id)
);
CREATE INDEX message_refs_lookup ON message_refs (team_id, referenced);
CREATE INDEX message_refs_message ON message_refs (message_id);

INSERT INTO message_refs (team_id, referenced, message_id)
SELECT DISTINCT m.team_id, j.value, m.id
FROM messages m,
     LATERAL (SELECT jsonb_array_elements_text(m.in_reply_to::jsonb)
              UNION SELECT jsonb_array_elements_text(m.refs::jsonb)) AS j(value)
WHERE m.direction = 'inbound' AND m.ticket_id IS NOT NULL AND j.value <> m.message_id;
