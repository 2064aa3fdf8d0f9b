-- 3: what isolation kinds each node can serve, as its heartbeats say.
ALTER TABLE nodes ADD COLUMN capabilities TEXT NOT NULL DEFAULT '["native"]';
