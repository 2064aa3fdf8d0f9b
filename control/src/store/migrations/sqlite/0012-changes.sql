-- 12: the registry's changes, numbered: what event streams send and resume from, and how
-- control planes sharing a database learn of each other's changes; and whether a node
-- was last announced online, so that its going offline is announced once.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    node_id TEXT,
    user_id INTEGER
);
ALTER TABLE nodes ADD COLUMN listed_online INTEGER NOT NULL DEFAULT 0;
