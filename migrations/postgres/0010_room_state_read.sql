-- When a room's state was last read. Some changes (a new topic, avatar or
-- power level) leave the listing's fingerprint alone, so a room's state is
-- also read again once this is older than sync.details_max_age (a few
-- hundred rooms a sync, oldest first). NULL: read before this column.
ALTER TABLE rooms ADD COLUMN state_read_at BIGINT;
