-- When lifeboat's account left a room it made again for a lost one (nobody
-- waited to be invited, and an admin of the room was back in it): it is
-- not looked at again, and whoever needs an invite later is named for the
-- room's admins to invite.
ALTER TABLE rooms ADD COLUMN stepped_aside_at BIGINT;
