-- A deep page's row counts read from day_counts' index alone (issue 13 point 3).
--
-- Locating page 1,000 of 10 participants x 3 metrics x 1 year summed 10,950 day_counts rows:
-- a scan of the table filtering every row by `= ANY` took 6-11 ms, most of the deep page's
-- extra cost. Read one series at a time from an index that carries the counts, the same sums
-- took 2.6 ms (no heap fetch where the table's pages are all-visible, as settled days' are).
ALTER TABLE day_counts
    DROP CONSTRAINT day_counts_pkey,
    ADD CONSTRAINT day_counts_pkey PRIMARY KEY (user_id, metric, day)
        INCLUDE (rows_raw, rows_1m, rows_1h);
