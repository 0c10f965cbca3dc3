-- Key lifecycle: rotation policy, retirement, disable, scheduled destruction; audit detail.
ALTER TABLE keys ADD COLUMN min_decryption_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE keys ADD COLUMN rotation_period_secs BIGINT;
ALTER TABLE keys ADD COLUMN next_rotation_at BIGINT;

-- state: enabled | disabled | pending_destruction | destroyed
ALTER TABLE key_versions ADD COLUMN destroy_at BIGINT;
ALTER TABLE key_versions ADD COLUMN destroyed_at BIGINT;
ALTER TABLE key_versions ADD COLUMN state_before_destroy TEXT;
ALTER TABLE key_versions ADD COLUMN destroy_requested_at BIGINT;
ALTER TABLE key_versions ADD COLUMN destroy_requested_by TEXT;

-- Free-form, non-secret facts about an entry (e.g. a destruction receipt). Part of the hash.
ALTER TABLE audit_log ADD COLUMN detail TEXT;
