-- The application service (a bridge) that registered the account, as
-- Synapse's user details name it (only for a user ID in the service's
-- exclusive namespace, where nobody else may register). An ID it registers
-- again after a loss is its own, not a stranger's.
ALTER TABLE accounts ADD COLUMN appservice_id TEXT;
