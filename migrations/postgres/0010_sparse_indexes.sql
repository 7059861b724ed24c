-- Every inbound message is a row in `messages` and touches its ticket's
-- `updated_at`; each index holding a NULL for it still costs a B-tree page
-- written at random (the ticket's position), which in a large store is a
-- page read and written per message. Only the rows the look-ups can ask for
-- are indexed now:
-- an Idempotency-Key is looked up with its value (API replies only);
DROP INDEX messages_idempotency;
CREATE UNIQUE INDEX messages_idempotency ON messages (ticket_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- "my tickets" asks for an owner (unassigned tickets are read in
-- `tickets_updated` order).
DROP INDEX tickets_owner;
CREATE INDEX tickets_owner ON tickets (owner_agent_id, updated_at, id)
    WHERE owner_agent_id IS NOT NULL;

-- The threading look-up by Message-ID (own ID, In-Reply-To, References)
-- reads only these columns: kept in the index, a match costs no read of
-- its row (a page at random in a large store).
DROP INDEX messages_message_id;
CREATE INDEX messages_message_id ON messages (message_id) INCLUDE (team_id, ticket_id, direction);
