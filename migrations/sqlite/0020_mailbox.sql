-- The inbox an address reaches (`EmailAddress::mailbox`: its domain in
-- ASCII, no +tag, no dots at Gmail). The caps on mail to one inbox count
-- by it, so that variants of one address typed by someone else do not
-- each get their own. Rows from before count by their address.
ALTER TABLE web_links ADD COLUMN mailbox TEXT NOT NULL DEFAULT '';
UPDATE web_links SET mailbox = address;
ALTER TABLE contact_verifications ADD COLUMN mailbox TEXT NOT NULL DEFAULT '';
UPDATE contact_verifications SET mailbox = address;
CREATE INDEX web_links_by_mailbox ON web_links (purpose, mailbox);
