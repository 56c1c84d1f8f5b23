-- Lake sync jobs: tiering marks, where the tiered rows went, and the run history.

-- A tiered (user, day) has had its raw_data and data_1m rows removed from the warm store
-- because the lake holds them, verified at change number tiered_seq. An ingest into a tiered
-- day first copies the day back from the lake (rehydration) and clears the mark, so the warm
-- store is complete again before the day is rolled up and re-synced.
ALTER TABLE day_state
    ADD COLUMN tiered_seq bigint,
    ADD COLUMN tiered_at  timestamptz;
CREATE INDEX day_state_tiered ON day_state (day) WHERE tiered_seq IS NOT NULL;

-- The lake root that tiered rows were moved to (one row). Rehydration reads from it when the
-- ingesting process was not told where the lake is.
CREATE TABLE lake_location (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    root       text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per job run (sync, tier, maintain, refresh, nightly). A run killed mid-way stays
-- 'running' until the next run of that job notices its backend is gone and marks it
-- 'interrupted'.
CREATE TABLE sync_runs (
    id            bigserial   PRIMARY KEY,
    job           text        NOT NULL,
    status        text        NOT NULL
                  CHECK (status IN ('running', 'ok', 'failed', 'skipped', 'interrupted')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    backend_pid   integer,
    days          bigint      NOT NULL DEFAULT 0,
    rows          bigint      NOT NULL DEFAULT 0,
    bytes         bigint      NOT NULL DEFAULT 0,
    files         bigint      NOT NULL DEFAULT 0,
    lake_versions jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error         text
);
CREATE INDEX sync_runs_job_started ON sync_runs (job, started_at DESC);
