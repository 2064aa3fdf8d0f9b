-- 7: the audit log.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    node_id TEXT,
    isolation TEXT,
    session TEXT,
    key_id TEXT,
    source TEXT,
    command_sha256 TEXT,
    command TEXT,
    detail TEXT
);
CREATE INDEX audit_at ON audit (at);
