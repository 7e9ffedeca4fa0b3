-- A subscription mails its link whether or not the Matrix ID is known (so
-- the inbox cannot tell which accounts exist): a link's user_id need not be
-- an account any more. 'claim-mailed' records that a claim link (signed,
-- not stored) went to a contact, so asking again mails nothing new while
-- it works. SQLite changes a constraint by rebuilding the table.
CREATE TABLE web_links_new (
    id          TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL CHECK (purpose IN ('token', 'subscribe', 'claim-mailed')),
    user_id     TEXT NOT NULL,
    address     TEXT NOT NULL,
    code_hash   TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
INSERT INTO web_links_new (id, purpose, user_id, address, code_hash, attempts, created_at, expires_at, used_at)
    SELECT id, purpose, user_id, address, code_hash, attempts, created_at, expires_at, used_at FROM web_links;
DROP TABLE web_links;
ALTER TABLE web_links_new RENAME TO web_links;
CREATE INDEX web_links_by_expiry ON web_links (expires_at);
CREATE INDEX web_links_by_person ON web_links (purpose, user_id);
CREATE INDEX web_links_by_address ON web_links (purpose, address);
