-- Things, thing types, static thing groups and resource tags (the `iot` registry).
-- Times are Unix seconds. Attribute maps and thing type properties are JSON text.

-- Thing types. `properties` is the ThingTypeProperties object as the API returns it.
CREATE TABLE thing_types (
    thing_type_name  TEXT    NOT NULL PRIMARY KEY,
    thing_type_id    TEXT    NOT NULL UNIQUE,
    properties       TEXT    NOT NULL DEFAULT '{}',
    deprecated       INTEGER NOT NULL DEFAULT 0,
    deprecation_date INTEGER,
    creation_date    INTEGER NOT NULL
);

-- Things. `attributes` is a JSON object of string values; `version` starts at 1 and moves on
-- every update. Other modules read `thing_name`, `thing_type_name` and `attributes`.
CREATE TABLE things (
    thing_name         TEXT    NOT NULL PRIMARY KEY,
    thing_id           TEXT    NOT NULL UNIQUE,
    thing_type_name    TEXT    REFERENCES thing_types (thing_type_name),
    attributes         TEXT    NOT NULL DEFAULT '{}',
    billing_group_name TEXT,
    version            INTEGER NOT NULL,
    created_at         INTEGER NOT NULL
);
CREATE INDEX things_by_type ON things (thing_type_name, thing_name);

-- Static thing groups, a forest through `parent_group_name`.
CREATE TABLE thing_groups (
    thing_group_name  TEXT    NOT NULL PRIMARY KEY,
    thing_group_id    TEXT    NOT NULL UNIQUE,
    parent_group_name TEXT    REFERENCES thing_groups (thing_group_name),
    description       TEXT,
    attributes        TEXT    NOT NULL DEFAULT '{}',
    version           INTEGER NOT NULL,
    creation_date     INTEGER NOT NULL
);
CREATE INDEX thing_groups_by_parent ON thing_groups (parent_group_name, thing_group_name);

-- Direct membership of things in thing groups.
CREATE TABLE thing_group_members (
    thing_group_name TEXT NOT NULL REFERENCES thing_groups (thing_group_name) ON DELETE CASCADE,
    thing_name       TEXT NOT NULL REFERENCES things (thing_name) ON DELETE CASCADE,
    PRIMARY KEY (thing_group_name, thing_name)
) WITHOUT ROWID;
CREATE INDEX thing_group_members_by_thing ON thing_group_members (thing_name, thing_group_name);

-- Tags of any taggable resource, keyed by the resource's ARN.
CREATE TABLE resource_tags (
    resource_arn TEXT NOT NULL,
    tag_key      TEXT NOT NULL,
    tag_value    TEXT NOT NULL,
    PRIMARY KEY (resource_arn, tag_key)
) WITHOUT ROWID;
