-- A lost ID Synapse refused to create for lifeboat's hold with an error it
-- gives every registration of that name alike (M_INVALID_USERNAME: a name it
-- no longer allows, a guest's numeric name; M_EXCLUSIVE: an appservice's
-- namespace, such as a bridge's users; M_USER_IN_USE: another ID's case).
-- Nobody can take such an ID, so nothing waits for its hold: not the notices,
-- not its rooms. The error code; NULL: not refused. Cleared (tried again)
-- whenever a sync finds accounts newly lost, and by `lifeboat holds make`.
ALTER TABLE accounts ADD COLUMN hold_refused TEXT;
-- The lost IDs still to be held (`HOLD_CANDIDATES` in src/registry/holds.rs,
-- written the same so the planner matches it): asked before any token goes
-- out, by the delivery worker every round and by each /token/open, so a
-- registry of a million accounts must not be read whole each time.
CREATE INDEX accounts_hold_candidates ON accounts (user_id)
    WHERE (state = 'missing' AND custody IS NULL AND hold_refused IS NULL) OR custody = 'holding';
