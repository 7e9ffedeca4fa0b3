-- Rooms, kept by every sync, so that after a loss people can be brought
-- back into the rooms that live on on other servers, local aliases
-- re-pointed, and rooms that lived only here re-created.
-- A room is never deleted: one not in the latest complete room listing
-- (rooms.listed_at setting) is gone from this server, and what the registry
-- last knew of it says whether it lives on elsewhere (joined_remote > 0).
-- Lists are JSON arrays of strings.
CREATE TABLE rooms (
    room_id         TEXT PRIMARY KEY,
    name            TEXT,
    canonical_alias TEXT,
    topic           TEXT,
    avatar_url      TEXT,
    join_rule       TEXT,
    -- Listed in this server's room directory.
    public          BIGINT NOT NULL DEFAULT 0,
    encrypted       BIGINT NOT NULL DEFAULT 0,
    room_type       TEXT,
    creator         TEXT,
    aliases         TEXT NOT NULL DEFAULT '[]',
    -- A space's child rooms.
    children        TEXT NOT NULL DEFAULT '[]',
    -- Remote servers of joined members, most members first: the `via`
    -- servers of a rejoin.
    via_servers     TEXT NOT NULL DEFAULT '[]',
    joined_local    BIGINT NOT NULL DEFAULT 0,
    joined_remote   BIGINT NOT NULL DEFAULT 0,
    -- Synapse's count of state events: when it changes, state is read again.
    state_events    BIGINT NOT NULL DEFAULT 0,
    first_seen_at   BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    -- lifeboat's own account is back in it after a loss (or why not yet).
    restored_at     BIGINT,
    restore_error   TEXT,
    -- The room made in its place when it lived only here.
    recreated_as    TEXT,
    recreated_at    BIGINT
);

-- Local accounts' memberships. A membership is kept while its person is
-- lost, so the rejoin knows where they were; `rejoin` records bringing
-- them back ('joined'), an invitation to a re-created room ('invited'),
-- or the last failure (retried).
CREATE TABLE room_members (
    room_id         TEXT NOT NULL REFERENCES rooms (room_id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    membership      TEXT NOT NULL CHECK (membership IN ('join', 'invite')),
    power_level     BIGINT NOT NULL DEFAULT 0,
    rejoin          TEXT CHECK (rejoin IN ('joined', 'invited', 'failed')),
    rejoin_error    TEXT,
    rejoin_attempts BIGINT NOT NULL DEFAULT 0,
    rejoin_at       BIGINT,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_by_user ON room_members (user_id);
