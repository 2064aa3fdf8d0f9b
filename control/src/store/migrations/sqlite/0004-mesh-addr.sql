-- 4: where a node is on the tailnet.
ALTER TABLE nodes ADD COLUMN mesh_addr TEXT;
