-- A subscription mails its link whether or not the Matrix ID is known (so
-- the inbox cannot tell which accounts exist): a link's user_id need not be
-- an account any more. 'claim-mailed' records that a claim link (signed,
-- not stored) went to a contact, so asking again mails nothing new while
-- it works.
ALTER TABLE web_links DROP CONSTRAINT web_links_user_id_fkey;
ALTER TABLE web_links DROP CONSTRAINT web_links_purpose_check;
ALTER TABLE web_links ADD CONSTRAINT web_links_purpose_check
    CHECK (purpose IN ('token', 'subscribe', 'claim-mailed'));
CREATE INDEX web_links_by_person ON web_links (purpose, user_id);
CREATE INDEX web_links_by_address ON web_links (purpose, address);
