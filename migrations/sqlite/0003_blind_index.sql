-- Blind-index secrets: one random 32-byte secret per key, from which the service derives each
-- field's blind-index key (HKDF-SHA256, docs/CRYPTO.md). It is stored only as a wrapped data key
-- (`PQWK`) under one version of the key, bound to the context {"pqkms:purpose": "blind-index"},
-- so it survives root-key rotation untouched, follows key rotation (moved to the current version
-- on use, compare-and-swap on `version`), and is gone once that version is destroyed.
CREATE TABLE blind_index_secrets (
    key_id      TEXT PRIMARY KEY REFERENCES keys(id),
    version     INTEGER NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    FOREIGN KEY (key_id, version) REFERENCES key_versions(key_id, version)
);
