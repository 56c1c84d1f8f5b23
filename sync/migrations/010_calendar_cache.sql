-- Calendar buckets computed once (issue 14): a local day, week or month of one participant
-- and metric is an exact UTC interval [start_ts, end_ts), and its count/sum/min/max depend
-- only on the rows inside it. A zone-history edit changes which intervals are asked, never
-- what an interval holds, so it needs no invalidation here: the new intervals miss.
--
-- What the rows were when an entry was computed: day_seqs holds day_state.change_seq of each
-- UTC day the interval touches (0: no day_state row), read before the rows were. Every write
-- to a day's data takes a fresh change number (the router's late-data rule relies on the
-- same number), so an entry whose numbers still equal the days' current ones was computed
-- from the data as it is; any other entry is ignored and replaced by the next fill. No
-- writer has to know this table, and a fill racing a late row cannot store a stale answer
-- that is served: its numbers are older than the late row's.
--
-- count = 0: the interval holds no rows (min and max are NULL), cached too.
CREATE TABLE calendar_cache (
    user_id   integer          NOT NULL,
    metric    text COLLATE "C" NOT NULL,
    start_ts  timestamptz      NOT NULL,
    end_ts    timestamptz      NOT NULL CHECK (end_ts > start_ts),
    count     bigint           NOT NULL CHECK (count >= 0),
    sum       double precision NOT NULL,
    min       double precision,
    max       double precision,
    day_seqs  bigint[]         NOT NULL,
    filled_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, metric, start_ts, end_ts)
);
-- Pruning drops the oldest fills first.
CREATE INDEX calendar_cache_filled ON calendar_cache (filled_at);
