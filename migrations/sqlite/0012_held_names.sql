-- A hold makes the ID safe first (created, locked, emails restored) and
-- restores the display name afterwards, once every lost ID is held: the
-- name is most of what a hold costs Synapse, and an ID still free can be
-- taken by anyone. Set when a hold is made with its name still to restore;
-- NULL once restored (or when there is none, or the ID was claimed).
ALTER TABLE accounts ADD COLUMN display_name_due_at BIGINT;
