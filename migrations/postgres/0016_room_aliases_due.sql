-- When lifeboat's account got back into a surviving room, while its local
-- aliases and directory listing are still to be put back: tried again each
-- round until they are (a timeout must not leave an alias dangling for
-- good), at most MAX_REJOIN_ATTEMPTS times unless retried on purpose.
ALTER TABLE rooms ADD COLUMN aliases_due_at BIGINT;
ALTER TABLE rooms ADD COLUMN aliases_attempts BIGINT NOT NULL DEFAULT 0;
