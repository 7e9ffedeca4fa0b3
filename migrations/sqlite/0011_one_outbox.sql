-- One outbox for every message lifeboat sends. Incident notices (kind
-- 'notice') are rendered from the registry as they leave; every other kind
-- (an alert, the web page's link, a contact code, a token mailed by an
-- admin, the drill's test message) is stored rendered, with the time after
-- which sending it is pointless, and its text is emptied once it is sent or
-- given up. Only notices need a person and an incident, and only they are
-- one per incident, account, channel and address.
--
-- SQLite cannot drop NOT NULL or a table constraint in place, so the table
-- is rebuilt; the new columns go last, as PostgreSQL adds them.
CREATE TABLE deliveries_rebuilt (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id     BIGINT REFERENCES incidents (id),
    user_id         TEXT REFERENCES accounts (user_id),
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'matrix')),
    address         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    claimed_at      BIGINT,
    sent_at         BIGINT,
    created_at      BIGINT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'notice'
                    CHECK (kind IN ('notice', 'alert', 'link', 'code', 'token', 'drill')),
    subject         TEXT,
    body_text       TEXT,
    body_html       TEXT,
    expires_at      BIGINT,
    CHECK (kind <> 'notice' OR (incident_id IS NOT NULL AND user_id IS NOT NULL))
);
INSERT INTO deliveries_rebuilt (id, incident_id, user_id, channel, address, state, attempts, last_error,
                                next_attempt_at, claimed_at, sent_at, created_at)
SELECT id, incident_id, user_id, channel, address, state, attempts, last_error,
       next_attempt_at, claimed_at, sent_at, created_at
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_rebuilt RENAME TO deliveries;
CREATE UNIQUE INDEX deliveries_one_notice ON deliveries (incident_id, user_id, channel, address)
    WHERE kind = 'notice';
CREATE INDEX deliveries_due ON deliveries (incident_id, channel, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_due_messages ON deliveries (channel, next_attempt_at)
    WHERE state = 'pending' AND kind <> 'notice';
