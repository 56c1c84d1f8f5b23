-- Per-minute series are not copied row by row into the 1-minute tier (issue 13 point 4).
--
-- When every raw row of a (user, metric, UTC day) sits on a whole minute, each raw row is its
-- own 1-minute bucket (the primary key makes its ts unique): count 1, and sum, min and max its
-- value. Writing those buckets out again cost the rollup refresh ~4 s per 2M rows (row inserts
-- into an indexed table) and doubled the warm store. So the refresh records such a day in
-- raw_minute_days instead, and stores 1-minute rows (data_1m_stored) only for the other days.
--
-- data_1m, the name every reader uses, becomes a view: the stored rows, plus the raw rows of
-- the recorded days as their own buckets. A day's rollups are trusted only while its
-- refreshed_seq equals its change_seq, as before; a raw row written since its day's refresh
-- shows through the view at once, but the day is pending a refresh until then.
ALTER TABLE data_1m RENAME TO data_1m_stored;
ALTER INDEX data_1m_pkey RENAME TO data_1m_stored_pkey;

CREATE TABLE raw_minute_days (
    user_id integer          NOT NULL,
    metric  text COLLATE "C" NOT NULL,
    day     date             NOT NULL,
    PRIMARY KEY (user_id, metric, day)
);

-- A reader's conditions on user_id, metric and ts reach both branches. The second reads the
-- raw rows in range and keeps those of recorded days: a hash semi-join against the table of
-- records (a join on each record's time range was planned as a merge join over every record,
-- 15x slower on a 7-day read). The hash still holds every record; the engine, the export and
-- the bench read through engine.tiers.minute_rows, which carries their filters to the records.
CREATE VIEW data_1m AS
SELECT ts, user_id, metric, count, sum, min, max FROM data_1m_stored
UNION ALL
SELECT r.ts, r.user_id, r.metric, 1::bigint, r.value, r.value, r.value
FROM raw_data r
WHERE EXISTS (
    SELECT 1 FROM raw_minute_days d
    WHERE d.user_id = r.user_id AND d.metric = r.metric
      AND d.day = (r.ts AT TIME ZONE 'UTC')::date
);
