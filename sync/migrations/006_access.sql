-- Access control: cohorts of participants, API keys scoped to cohorts and metrics, the
-- server secret that signs cursors, and the audit log of every read made with a key.

CREATE TABLE cohorts (
    name       text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cohort_members (
    cohort  text    NOT NULL REFERENCES cohorts (name) ON DELETE CASCADE,
    user_id integer NOT NULL,
    PRIMARY KEY (cohort, user_id)
);

-- Keys are random 256-bit secrets: a fast hash (SHA-256) is enough to store them, and the
-- text of a key is never stored or logged. An admin key sees every participant and metric;
-- any other key sees the members of its cohorts (as they are at each request) and its
-- metrics (NULL: all of them).
CREATE TABLE api_keys (
    name       text        PRIMARY KEY,
    key_hash   bytea       NOT NULL UNIQUE,
    admin      boolean     NOT NULL DEFAULT false,
    cohorts    text[]      NOT NULL DEFAULT '{}',
    metrics    text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    CHECK (admin OR cardinality(cohorts) > 0)
);

-- One row: the HMAC key of cursors, made on first use by the server.
CREATE TABLE server_secrets (
    name   text  PRIMARY KEY,
    secret bytea NOT NULL
);

-- One row per request made with a key, written when the request ends (also when it fails
-- or the client goes away). Append-only for the serving role: see sync/access.py.
CREATE TABLE access_audit (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    key_name     text        NOT NULL,
    method       text        NOT NULL,
    path         text        NOT NULL,
    users        integer[],
    metrics      text[],
    span_start   timestamptz,
    span_end     timestamptz,
    resolution   text,
    format       text,
    rows         bigint,
    bytes        bigint      NOT NULL DEFAULT 0,
    status       integer     NOT NULL,
    duration_ms  double precision NOT NULL,
    client       text
);
CREATE INDEX access_audit_at ON access_audit (at);
CREATE INDEX access_audit_key_at ON access_audit (key_name, at);

-- Append-only: a row is never rewritten, and only rows past a day old can be deleted (the
-- retention pruning; STRATUM_AUDIT_RETENTION_DAYS is at least 1), so whoever holds the
-- serving role cannot cover the tracks of what a key just read.
CREATE FUNCTION access_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < now() - interval '1 day' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'access_audit is append-only: % refused', TG_OP
        USING HINT = 'only rows older than a day may be deleted (retention)';
END
$$;
CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE ON access_audit
    FOR EACH ROW EXECUTE FUNCTION access_audit_append_only();
CREATE TRIGGER access_audit_no_truncate BEFORE TRUNCATE ON access_audit
    FOR EACH STATEMENT EXECUTE FUNCTION access_audit_append_only();
