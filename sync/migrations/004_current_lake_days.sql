-- The lake days the router may serve: verified, and unchanged since (the day's change number
-- still equals the one read in the export's snapshot). Any write to the day takes a new
-- number, so its lake copy drops out of this view at once and the day is read from the warm
-- store until the next sync. The rule lives here once; the router's catalog, /catalog and
-- `stratum sync status` read it. (Tiering compares against the row it has locked instead,
-- so that a write landing while it waits for the lock is seen.)
CREATE VIEW current_lake_days AS
SELECT l.user_id, l.tier, l.day, l.rows, l.checksum, l.change_seq, l.lake_version,
       l.verified_at
FROM lake_days l
JOIN day_state s ON s.user_id = l.user_id AND s.day = l.day AND s.change_seq = l.change_seq;
