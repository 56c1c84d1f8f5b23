-- The nightly prefill of the calendar cache (engine/calendarprefill.py): the local days of
-- every participant are computed after the nightly sync, so the first calendar answer of the
-- day reads them. Its work follows what changed, as the rollup refresh and the lake sync do:
-- a day needs a prefill while change_seq > prefilled_seq (every write takes a fresh change
-- number), and the prefill records the number it saw, so a write landing during it leaves the
-- day marked. What marks a day again otherwise (a zone edit, pruning) sets prefilled_seq to a
-- fresh negative number: a prefill running meanwhile records its number only where
-- prefilled_seq is still the one it read, so it cannot clear a mark it did not compute for.
ALTER TABLE day_state ADD COLUMN prefilled_seq bigint NOT NULL DEFAULT 0;
CREATE INDEX day_state_prefill_pending ON day_state (user_id, day)
WHERE change_seq > prefilled_seq;

-- A zone-history edit changes which intervals are a participant's local days from its
-- valid_from on (the rows inside an interval do not change): those days are marked again.
-- A day before: the local day holding valid_from may start on the UTC day before it.
CREATE FUNCTION stratum_prefill_zones_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE day_state d SET prefilled_seq = -nextval('day_change_seq')
    FROM (SELECT user_id, min(valid_from) AS since FROM changed_rows GROUP BY user_id) c
    WHERE d.user_id = c.user_id AND d.day >= (c.since AT TIME ZONE 'UTC')::date - 1;
    RETURN NULL;
END
$$;
CREATE FUNCTION stratum_prefill_zones_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE day_state d SET prefilled_seq = -nextval('day_change_seq')
    FROM (
        SELECT user_id, min(valid_from) AS since
        FROM (SELECT user_id, valid_from FROM old_rows
              UNION ALL SELECT user_id, valid_from FROM new_rows) AS both_sides
        GROUP BY user_id
    ) c
    WHERE d.user_id = c.user_id AND d.day >= (c.since AT TIME ZONE 'UTC')::date - 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER tz_history_inserted AFTER INSERT ON tz_history
REFERENCING NEW TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_prefill_zones_changed();
CREATE TRIGGER tz_history_updated AFTER UPDATE ON tz_history
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_prefill_zones_updated();
CREATE TRIGGER tz_history_deleted AFTER DELETE ON tz_history
REFERENCING OLD TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_prefill_zones_changed();

-- What the prefill stored is what pruning keeps longest: entries filled on demand (other
-- zones, other spans) go first, oldest first; then prefilled ones, oldest first, whose days
-- pruning marks for the next prefill again (sync/calendar_cache.py).
ALTER TABLE calendar_cache ADD COLUMN prefilled boolean NOT NULL DEFAULT false;
DROP INDEX calendar_cache_filled;
CREATE INDEX calendar_cache_kept ON calendar_cache (prefilled, filled_at);
