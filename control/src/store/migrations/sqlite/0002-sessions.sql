-- 2: the session directory.
CREATE TABLE sessions (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    isolation TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
);
