-- How a `/token` request named its person: 'id' (a Matrix ID, which anyone
-- may know) or 'address' (their email address). Each has its own day of
-- links to one address, so that strangers asking by someone's public ID
-- cannot use up the day of its owner, who types their address. NULL for
-- subscription links, and for links from before.
ALTER TABLE web_links ADD COLUMN asked_as TEXT;
