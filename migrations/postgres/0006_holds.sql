-- Held IDs. After a loss lifeboat re-creates each lost ID that is still
-- free as a locked account of its own, so that no registration token and
-- nobody registering first can take it, and hands it back only to its
-- owner (a signed claim link, or an operator on the lifeboat host).
--   holding  lifeboat is about to create it (recorded first, so a crash
--            in between is recognised on the rerun)
--   held     created and locked by lifeboat, waiting for its owner
--   claimed  handed back to its owner
-- NULL: the account is whoever Synapse lists (recreated_at says whether
-- lifeboat can vouch for them).
ALTER TABLE accounts ADD COLUMN custody TEXT CHECK (custody IN ('holding', 'held', 'claimed'));
-- When custody last changed. For a held account it also identifies the
-- hold: a claim link names it, so a link made for an earlier hold of the
-- same ID does not work for a later one.
ALTER TABLE accounts ADD COLUMN custody_at BIGINT;
CREATE INDEX accounts_by_custody ON accounts (custody);
