-- The outbox index covers pending rows only. With the state in the key,
-- every claim (pending → sending) and every record (sending → sent) moved
-- index entries; now a claim removes its rows from the index and recording
-- a sent message touches no index at all. Claims and "when is the next one
-- due" read pending rows only, so they are served as before.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (incident_id, channel, next_attempt_at) WHERE state = 'pending';
