//! The registry on SQLite, the default: one file, one writer at a time (a personal fleet
//! and a good deal more). Schema changes are numbered migrations tracked in
//! `PRAGMA user_version`.

use std::path::Path;
use std::sync::Mutex;

use proto::api::{Grant, Heartbeat, Platform, Target, UserInfo};

use super::{
    Change, ChangeKind, EnrollTokenProblem, NodeRow, SessionRow, StoreError, User, WebSession, rules, tags_from,
    tags_json,
};
use rusqlite::{Connection, OptionalExtension, params};

type Result<T> = std::result::Result<T, StoreError>;

/// The schema's migrations, in order: each change's number (shared by both backends, see
/// `migrations/`) and its SQL.
pub(super) const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("migrations/sqlite/0001-first-schema.sql")),
    (2, include_str!("migrations/sqlite/0002-sessions.sql")),
    (3, include_str!("migrations/sqlite/0003-capabilities.sql")),
    (4, include_str!("migrations/sqlite/0004-mesh-addr.sql")),
    (5, include_str!("migrations/sqlite/0005-mesh.sql")),
    (6, include_str!("migrations/sqlite/0006-revoked-node-secret.sql")),
    (7, include_str!("migrations/sqlite/0007-audit.sql")),
    (8, include_str!("migrations/sqlite/0008-incarnations.sql")),
    (9, include_str!("migrations/sqlite/0009-grants.sql")),
    (10, include_str!("migrations/sqlite/0010-web-sessions.sql")),
    (11, include_str!("migrations/sqlite/0011-fleet-ca.sql")),
    (12, include_str!("migrations/sqlite/0012-changes.sql")),
    (13, include_str!("migrations/sqlite/0013-executions-and-cutoffs.sql")),
    (14, include_str!("migrations/sqlite/0014-host-cert-expires.sql")),
];

/// Records that `user_id`'s certificates issued before `now` are no longer good (in the
/// caller's transaction).
fn cut_off(conn: &Connection, user_id: i64, now: u64) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO cert_cutoffs (incarnation, name, cutoff) SELECT incarnation, name, ?2 FROM users WHERE id = ?1",
        params![user_id, now],
    )?;
    Ok(())
}

/// Appends a change to the log (in the caller's transaction, when it has one).
fn log(conn: &Connection, change: &ChangeKind, now: u64) -> Result<()> {
    let (kind, node, user) = change.parts();
    conn.execute(
        "INSERT INTO changes (at, kind, node_id, user_id) VALUES (?1, ?2, ?3, ?4)",
        params![now, kind, node, user],
    )?;
    Ok(())
}

