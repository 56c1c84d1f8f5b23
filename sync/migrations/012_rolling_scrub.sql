-- The rolling scrub (issue 12): the nightly verify no longer hashes every lake file. Each run
-- takes a number from lake_scrub_seq and hashes the files recorded since they were last hashed
-- by a scrub, those last hashed STRATUM_SCRUB_NIGHTS runs ago, and the longest unhashed share
-- (1/STRATUM_SCRUB_NIGHTS) of the rest; `scrubbed` is the run that last hashed a file (NULL: no
-- run since the file was recorded) and `scrubbed_at` when. Every file is still checked for
-- presence and size.
ALTER TABLE lake_files ADD COLUMN scrubbed bigint, ADD COLUMN scrubbed_at timestamptz;
CREATE SEQUENCE lake_scrub_seq;
