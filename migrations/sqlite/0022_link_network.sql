-- The network a web page link was asked from (`net:` and its IPv4 /24 or
-- IPv6 /48, or `net:unknown`): one network may have only part of an address's day of
-- links, counted here so that a restart of serve does not forget it.
-- Links from before were asked from no network.
ALTER TABLE web_links ADD COLUMN network TEXT;
