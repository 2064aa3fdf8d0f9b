-- 5: the fleet's tailnet, handed to nodes and users (the auth key is a secret).
CREATE TABLE mesh (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    control_url TEXT NOT NULL,
    auth_key TEXT NOT NULL
);
