-- 11: the CA this fleet trusts.
CREATE TABLE fleet_ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    public_key TEXT NOT NULL
);
