-- The delivery that carries a web link's email. A link whose email was
-- given up (refused for good, or out of time) no longer counts as one the
-- person may still receive, so their next request mails a new one.
ALTER TABLE web_links ADD COLUMN delivery_id BIGINT;
