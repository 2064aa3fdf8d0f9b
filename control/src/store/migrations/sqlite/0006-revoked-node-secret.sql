-- 6: a removed node's secret, so only that node learns it was removed.
ALTER TABLE revoked_nodes ADD COLUMN secret_hash TEXT NOT NULL DEFAULT '';
