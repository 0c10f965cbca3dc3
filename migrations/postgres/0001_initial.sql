-- pqkms schema v1 (PostgreSQL). Times are Unix milliseconds; ids are 32 lowercase hex digits.
-- Private key material appears only in key_versions.sealed_private, sealed under the root key.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE key_versions (
    key_id          TEXT NOT NULL REFERENCES keys(id),
    version         BIGINT NOT NULL,
    state           TEXT NOT NULL,
    sealed_private  BYTEA,
    root_version    BIGINT NOT NULL,
    public_key      BYTEA NOT NULL,
    fingerprint     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    tenant_id   TEXT REFERENCES tenants(id),
    roles       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

-- One row: the sequence number and hash of the newest audit entry. Appending starts by updating
-- this row, which serializes appenders (SQLite write lock, PostgreSQL row lock).
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    time_ms       BIGINT NOT NULL,
    principal     TEXT NOT NULL,
    tenant        TEXT,
    key_name      TEXT,
    key_version   BIGINT,
    operation     TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    context_hash  TEXT,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);
