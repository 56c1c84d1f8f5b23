-- Lake integrity (issue 11): what each lake file was when it was committed, and the lake days
-- found damaged since.

-- One row per lake file a sync (or compaction) committed: its size and content hash, read
-- before the commit was verified. Readers check a file against this before they first serve
-- it, and `stratum verify` checks every file. `path` is relative to the tier's table folder.
CREATE TABLE lake_files (
    tier         text        NOT NULL CHECK (tier IN ('raw', 'agg_1m', 'agg_1h', 'agg_1d')),
    path         text        NOT NULL,
    size         bigint      NOT NULL,
    sha256       text        NOT NULL,
    lake_version bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tier, path)
);

-- Lake days whose copy is damaged (a file missing, truncated, changed) or lost (the table's
-- log is older than the version the day was verified at). The router never serves them from
-- the lake: the warm store answers when it still holds them, else the request gets 503
-- lake_damaged. `stratum repair` re-exports what the warm store holds and clears the row.
CREATE TABLE lake_damage (
    user_id     integer     NOT NULL,
    tier        text        NOT NULL CHECK (tier IN ('raw', 'agg_1m', 'agg_1h', 'agg_1d')),
    day         date        NOT NULL,
    reason      text        NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tier, day)
);

-- Finding the days verified at a version newer than the table's log shows must be cheap.
CREATE INDEX lake_days_version ON lake_days (tier, lake_version);
