-- Certificates (extended), CA certificates, the registration code, policies and their
-- versions, policy targets and thing principals.

-- How a certificate came to be trusted: ISSUED (by the thingd root), CA (registered under a
-- registered CA or the thingd root) or NO_CA (RegisterCertificateWithoutCA: only its id and
-- the TLS proof of possession matter). `mode` is DEFAULT or SNI_ONLY.
ALTER TABLE certificates ADD COLUMN origin TEXT NOT NULL DEFAULT 'ISSUED';
ALTER TABLE certificates ADD COLUMN mode TEXT NOT NULL DEFAULT 'DEFAULT';
ALTER TABLE certificates ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE certificates ADD COLUMN customer_version INTEGER NOT NULL DEFAULT 1;
CREATE INDEX certificates_by_ca ON certificates (ca_id);

-- Registered CA certificates. `status` is ACTIVE or INACTIVE, `auto_registration` ENABLE or
-- DISABLE; `registration_config` is the RegistrationConfig JSON object, if any.
CREATE TABLE ca_certificates (
    id                  TEXT    NOT NULL PRIMARY KEY,
    pem                 TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    auto_registration   TEXT    NOT NULL,
    mode                TEXT    NOT NULL,
    registration_config TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    customer_version    INTEGER NOT NULL DEFAULT 1,
    generation          INTEGER NOT NULL DEFAULT 1
);

-- The installation's registration code (GetRegistrationCode), at most one.
CREATE TABLE registration_code (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    code TEXT    NOT NULL
);

-- Policies. `next_version` is the id the next version gets (ids are never reused).
CREATE TABLE policies (
    name            TEXT    NOT NULL PRIMARY KEY,
    default_version INTEGER NOT NULL,
    next_version    INTEGER NOT NULL,
    generation      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE policy_versions (
    policy_name TEXT    NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    document    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (policy_name, version)
);

-- AttachPolicy: `target` is a certificate ARN, a thing-group ARN or a Cognito identity id.
CREATE TABLE policy_targets (
    policy_name TEXT    NOT NULL REFERENCES policies (name),
    target      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (policy_name, target)
);
CREATE INDEX policy_targets_by_target ON policy_targets (target);

-- AttachThingPrincipal: `principal` is a certificate ARN or a Cognito identity id;
-- `principal_type` is EXCLUSIVE_THING or NON_EXCLUSIVE_THING.
CREATE TABLE thing_principals (
    thing_name     TEXT,
    principal      TEXT NOT NULL,
    principal_type TEXT,
    created_at     INTEGER,
    PRIMARY KEY (thing_name, principal)
);
CREATE INDEX thing_principals_by_principal ON thing_principals (principal);
