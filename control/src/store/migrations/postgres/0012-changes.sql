-- 12: the registry's changes; the sweep for silent nodes reads an index of the ones
-- still announced online.
CREATE TABLE changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    node_id TEXT,
    user_id BIGINT
);
CREATE INDEX changes_at ON changes (at);
ALTER TABLE nodes ADD COLUMN listed_online BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX nodes_listed_online ON nodes (last_seen) WHERE listed_online;