/// The tags of an enrollment token, or why it cannot be used.
fn usable_enroll_token(
    conn: &Connection,
    token_hash: &str,
    now: u64,
) -> Result<std::result::Result<Vec<String>, EnrollTokenProblem>> {
    let row: Option<(String, Option<u64>, Option<u64>)> = conn
        .query_row(
            "SELECT tags, expires_at, used_at FROM tokens WHERE hash = ?1 AND kind = 'enroll'",
            [token_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((tags, expires_at, used_at)) = row else {
        return Ok(Err(EnrollTokenProblem::Unknown));
    };
    Ok(rules::token_state(tags, expires_at, used_at.is_some(), now))
}

pub struct Sqlite {
    conn: Mutex<Connection>,
}

impl Sqlite {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Sqlite> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<Sqlite> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement the hot paths (heartbeats, dispatch, event streams) run, compiled once.
        conn.set_prepared_statement_cache_capacity(64);
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        rules::schema_known(version, MIGRATIONS.len())?;
        for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Sqlite { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent; keep serving.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- the audit log ----

    /// Records `e`, and forgets entries from before `keep_since`.
    pub fn audit(&self, entries: &[proto::api::AuditEntry], keep_since: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for e in entries {
            // An entry the node sent before (its reply was lost) is kept once.
            tx.execute(
                "INSERT OR IGNORE INTO audit (at, user, action, node_id, isolation, session, key_id, source, command_sha256,
                 command, detail, record_id, duration_ms, exit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    e.at,
                    e.user,
                    e.action,
                    e.node_id,
                    e.isolation,
                    e.session,
                    e.key_id,
                    e.source,
                    e.command_sha256,
                    e.command,
                    e.detail,
                    e.record_id,
                    e.duration_ms,
                    e.exit
                ],
            )?;
        }
        tx.execute("DELETE FROM audit WHERE at < ?1", [keep_since])?;
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` entries (oldest first) since `since`, by `user` and on `node` (an
    /// id, or the name of a node that still exists) when given.
    pub fn audit_log(
        &self,
        user: Option<&str>,
        node: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<proto::api::AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at, user, action, node_id, isolation, session, key_id, source, command_sha256, command, detail,
                    record_id, duration_ms, exit
             FROM audit
             WHERE at >= ?1 AND (?2 IS NULL OR user = ?2)
               AND (?3 IS NULL OR node_id = ?3 OR node_id IN (SELECT id FROM nodes WHERE name = ?3))
             ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![since, user, node, limit], |r| {
            Ok(proto::api::AuditEntry {
                at: r.get(0)?,
                user: r.get(1)?,
                action: r.get(2)?,
                node_id: r.get(3)?,
                isolation: r.get(4)?,
                session: r.get(5)?,
                key_id: r.get(6)?,
                source: r.get(7)?,
                command_sha256: r.get(8)?,
                command: r.get(9)?,
                detail: r.get(10)?,
                record_id: r.get(11)?,
                duration_ms: r.get(12)?,
                exit: r.get(13)?,
            })
        })?;
        let mut entries = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
    }

    pub fn fleet_ca(&self) -> Result<Option<String>> {
        Ok(self.conn().query_row("SELECT public_key FROM fleet_ca WHERE id = 1", [], |r| r.get(0)).optional()?)
    }

    pub fn pin_ca(&self, public_key: &str) -> Result<String> {
        let conn = self.conn();
        conn.execute("INSERT INTO fleet_ca (id, public_key) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING", [public_key])?;
        Ok(conn.query_row("SELECT public_key FROM fleet_ca WHERE id = 1", [], |r| r.get(0))?)
    }

    // ---- the fleet's tailnet ----

    /// The tailnet this control plane hands out, if it holds one.
    pub fn mesh(&self) -> Result<Option<proto::api::MeshSettings>> {
        Ok(self
            .conn()
            .query_row("SELECT control_url, auth_key FROM mesh WHERE id = 1", [], |r| {
                Ok(proto::api::MeshSettings { control_url: r.get(0)?, auth_key: r.get(1)? })
            })
            .optional()?)
    }

    /// Replaces the tailnet this control plane hands out.
    pub fn set_mesh(&self, mesh: &proto::api::MeshSettings) -> Result<()> {
        self.conn().execute(
            "INSERT INTO mesh (id, control_url, auth_key) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET control_url = excluded.control_url, auth_key = excluded.auth_key",
            [&mesh.control_url, &mesh.auth_key],
        )?;
        Ok(())
    }

    // ---- users and login tokens ----

    pub fn user_count(&self) -> Result<u64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
    }

    /// Creates a user together with its first login token (by hash).
    pub fn create_user(&self, name: &str, admin: bool, token_hash: &str, now: u64) -> Result<User> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM users WHERE name = ?1)", [name], |r| r.get(0))?;
        if exists {
            return Err(rules::user_exists(name));
        }
        let incarnation = trust::token::random_id()[..16].to_owned();
        tx.execute(
            "INSERT INTO users (name, admin, created_at, incarnation) VALUES (?1, ?2, ?3, ?4)",
            params![name, admin, now, incarnation],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO tokens (hash, kind, user_id, created_at) VALUES (?1, 'login', ?2, ?3)",
            params![token_hash, id, now],
        )?;
        tx.commit()?;
        Ok(User { id, name: name.to_owned(), admin, incarnation })
    }

    /// Adds another login token for an existing user.
    pub fn add_login_token(&self, user: &str, token_hash: &str, now: u64) -> Result<()> {
        let id = self.user_id(user)?;
        self.conn().execute(
            "INSERT INTO tokens (hash, kind, user_id, created_at) VALUES (?1, 'login', ?2, ?3)",
            params![token_hash, id, now],
        )?;
        Ok(())
    }

    pub fn user_by_login_token(&self, token_hash: &str) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT u.id, u.name, u.admin, u.incarnation FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.hash = ?1 AND t.kind = 'login'",
                [token_hash],
                |r| Ok(User { id: r.get(0)?, name: r.get(1)?, admin: r.get(2)?, incarnation: r.get(3)? }),
            )
            .optional()?)
    }

    pub fn revoke_login_token(&self, token_hash: &str) -> Result<()> {
        self.conn().execute("DELETE FROM tokens WHERE hash = ?1 AND kind = 'login'", [token_hash])?;
        Ok(())
    }

    pub fn list_users(&self) -> Result<Vec<UserInfo>> {
        let mut users: Vec<(i64, UserInfo)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached("SELECT id, name, admin, created_at FROM users ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                let info = UserInfo { name: r.get(1)?, admin: r.get(2)?, created_at: r.get(3)?, grants: Vec::new() };
                Ok((r.get(0)?, info))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id, info) in &mut users {
            info.grants = self.grants_shown(*id)?;
        }
        Ok(users.into_iter().map(|(_, info)| info).collect())
    }

    // ---- the access policy ----

    /// A user's grants, a node grant naming the node's id.
    pub fn grants(&self, user_id: i64) -> Result<Vec<Grant>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT kind, value, isolation FROM grants WHERE user_id = ?1 ORDER BY kind, value")?;
        let rows = stmt.query_map([user_id], |r| {
            let (kind, value): (String, String) = (r.get(0)?, r.get(1)?);
            let on = if kind == "tag" { Target::Tag(value) } else { Target::Node(value) };
            Ok(Grant { on, isolation: tags_from(r.get(2)?) })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A user's grants as people read them: a node grant naming the node's name.
    fn grants_shown(&self, user_id: i64) -> Result<Vec<Grant>> {
        let mut grants = self.grants(user_id)?;
        for g in &mut grants {
            if let Target::Node(id) = &g.on
                && let Some(node) = self.node(id)?
            {
                g.on = Target::Node(node.name);
            }
        }
        Ok(grants)
    }

    /// Grants `user` the nodes of a tag, or one node (by id), replacing an earlier grant on
    /// the same; returns the user's grants now.
    pub fn put_grant(&self, user: &str, grant: &Grant, now: u64) -> Result<Vec<Grant>> {
        let id = self.user_id(user)?;
        let (kind, value) = grant.on.parts();
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let earlier: Option<String> = tx
                .query_row(
                    "SELECT isolation FROM grants WHERE user_id = ?1 AND kind = ?2 AND value = ?3",
                    params![id, kind, value],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute(
                "INSERT OR REPLACE INTO grants (user_id, kind, value, isolation, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, kind, value, tags_json(&grant.isolation), now],
            )?;
            // A grant changed may allow less than before: what it allowed is taken back.
            if rules::grant_narrowed(earlier.as_deref(), &tags_json(&grant.isolation)) {
                cut_off(&tx, id, now)?;
            }
            log(&tx, &ChangeKind::Policy(id), now)?;
            tx.commit()?;
        }
        self.grants_shown(id)
    }

    /// Takes back a grant; returns the user's grants now.
    pub fn remove_grant(&self, user: &str, on: &Target) -> Result<Vec<Grant>> {
        let id = self.user_id(user)?;
        let (kind, value) = on.parts();
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let removed = tx.execute(
                "DELETE FROM grants WHERE user_id = ?1 AND kind = ?2 AND value = ?3",
                params![id, kind, value],
            )?;
            if removed == 0 {
                return Err(rules::no_grant(user, on));
            }
            let now = proto::time::now();
            cut_off(&tx, id, now)?;
            log(&tx, &ChangeKind::Policy(id), now)?;
            tx.commit()?;
        }
        self.grants_shown(id)
    }

    /// Users whose access was narrowed since `since`, and when: nodes refuse their
    /// certificates issued before then.
    pub fn cert_cutoffs(&self, since: u64) -> Result<Vec<proto::api::CertCutoff>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name, incarnation, cutoff FROM cert_cutoffs WHERE cutoff >= ?1")?;
        let rows = stmt.query_map([since], |r| {
            Ok(proto::api::CertCutoff { name: r.get(0)?, incarnation: r.get(1)?, cutoff: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn user_id(&self, name: &str) -> Result<i64> {
        let id: Option<i64> =
            self.conn().query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        id.ok_or_else(|| rules::no_user(name))
    }

    /// Removes a user and every token it had; the last admin cannot be removed.
    pub fn remove_user(&self, name: &str, now: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(bool, String, i64)> = tx
            .query_row("SELECT admin, incarnation, id FROM users WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let admins: i64 = tx.query_row("SELECT COUNT(*) FROM users WHERE admin = 1", [], |r| r.get(0))?;
        rules::may_remove_user(name, row.as_ref().map(|(admin, _, _)| *admin), admins as usize)?;
        tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        if let Some((_, incarnation, id)) = row {
            tx.execute(
                "INSERT OR REPLACE INTO revoked_users (incarnation, name, revoked_at) VALUES (?1, ?2, ?3)",
                params![incarnation, name, now],
            )?;
            log(&tx, &ChangeKind::Policy(id), now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Users removed since `since`, for agents to refuse and to end what they left.
    pub fn revoked_users(&self, since: u64) -> Result<Vec<proto::api::RevokedUser>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name, incarnation FROM revoked_users WHERE revoked_at >= ?1")?;
        let rows =
            stmt.query_map([since], |r| Ok(proto::api::RevokedUser { name: r.get(0)?, incarnation: r.get(1)? }))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    // ---- the dashboard's browser sessions ----

    pub fn add_web_session(
        &self,
        hash: &str,
        user_id: i64,
        secret_hash: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<()> {
        let conn = self.conn();
        // Expired ones go as new ones come: the table holds only live sessions.
        conn.execute("DELETE FROM web_sessions WHERE expires_at <= ?1", [now])?;
        conn.execute(
            "INSERT INTO web_sessions (hash, user_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, user_id, secret_hash, now, expires_at],
        )?;
        Ok(())
    }

    /// A live browser session.
    pub fn web_session(&self, hash: &str, now: u64) -> Result<Option<WebSession>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT u.id, u.name, u.admin, u.incarnation, w.csrf, w.expires_at
                 FROM web_sessions w JOIN users u ON u.id = w.user_id WHERE w.hash = ?1 AND w.expires_at > ?2",
                params![hash, now],
                |r| {
                    Ok(WebSession {
                        user: User { id: r.get(0)?, name: r.get(1)?, admin: r.get(2)?, incarnation: r.get(3)? },
                        secret_hash: r.get(4)?,
                        expires_at: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn remove_web_session(&self, hash: &str) -> Result<()> {
        self.conn().execute("DELETE FROM web_sessions WHERE hash = ?1", [hash])?;
        Ok(())
    }

    pub fn add_web_link(&self, hash: &str, user_id: i64, now: u64, expires_at: u64) -> Result<()> {
        let conn = self.conn();
        conn.execute("DELETE FROM web_links WHERE expires_at <= ?1", [now])?;
        conn.execute(
            "INSERT INTO web_links (hash, user_id, expires_at) VALUES (?1, ?2, ?3)",
            params![hash, user_id, expires_at],
        )?;
        Ok(())
    }

    /// Uses up a one-time link: its user, if it was live (it works once either way).
    pub fn take_web_link(&self, hash: &str, now: u64) -> Result<Option<User>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let user = tx
            .query_row(
                "SELECT u.id, u.name, u.admin, u.incarnation FROM web_links l JOIN users u ON u.id = l.user_id
                 WHERE l.hash = ?1 AND l.expires_at > ?2",
                params![hash, now],
                |r| Ok(User { id: r.get(0)?, name: r.get(1)?, admin: r.get(2)?, incarnation: r.get(3)? }),
            )
            .optional()?;
        tx.execute("DELETE FROM web_links WHERE hash = ?1", [hash])?;
        tx.commit()?;
        Ok(user)
    }

    // ---- enrollment tokens ----

    /// Enrollment tokens that can still be used, soonest to expire first; each is known by
    /// the start of its hash (the token itself is not kept).
    pub fn outstanding_enroll_tokens(&self, now: u64) -> Result<Vec<proto::api::EnrollTokenInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT substr(t.hash, 1, 12), t.tags, t.created_at, t.expires_at, COALESCE(u.name, '')
             FROM tokens t LEFT JOIN users u ON u.id = t.user_id
             WHERE t.kind = 'enroll' AND t.used_at IS NULL AND t.expires_at > ?1 ORDER BY t.expires_at",
        )?;
        let rows = stmt.query_map([now], |r| {
            Ok(proto::api::EnrollTokenInfo {
                id: r.get(0)?,
                tags: tags_from(r.get(1)?),
                created_at: r.get(2)?,
                expires_at: r.get(3)?,
                created_by: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Withdraws an unused enrollment token, by the start of its hash.
    pub fn remove_enroll_token(&self, id: &str) -> Result<()> {
        let gone = self.conn().execute(
            "DELETE FROM tokens WHERE kind = 'enroll' AND used_at IS NULL AND substr(hash, 1, 12) = ?1",
            [id],
        )?;
        if gone == 0 {
            return Err(rules::no_unused_enroll_token(id));
        }
        Ok(())
    }

    pub fn add_enroll_token(
        &self,
        token_hash: &str,
        user_id: i64,
        tags: &[String],
        now: u64,
        expires_at: u64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tokens (hash, kind, user_id, tags, created_at, expires_at) VALUES (?1, 'enroll', ?2, ?3, ?4, ?5)",
            params![token_hash, user_id, tags_json(tags), now, expires_at],
        )?;
        Ok(())
    }

    /// The tags of an enrollment token that can still be used, without using it.
    pub fn check_enroll_token(
        &self,
        token_hash: &str,
        now: u64,
    ) -> Result<std::result::Result<Vec<String>, EnrollTokenProblem>> {
        usable_enroll_token(&self.conn(), token_hash, now)
    }

    /// Marks an enrollment token used and returns its tags, all in one transaction, so a
    /// token enrolls at most one node.
    pub fn take_enroll_token(
        &self,
        token_hash: &str,
        now: u64,
    ) -> Result<std::result::Result<Vec<String>, EnrollTokenProblem>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let tags = match usable_enroll_token(&tx, token_hash, now)? {
            Ok(tags) => tags,
            Err(problem) => return Ok(Err(problem)),
        };
        tx.execute("UPDATE tokens SET used_at = ?2 WHERE hash = ?1", params![token_hash, now])?;
        tx.commit()?;
        Ok(Ok(tags))
    }

    pub fn release_enroll_token(&self, token_hash: &str) -> Result<()> {
        self.conn().execute("UPDATE tokens SET used_at = NULL WHERE hash = ?1 AND kind = 'enroll'", [token_hash])?;
        Ok(())
    }

    // ---- nodes ----

    /// Inserts a node; when `exact_name` is false and the name is taken, a numeric suffix
    /// keeps it unique.
    pub fn insert_node(&self, mut node: NodeRow, exact_name: bool) -> Result<NodeRow> {
        let mut conn = self.conn();
        let conn = conn.transaction()?;
        let taken = |name: &str| -> Result<bool> {
            Ok(conn.query_row("SELECT EXISTS(SELECT 1 FROM nodes WHERE name = ?1)", [name], |r| r.get(0))?)
        };
        node.name = rules::node_name(&node.name, exact_name, taken)?;
        conn.execute(
            "INSERT INTO nodes (id, name, tags, os, arch, addr, host_key, secret_hash, last_seen, created_at, capabilities, mesh_addr,
                shares_control, listed_online, host_cert_expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?9 IS NOT NULL, ?14)",
            params![
                node.id,
                node.name,
                tags_json(&node.tags),
                node.platform.os,
                node.platform.arch,
                node.addr,
                node.host_key,
                node.secret_hash,
                node.last_seen,
                node.created_at,
                tags_json(&node.capabilities),
                node.mesh_addr,
                node.shares_control,
                node.host_cert_expires
            ],
        )?;
        log(&conn, &ChangeKind::Node(node.id.clone()), node.created_at)?;
        conn.commit()?;
        node.listed_online = node.last_seen.is_some();
        Ok(node)
    }

    fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
        Ok(NodeRow {
            id: r.get(0)?,
            name: r.get(1)?,
            tags: tags_from(r.get(2)?),
            platform: Platform { os: r.get(3)?, arch: r.get(4)? },
            addr: r.get(5)?,
            host_key: r.get(6)?,
            secret_hash: r.get(7)?,
            last_seen: r.get(8)?,
            stopped: r.get(9)?,
            created_at: r.get(10)?,
            capabilities: tags_from(r.get(11)?),
            mesh_addr: r.get(12)?,
            shares_control: r.get(13)?,
            host_cert_expires: r.get(14)?,
            listed_online: r.get(15)?,
        })
    }

    const NODE_COLUMNS: &'static str = "id, name, tags, os, arch, addr, host_key, secret_hash, last_seen, stopped, created_at, capabilities, mesh_addr, shares_control, host_cert_expires, listed_online";

    pub fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {} FROM nodes ORDER BY name", Self::NODE_COLUMNS))?;
        let rows = stmt.query_map([], Self::node_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn nodes_for(&self, target: &Target) -> Result<Vec<NodeRow>> {
        let tag = match target {
            Target::Node(n) => return Ok(self.node(n)?.into_iter().collect()),
            Target::Tag(tag) => tag,
        };
        let conn = self.conn();
        let sql = format!("SELECT {} FROM nodes WHERE tags LIKE ?1 ESCAPE '\\' ORDER BY name", Self::NODE_COLUMNS);
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([super::tag_pattern(tag)], Self::node_from_row)?;
        let rows: Vec<NodeRow> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(rows.into_iter().filter(|n| n.tags.contains(tag)).collect())
    }

    /// A node by id, or else by name.
    pub fn node(&self, id_or_name: &str) -> Result<Option<NodeRow>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM nodes WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
            Self::NODE_COLUMNS
        );
        Ok(conn.prepare_cached(&sql)?.query_row([id_or_name], Self::node_from_row).optional()?)
    }

    /// Whether `id` names a node that was removed, asked with that node's own secret.
    pub fn is_revoked(&self, id: &str, secret_hash: &str) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS(SELECT 1 FROM revoked_nodes WHERE id = ?1 AND secret_hash = ?2 AND secret_hash != '')",
            [id, secret_hash],
            |r| r.get(0),
        )?)
    }

    /// Records a heartbeat, and whether (by the host it reports) the node shares the
    /// control plane's files.
    pub fn record_heartbeat(&self, hb: &Heartbeat, _unchanged: bool, shares_control: bool, now: u64) -> Result<bool> {
        // Only kinds this control plane knows how to dispatch are kept.
        let caps = tags_json(&proto::api::known_capabilities(&hb.capabilities));
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // What a node list shows, before and after: a change there is logged; a heartbeat
        // that only moves last_seen is not.
        let shown =
            "SELECT addr, os, arch, capabilities, mesh_addr, shares_control, stopped, listed_online, host_cert_expires
                     FROM nodes WHERE id = ?1";
        let read = |tx: &rusqlite::Transaction<'_>| {
            tx.prepare_cached(shown)?
                .query_row([&hb.node_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, bool>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, bool>(7)?,
                        r.get::<_, Option<u64>>(8)?,
                    ))
                })
                .optional()
        };
        let before = read(&tx)?;
        tx.prepare_cached(
            "UPDATE nodes SET addr = ?2, os = ?3, arch = ?4, version = ?5, last_seen = ?6, stopped = ?7, capabilities = ?8,
             mesh_addr = ?9, shares_control = ?10, listed_online = NOT ?7, host_cert_expires = ?11 WHERE id = ?1",
        )?
        .execute(params![
                hb.node_id,
                hb.addr,
                hb.platform.os,
                hb.platform.arch,
                hb.version,
                now,
                hb.stopping,
                caps,
                hb.mesh_addr,
                shares_control,
                (hb.host_cert_valid_before > 0).then_some(hb.host_cert_valid_before)
            ])?;
        let changed = before.is_some() && before != read(&tx)?;
        if changed {
            log(&tx, &ChangeKind::Node(hb.node_id.clone()), now)?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Nodes silent since before `cutoff` (or stopped) that were last announced online are
    /// announced offline, each once.
    pub fn mark_offline(&self, cutoff: u64, now: u64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let gone: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "UPDATE nodes SET listed_online = 0
                 WHERE listed_online AND (stopped OR last_seen IS NULL OR last_seen < ?1) RETURNING id",
            )?;
            stmt.query_map([cutoff], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        let any = !gone.is_empty();
        for id in gone {
            log(&tx, &ChangeKind::Node(id), now)?;
        }
        tx.commit()?;
        Ok(any)
    }

    /// Renames and retags a node; returns the updated row.
    pub fn update_node(&self, id: &str, name: Option<&str>, tags: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let conn = conn.transaction()?;
        if let Some(name) = name {
            let clash: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM nodes WHERE name = ?1 AND id != ?2)",
                params![name, id],
                |r| r.get(0),
            )?;
            if clash {
                return Err(rules::node_name_taken(name));
            }
            conn.execute("UPDATE nodes SET name = ?2 WHERE id = ?1", params![id, name])?;
        }
        conn.execute("UPDATE nodes SET tags = ?2 WHERE id = ?1", params![id, tags_json(tags)])?;
        log(&conn, &ChangeKind::Node(id.to_owned()), proto::time::now())?;
        conn.commit()?;
        Ok(())
    }

    /// Removes a node and records its identity as revoked, in one transaction.
    pub fn remove_node(&self, id: &str, now: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(String, String)> = tx
            .query_row("SELECT host_key, secret_hash FROM nodes WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (host_key, secret_hash) = row.ok_or_else(|| rules::no_node(id))?;
        tx.execute(
            "INSERT OR REPLACE INTO revoked_nodes (id, host_key, revoked_at, secret_hash) VALUES (?1, ?2, ?3, ?4)",
            params![id, host_key, now, secret_hash],
        )?;
        tx.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM grants WHERE kind = 'node' AND value = ?1", [id])?;
        log(&tx, &ChangeKind::NodeRemoved(id.to_owned()), now)?;
        tx.commit()?;
        Ok(())
    }
}

impl Sqlite {
    fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
        Ok(SessionRow {
            id: r.get(0)?,
            node_id: r.get(1)?,
            isolation: r.get(2)?,
            created_at: r.get(3)?,
            last_used: r.get(4)?,
            state: r.get(5)?,
        })
    }

    pub fn session(&self, user_id: i64, id: &str) -> Result<Option<SessionRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, node_id, isolation, created_at, last_used, state FROM sessions WHERE user_id = ?1 AND id = ?2",
                params![user_id, id],
                Self::session_from_row,
            )
            .optional()?)
    }

    /// Records a session's first use on a node (or a use after it was removed).
    /// Records a session's use; on its first use, places it on `row.node_id`. Returns the
    /// node it is on: another first use may have placed it a moment earlier.
    pub fn put_session(&self, user_id: i64, row: &SessionRow) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let placed: Option<String> = tx
            .query_row("SELECT node_id FROM sessions WHERE user_id = ?1 AND id = ?2", params![user_id, row.id], |r| {
                r.get(0)
            })
            .optional()?;
        let node = tx.query_row(
            "INSERT INTO sessions (user_id, id, node_id, isolation, created_at, last_used, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user_id, id) DO UPDATE SET last_used = excluded.last_used
             RETURNING node_id",
            params![user_id, row.id, row.node_id, row.isolation, row.created_at, row.last_used, row.state],
            |r| r.get(0),
        )?;
        if placed.is_none() {
            log(&tx, &ChangeKind::Sessions, row.last_used)?;
        }
        tx.commit()?;
        Ok(node)
    }

    pub fn list_sessions(&self, user_id: i64) -> Result<Vec<SessionRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, node_id, isolation, created_at, last_used, state FROM sessions WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([user_id], Self::session_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn remove_session(&self, user_id: i64, id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = tx.execute("DELETE FROM sessions WHERE user_id = ?1 AND id = ?2", params![user_id, id])? > 0;
        if removed {
            log(&tx, &ChangeKind::Sessions, proto::time::now())?;
        }
        tx.commit()?;
        Ok(removed)
    }

    pub fn apply_session_reports(&self, node_id: &str, reports: &[proto::api::SessionReport]) -> Result<bool> {
        if reports.is_empty() {
            return Ok(false);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut changed = false;
        for r in reports {
            let key = "node_id = ?1 AND id = ?3 AND user_id = (SELECT id FROM users WHERE name = ?2)";
            changed |= tx.execute(
                &format!("UPDATE sessions SET state = ?4 WHERE {key} AND state != ?4"),
                params![node_id, r.user, r.id, r.state],
            )? > 0;
            tx.execute(
                &format!("UPDATE sessions SET last_used = MAX(last_used, ?4) WHERE {key}"),
                params![node_id, r.user, r.id, r.last_used],
            )?;
        }
        if changed {
            log(&tx, &ChangeKind::Sessions, proto::time::now())?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Changes after `seq`, oldest first, at most `limit`.
    pub fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT seq, kind, node_id, user_id FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![seq, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        let rows: Vec<(i64, String, Option<String>, Option<i64>)> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(rows.into_iter().filter_map(|(seq, kind, node, user)| Change::from_parts(seq, &kind, node, user)).collect())
    }

    /// The oldest change still kept and the newest (0 and 0 before the first).
    pub fn change_range(&self) -> Result<(i64, i64)> {
        Ok(self.conn().query_row("SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM changes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?)
    }

    /// Forgets changes from before `cutoff`, keeping the newest (it says where the log is).
    pub fn forget_changes(&self, cutoff: u64) -> Result<()> {
        self.conn().execute("DELETE FROM changes WHERE at < ?1 AND seq < (SELECT MAX(seq) FROM changes)", [cutoff])?;
        Ok(())
    }
}
