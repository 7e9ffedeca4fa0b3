-- The devices `holds claim` logged out of a stranger's account it handed
-- to its person (a JSON list of device IDs): should one come back, Synapse
-- was restored from a backup older than the hand-over, and the stranger
-- has the account again.
ALTER TABLE accounts ADD COLUMN stranger_devices TEXT;
