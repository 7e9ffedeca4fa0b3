-- The off-server registry of a homeserver's accounts and how to reach
-- their people. Times are UTC milliseconds since the Unix epoch. Flags are
-- 0/1 BIGINTs: sqlx's Any driver reads the same type from both backends.

CREATE TABLE accounts (
    user_id              TEXT COLLATE "C" PRIMARY KEY,
    display_name         TEXT,
    admin                BIGINT NOT NULL DEFAULT 0,
    deactivated          BIGINT NOT NULL DEFAULT 0,
    locked               BIGINT NOT NULL DEFAULT 0,
    is_guest             BIGINT NOT NULL DEFAULT 0,
    user_type            TEXT,
    -- Synapse's creation_ts (ms); a newer one for the same ID means the
    -- account was registered again, possibly by someone else.
    synapse_created_at   BIGINT,
    first_seen_at        BIGINT NOT NULL,
    last_seen_present_at BIGINT,
    state                TEXT NOT NULL DEFAULT 'present'
                         CHECK (state IN ('present', 'missing', 'deactivated')),
    missing_since        BIGINT,
    recreated_at         BIGINT,
    details_fetched_at   BIGINT
);
CREATE INDEX accounts_by_state ON accounts (state);

CREATE TABLE contacts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES accounts (user_id),
    kind         TEXT NOT NULL CHECK (kind IN ('email', 'matrix')),
    address      TEXT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('synapse', 'admin', 'user')),
    verified_at  BIGINT,
    opted_out_at BIGINT,
    added_at     BIGINT NOT NULL,
    UNIQUE (user_id, kind, address)
);
CREATE INDEX contacts_by_address ON contacts (kind, address);

CREATE TABLE sync_runs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    status          TEXT NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'complete', 'failed')),
    listed          BIGINT NOT NULL DEFAULT 0,
    new_accounts    BIGINT NOT NULL DEFAULT 0,
    missing         BIGINT NOT NULL DEFAULT 0,
    newly_missing   BIGINT NOT NULL DEFAULT 0,
    recreated       BIGINT NOT NULL DEFAULT 0,
    deactivated     BIGINT NOT NULL DEFAULT 0,
    details_fetched BIGINT NOT NULL DEFAULT 0,
    details_failed  BIGINT NOT NULL DEFAULT 0,
    emails_imported BIGINT NOT NULL DEFAULT 0,
    error           TEXT
);

-- Accounts seen by a listing still in progress; applied to `accounts`
-- only once the listing is complete, so a failed listing changes nothing.
CREATE TABLE listing_stage (
    run_id             BIGINT NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL,
    display_name       TEXT,
    admin              BIGINT NOT NULL,
    deactivated        BIGINT NOT NULL,
    locked             BIGINT NOT NULL,
    is_guest           BIGINT NOT NULL,
    user_type          TEXT,
    synapse_created_at BIGINT,
    PRIMARY KEY (run_id, user_id)
);

CREATE TABLE audit_log (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL CHECK (actor IN ('cli', 'bot', 'web', 'watcher')),
    actor_detail TEXT,
    action       TEXT NOT NULL,
    subject      TEXT,
    detail       TEXT
);
CREATE INDEX audit_log_by_time ON audit_log (at);
