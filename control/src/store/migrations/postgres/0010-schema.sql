-- 10: the schema as SQLite's migrations 1 to 10 left it, in one.
CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    admin BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    incarnation TEXT NOT NULL
);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('login', 'enroll')),
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    tags TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    used_at BIGINT
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
    last_seen BIGINT,
    stopped BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    capabilities TEXT NOT NULL DEFAULT '["native"]',
    mesh_addr TEXT,
    shares_control BOOLEAN NOT NULL DEFAULT TRUE
);
CREATE TABLE revoked_nodes (
    id TEXT PRIMARY KEY,
    host_key TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    secret_hash TEXT NOT NULL DEFAULT ''
);
CREATE TABLE sessions (
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    isolation TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX sessions_node ON sessions (node_id);
CREATE TABLE mesh (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    control_url TEXT NOT NULL,
    auth_key TEXT NOT NULL
);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    "user" TEXT NOT NULL,
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
CREATE TABLE revoked_users (
    incarnation TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE TABLE grants (
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'node')),
    value TEXT NOT NULL,
    isolation TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, kind, value)
);
CREATE TABLE web_sessions (
    hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE web_links (
    hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
