-- SigV4 access keys accepted by the HTTP APIs.
CREATE TABLE access_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    secret      TEXT    NOT NULL,
    description TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- One row: a counter bumped by every registry change that can alter an authorization
-- decision (policies, attachments, thing principals, thing attributes), so the broker can
-- recompile its per-connection policies when it moves.
CREATE TABLE registry_revision (
    id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO registry_revision (id, revision) VALUES (1, 0);
