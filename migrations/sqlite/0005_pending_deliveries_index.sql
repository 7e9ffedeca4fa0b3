-- The outbox index covers pending rows only. With the state in the key,
-- every state change moved index entries; now a delivery leaves the index
-- once, when its outcome is recorded, and claims (which read the next due
-- pending rows) and "when is the next one due" are served as before.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (incident_id, channel, next_attempt_at) WHERE state = 'pending';
