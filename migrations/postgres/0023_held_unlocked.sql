-- Since when the listing has shown a held account unlocked (someone
-- unlocked it outside lifeboat; NULL while it is locked): whoever can sign
-- in to it has its person's ID, so the rooms count it as a stranger's.
ALTER TABLE accounts ADD COLUMN held_unlocked_at BIGINT;
