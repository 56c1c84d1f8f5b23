-- catalog_changes (008) is pruned (sync/catalog_changes.py, nightly maintenance). A cached
-- participant needs the rows at or above its horizon; pruning deletes old rows and, in the
-- same transaction, raises this floor above every id it deleted. A cached entry whose horizon
-- is below the floor may have needed a deleted row, so the engine reloads it (one comparison
-- per participant asked); an entry at or above the floor needed none. Pruning therefore never
-- leaves any cache stale, whichever process holds it and however old it is.
CREATE TABLE catalog_changes_floor (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    below bigint  NOT NULL  -- xid8 as a number: every deleted row's xact_id is below it
);
INSERT INTO catalog_changes_floor (below) VALUES (0);
