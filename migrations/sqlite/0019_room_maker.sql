-- Whether rooms.creator is the sender of the room's creation event, read
-- from its state, rather than the listing's creator: a room's own server
-- writes the creation event's creator field (room versions up to 10), and
-- Synapse's listing repeats it, so it may name a local admin or lifeboat
-- for a room made elsewhere.
ALTER TABLE rooms ADD COLUMN creator_from_state BIGINT NOT NULL DEFAULT 0;
