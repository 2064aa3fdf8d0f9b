-- 9: the access policy: which nodes (by tag, or one node by id) each user may run on,
-- and with which isolation kinds ('[]': any); and whether a node's agent could read the
-- control plane's files (assumed until its next heartbeat says otherwise).
CREATE TABLE grants (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'node')),
    value TEXT NOT NULL,
    isolation TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, kind, value)
);
ALTER TABLE nodes ADD COLUMN shares_control INTEGER NOT NULL DEFAULT 1;
