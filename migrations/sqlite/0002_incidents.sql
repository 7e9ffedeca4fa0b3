-- Incidents and the way back in: who was affected, their registration
-- tokens, the outbox of notices, lifeboat's own recovered credentials, and
-- generated settings (the link-signing key).

CREATE TABLE incidents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT NOT NULL,
    -- Markdown, as the admin wrote it.
    postmortem  TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('missing', 'all')),
    opened_at   BIGINT NOT NULL,
    resolved_at BIGINT
);

-- The affected accounts, snapshotted when the incident is opened.
CREATE TABLE incident_accounts (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    user_id     TEXT NOT NULL REFERENCES accounts (user_id),
    state_at_opening TEXT NOT NULL,
    PRIMARY KEY (incident_id, user_id)
);

CREATE TABLE registration_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token       TEXT NOT NULL UNIQUE,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    user_id     TEXT NOT NULL REFERENCES accounts (user_id),
    -- 'notice': the one sent with the incident notice.
    purpose     TEXT NOT NULL CHECK (purpose IN ('notice', 'request')),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    -- Set once Synapse confirmed the token exists (recorded here first, so a
    -- crash in between never loses track of a token).
    confirmed_at BIGINT,
    -- Set once deleted in Synapse (resolved incident).
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX one_notice_token_per_person
    ON registration_tokens (incident_id, user_id) WHERE purpose = 'notice';

-- The outbox: one row per message to send. pending → sending → sent, or
-- back to pending with a later next_attempt_at, or failed for good, or
-- skipped (the contact opted out before it was sent).
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id     BIGINT NOT NULL REFERENCES incidents (id),
    user_id         TEXT NOT NULL REFERENCES accounts (user_id),
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
    UNIQUE (incident_id, user_id, channel, address)
);
CREATE INDEX deliveries_due ON deliveries (incident_id, channel, state, next_attempt_at);

-- lifeboat's service account credentials obtained at run time (after a
-- wipe, through shared-secret registration); never written to the config.
CREATE TABLE service_credentials (
    user_id      TEXT PRIMARY KEY,
    access_token TEXT NOT NULL,
    device_id    TEXT,
    obtained_at  BIGINT NOT NULL
);

-- The DM room lifeboat uses with each person, so a rerun or a restart
-- never opens a second one.
CREATE TABLE dm_rooms (
    user_id    TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Who is doing a job that must not run twice at once (a notify run per
-- incident), until when; renewed while the job runs.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
