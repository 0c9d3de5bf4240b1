-- Initial schema. Applied once, inside the migration runner's transaction.

-- Registered device certificates. `status` holds the AWS spelling (ACTIVE, INACTIVE, ...).
-- `revision` is a table-wide counter set on every insert or status change, so the
-- certificate registry can read only what changed since its last look.
CREATE TABLE certificates (
    id         TEXT    NOT NULL PRIMARY KEY,
    pem        TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    ca_id      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision   INTEGER NOT NULL
);
CREATE INDEX certificates_by_revision ON certificates (revision);

-- Persistent MQTT sessions; `state` is the broker's opaque encoding.
CREATE TABLE sessions (
    client_id       TEXT    NOT NULL PRIMARY KEY,
    protocol_level  INTEGER NOT NULL,
    expiry_interval INTEGER NOT NULL,
    disconnected_at INTEGER,
    state           BLOB    NOT NULL
);

-- Messages queued for a session, ordered by `seq`. Deleting the session deletes them.
CREATE TABLE session_messages (
    client_id TEXT    NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    blob      BLOB    NOT NULL,
    PRIMARY KEY (client_id, seq)
);

-- Retained messages, one per topic.
CREATE TABLE retained (
    topic TEXT NOT NULL PRIMARY KEY,
    blob  BLOB NOT NULL
);
