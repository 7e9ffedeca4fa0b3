-- When an account's details (its emails) are due to be read again: its
-- fetch time plus sync.details_max_age times a random factor between 0.5
-- and 1, so that accounts first read together are not all read again in
-- the same round. NULL: read when details_fetched_at is older than
-- details_max_age (accounts read before this column existed).
ALTER TABLE accounts ADD COLUMN details_due_at BIGINT;
