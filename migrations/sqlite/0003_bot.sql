-- Contacts people add themselves by DM to the bot: a code is mailed to the
-- address, and the contact is recorded as verified only when the person
-- sends the code back. Only the code's SHA-256 is kept.
CREATE TABLE contact_verifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES accounts (user_id),
    address     TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    verified_at BIGINT
);
CREATE INDEX contact_verifications_by_user ON contact_verifications (user_id, created_at);
