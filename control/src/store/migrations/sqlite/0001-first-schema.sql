-- 1: the first schema.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('login', 'enroll')),
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    tags TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    used_at INTEGER
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    addr TEXT NOT NULL,
    host_key TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    last_seen INTEGER,
    stopped INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE revoked_nodes (
    id TEXT PRIMARY KEY,
    host_key TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
);
