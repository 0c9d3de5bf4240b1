-- Device shadows. `shadow_name` is '' for the classic (unnamed) shadow. `document` is the
-- shadow service's encoding (opaque here); `version` is copied out of it so that writes can
-- be made conditional on the version they read (optimistic locking). A deleted shadow stays
-- as a tombstone row (`deleted_at` set) for as long as its version must be remembered.
CREATE TABLE shadows (
    thing_name  TEXT    NOT NULL,
    shadow_name TEXT    NOT NULL,
    document    BLOB    NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER,
    PRIMARY KEY (thing_name, shadow_name)
) WITHOUT ROWID;
