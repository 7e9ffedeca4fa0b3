-- A message that may have gone out (no answer once all of it was sent) is
-- not sent again before this time (ms), whoever asks: a rerun of notify,
-- or serve's worker once the relay answers again.
ALTER TABLE deliveries ADD COLUMN not_before BIGINT;
