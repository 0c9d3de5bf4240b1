-- Connections someone wants to hear leave: a subscription matched their
-- `$aws/events/presence/disconnected/<clientId>` when they connected. The row goes when the
-- disconnected event does; one left at start belongs to a connection that ended with the
-- process (a crash), and its disconnected event is published then.
CREATE TABLE live_connections (
    session_identifier TEXT    NOT NULL PRIMARY KEY,
    client_id          TEXT    NOT NULL,
    principal          TEXT    NOT NULL,
    version_number     INTEGER NOT NULL
);
