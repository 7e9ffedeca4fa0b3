-- One outbox for every message lifeboat sends. Incident notices (kind
-- 'notice') are rendered from the registry as they leave; every other kind
-- (an alert, the web page's link, a contact code, a token mailed by an
-- admin, the drill's test message) is stored rendered, with the time after
-- which sending it is pointless, and its text is emptied once it is sent or
-- given up. Only notices need a person and an incident, and only they are
-- one per incident, account, channel and address.
ALTER TABLE deliveries ALTER COLUMN incident_id DROP NOT NULL;
ALTER TABLE deliveries ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE deliveries
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'notice'
        CHECK (kind IN ('notice', 'alert', 'link', 'code', 'token', 'drill')),
    ADD COLUMN subject TEXT,
    ADD COLUMN body_text TEXT,
    ADD COLUMN body_html TEXT,
    ADD COLUMN expires_at BIGINT,
    ADD CHECK (kind <> 'notice' OR (incident_id IS NOT NULL AND user_id IS NOT NULL));
ALTER TABLE deliveries DROP CONSTRAINT deliveries_incident_id_user_id_channel_address_key;
CREATE UNIQUE INDEX deliveries_one_notice ON deliveries (incident_id, user_id, channel, address)
    WHERE kind = 'notice';
CREATE INDEX deliveries_due_messages ON deliveries (channel, next_attempt_at)
    WHERE state = 'pending' AND kind <> 'notice';
