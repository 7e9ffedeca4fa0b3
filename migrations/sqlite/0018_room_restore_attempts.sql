-- lifeboat's own tries at getting back into a surviving room whose servers
-- did not answer: given up at MAX_REJOIN_ATTEMPTS, as people's rejoins
-- are, rather than costing a homeserver.timeout every round for good.
ALTER TABLE rooms ADD COLUMN restore_attempts BIGINT NOT NULL DEFAULT 0;
