-- Addresses a sync dropped because Synapse no longer had them for their
-- account (they may be someone else's now), and when. A Synapse restored
-- from an older backup has them again, validated before the drop: they are
-- not taken back as contacts, only one Synapse shows validated since.
CREATE TABLE dropped_emails (
    user_id    TEXT NOT NULL,
    address    TEXT NOT NULL,
    dropped_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, address)
);
