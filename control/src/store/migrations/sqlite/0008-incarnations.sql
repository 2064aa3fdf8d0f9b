-- 8: each user's incarnation (a name removed and added again is another user), bound
-- into its certificates; removed users, told to agents so they end what is left.
ALTER TABLE users ADD COLUMN incarnation TEXT NOT NULL DEFAULT '';
UPDATE users SET incarnation = lower(hex(randomblob(8))) WHERE incarnation = '';
CREATE TABLE revoked_users (
    incarnation TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
);
