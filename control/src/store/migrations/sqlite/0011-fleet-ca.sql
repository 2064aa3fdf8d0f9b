-- 11: the CA this fleet trusts (its public key), so a control plane started with another
-- CA key refuses rather than signing certificates no node accepts.
CREATE TABLE fleet_ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    public_key TEXT NOT NULL
);
