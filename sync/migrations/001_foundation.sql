-- Foundation: metric registry, raw samples, exact rollups, per-day change tracking.

CREATE TABLE metrics (
    name              text PRIMARY KEY,
    unit              text NOT NULL,
    native_interval_s integer NOT NULL CHECK (native_interval_s > 0),
    rollup            text NOT NULL CHECK (rollup IN ('mean', 'sum')),
    description       text NOT NULL DEFAULT ''
);

-- One sample per (user, metric, instant): a re-delivered row replaces the old value.
-- No foreign key to metrics: ingest validates against the registry before writing, and a
-- per-row FK check would cost a third of ingest throughput.
CREATE TABLE raw_data (
    ts      timestamptz      NOT NULL,
    user_id integer          NOT NULL,
    metric  text COLLATE "C" NOT NULL,  -- byte order: the lake and DuckDB sort the same way
    value   double precision NOT NULL,
    PRIMARY KEY (user_id, metric, ts)
);

-- Rollups keep count, sum, min and max so every coarser tier is computed exactly from the
-- finer one (avg = sum / count is derived, never stored).
CREATE TABLE data_1m (
    ts      timestamptz      NOT NULL,
    user_id integer          NOT NULL,
    metric  text COLLATE "C" NOT NULL,  -- byte order: the lake and DuckDB sort the same way
    count   bigint           NOT NULL,
    sum     double precision NOT NULL,
    min     double precision NOT NULL,
    max     double precision NOT NULL,
    PRIMARY KEY (user_id, metric, ts)
);
CREATE TABLE data_1h (LIKE data_1m INCLUDING ALL);
CREATE TABLE data_1d (LIKE data_1m INCLUDING ALL);

-- Every write to a (user, UTC day) takes a fresh number from day_change_seq. A day needs a
-- rollup refresh while change_seq > refreshed_seq, and a lake sync while change_seq >
-- synced_seq. Comparing numbers (not flags) makes a write that lands during a refresh or a
-- sync leave the day marked: the job records the number it saw, not "done".
CREATE SEQUENCE day_change_seq;
CREATE TABLE day_state (
    user_id       integer NOT NULL,
    day           date    NOT NULL,
    change_seq    bigint  NOT NULL,
    refreshed_seq bigint  NOT NULL DEFAULT 0,
    synced_seq    bigint  NOT NULL DEFAULT 0,
    changed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, day)
);
CREATE INDEX day_state_refresh_pending ON day_state (day) WHERE change_seq > refreshed_seq;
CREATE INDEX day_state_sync_pending ON day_state (day) WHERE change_seq > synced_seq;
