-- The application service (a bridge) that registered the account, as
-- Synapse's user details name it (only for a user ID in the service's
-- exclusive namespace, where nobody else may register). An ID it registers
-- again after a loss is its own, not a stranger's.
ALTER TABLE accounts ADD COLUMN appservice_id TEXT;
-- Every account read before is due for a read now (at most
-- sync.details_per_round a sync), not in up to sync.details_max_age: until
-- then a bridge's users would count as strangers after a wipe.
UPDATE accounts SET details_due_at = 0 WHERE details_fetched_at IS NOT NULL;
