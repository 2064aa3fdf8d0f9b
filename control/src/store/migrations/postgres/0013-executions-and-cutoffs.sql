-- 13: executions nodes report, and when each user's access was last narrowed.
ALTER TABLE audit ADD COLUMN record_id TEXT;
ALTER TABLE audit ADD COLUMN duration_ms BIGINT;
ALTER TABLE audit ADD COLUMN exit TEXT;
CREATE UNIQUE INDEX audit_record_id ON audit (record_id);
CREATE TABLE cert_cutoffs (
    incarnation TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cutoff BIGINT NOT NULL
);
