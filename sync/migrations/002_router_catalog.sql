-- What the lake holds, verified: one row per (user, day, lake tier) exported, with the row
-- count and checksum read back from the lake after the commit, and the day's change number
-- at export. The router serves a day from the lake only while that number still equals
-- day_state.change_seq (no write since), so late data is never silently stale.
CREATE TABLE lake_days (
    user_id      integer     NOT NULL,
    tier         text        NOT NULL CHECK (tier IN ('raw', 'agg_1m', 'agg_1h', 'agg_1d')),
    day          date        NOT NULL,
    rows         bigint      NOT NULL,
    checksum     bigint      NOT NULL,
    change_seq   bigint      NOT NULL,
    lake_version bigint      NOT NULL,
    verified_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tier, day)
);

-- Bumped by every job that changes what the router may serve from where (rollup refresh,
-- sync, tiering). With day_change_seq (bumped by ingest) it forms the catalog generation:
-- the query engine reloads its coverage only when the pair moves.
CREATE SEQUENCE catalog_seq;

-- Rows per (user, metric, day) at each resolution, kept by the rollup refresh. Deep pages
-- skip whole days with these instead of reading and discarding every earlier row.
CREATE TABLE day_counts (
    user_id  integer NOT NULL,
    metric   text COLLATE "C" NOT NULL,
    day      date    NOT NULL,
    rows_raw bigint  NOT NULL,
    rows_1m  bigint  NOT NULL,
    rows_1h  bigint  NOT NULL,
    PRIMARY KEY (user_id, metric, day)
);
