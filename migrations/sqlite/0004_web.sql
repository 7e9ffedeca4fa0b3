-- The web page's signed, single-use links: a token request (mailed to a
-- contact already in the registry) or a contact subscription waiting for
-- its two proofs (the mailed link and the code DMed to the Matrix ID).
CREATE TABLE web_links (
    -- Random; part of the link, which also carries an HMAC of it.
    id          TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL CHECK (purpose IN ('token', 'subscribe')),
    user_id     TEXT NOT NULL REFERENCES accounts (user_id),
    -- The email address the link was mailed to.
    address     TEXT NOT NULL,
    -- subscribe: SHA-256 (hex) of the code DMed to user_id.
    code_hash   TEXT,
    -- subscribe: wrong codes entered so far.
    attempts    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    -- Set once, atomically: a link works a single time.
    used_at     BIGINT
);
CREATE INDEX web_links_by_expiry ON web_links (expires_at);
