-- Which participants' lake catalog changed, and in which transaction (issue 12): the query
-- engine caches each participant's catalog (verified lake days, damage, tiered days) and
-- reloads only the participants a query asks for whose catalog changed since it loaded them.
--
-- Triggers record every change to what that cache holds (lake_days, lake_damage, and the
-- tiered mark of day_state), whoever writes it, with the writing transaction's id. A reader
-- remembers, per participant, the xmin of the snapshot it loaded them under: every
-- transaction below it had ended, so a change it did not see has an id at or above it. "A
-- row of this participant with xact_id >= that xmin" is then exactly "maybe not seen": an
-- index probe per participant asked, whatever the size of the cohort or of this table.
-- (Not a sequence number: numbers are taken before commit, out of commit order.)
CREATE TABLE catalog_changes (
    user_id    integer     NOT NULL,
    xact_id    xid8        NOT NULL DEFAULT pg_current_xact_id(),
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, xact_id)
);

CREATE FUNCTION stratum_catalog_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO catalog_changes (user_id)
    SELECT DISTINCT user_id FROM changed_rows
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION stratum_catalog_rows_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO catalog_changes (user_id)
    SELECT user_id FROM new_rows UNION SELECT user_id FROM old_rows
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

-- day_state changes with every ingest: only a changed tiered mark concerns the catalog.
CREATE FUNCTION stratum_catalog_tiering_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO catalog_changes (user_id)
    SELECT DISTINCT n.user_id FROM new_rows n
    JOIN old_rows o ON o.user_id = n.user_id AND o.day = n.day
    WHERE n.tiered_seq IS DISTINCT FROM o.tiered_seq
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION stratum_catalog_tiered_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO catalog_changes (user_id)
    SELECT DISTINCT user_id FROM changed_rows WHERE tiered_seq IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER lake_days_inserted AFTER INSERT ON lake_days
REFERENCING NEW TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_changed();
CREATE TRIGGER lake_days_updated AFTER UPDATE ON lake_days
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_updated();
CREATE TRIGGER lake_days_deleted AFTER DELETE ON lake_days
REFERENCING OLD TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_changed();

CREATE TRIGGER lake_damage_inserted AFTER INSERT ON lake_damage
REFERENCING NEW TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_changed();
CREATE TRIGGER lake_damage_updated AFTER UPDATE ON lake_damage
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_updated();
CREATE TRIGGER lake_damage_deleted AFTER DELETE ON lake_damage
REFERENCING OLD TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_changed();

CREATE TRIGGER day_state_tiered_inserted AFTER INSERT ON day_state
REFERENCING NEW TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_tiered_rows();
CREATE TRIGGER day_state_tiering_updated AFTER UPDATE ON day_state
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_tiering_changed();
-- A deleted day leaves current_lake_days too.
CREATE TRIGGER day_state_deleted AFTER DELETE ON day_state
REFERENCING OLD TABLE AS changed_rows
FOR EACH STATEMENT EXECUTE FUNCTION stratum_catalog_rows_changed();

-- Every query reads its participants' days pending a sync or a refresh: by participant, in
-- a small partial index (the per-day ones serve the jobs, which look for days of everyone).
CREATE INDEX day_state_sync_pending_users ON day_state (user_id, day)
WHERE change_seq > synced_seq;
CREATE INDEX day_state_refresh_pending_users ON day_state (user_id, day)
WHERE change_seq > refreshed_seq;
