-- Each participant's time-zone history: from valid_from on, their calendar (local days,
-- weeks, months of tz=local answers) is tz's, until their next entry. Before their first
-- entry STRATUM_DEFAULT_TZ applies. Names are IANA names, checked against zoneinfo by
-- `stratum tz` (the database cannot check them).
CREATE TABLE tz_history (
    user_id    integer     NOT NULL CHECK (user_id >= 0),
    valid_from timestamptz NOT NULL,
    tz         text        NOT NULL CHECK (tz <> ''),
    PRIMARY KEY (user_id, valid_from)
);
