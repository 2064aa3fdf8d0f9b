-- 13: what nodes report they ran (the audit's `exec` entries, each kept once by the
-- node's own id for it), and when each user's access was last narrowed: certificates
-- issued before then are refused by the nodes.
ALTER TABLE audit ADD COLUMN record_id TEXT;
ALTER TABLE audit ADD COLUMN duration_ms INTEGER;
ALTER TABLE audit ADD COLUMN exit TEXT;
CREATE UNIQUE INDEX audit_record_id ON audit (record_id);
CREATE TABLE cert_cutoffs (
    incarnation TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cutoff INTEGER NOT NULL
);
