-- Every transaction that takes the audit-head lock bumps `epoch`, whether or not it appends. The
-- PostgreSQL audit writer's one-statement commit moves the head only from the (seq, hash, epoch) it
-- left, so any other transaction that held the lock in between — appending or not — makes it write
-- nothing and go the long way (src/store/writer.rs).
ALTER TABLE audit_head ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
