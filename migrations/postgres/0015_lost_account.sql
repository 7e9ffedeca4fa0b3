-- When Synapse made the person's account that was lost (ms), kept while
-- its ID is held for them or taken by a stranger: a listing that shows an
-- account made that very second is the person's own account back (Synapse's
-- database restored), not a stranger's, and ends the hold.
ALTER TABLE accounts ADD COLUMN lost_created_at BIGINT;
