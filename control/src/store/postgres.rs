//! The registry on PostgreSQL, for several control planes on one database: every
//! decision that must hold across them (a token used once, the last admin kept, a
//! session placed once) is one statement or a transaction that locks what it reads.
//! Schema changes are numbered migrations in `openbox_schema`, applied under an advisory
//! lock so replicas starting together migrate once.

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use proto::api::{
    AuditEntry, EnrollTokenInfo, Grant, Heartbeat, MeshSettings, Platform, RevokedUser, SessionReport, Target, UserInfo,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Row};

use super::{
    Change, ChangeKind, EnrollTokenProblem, NodeRow, Result, SessionRow, StoreError, TokenCheck, User, WebSession,
    rules, tags_from, tags_json,
};

/// Connections kept open per control plane.
const POOL_SIZE: usize = 16;
/// Any number, as long as it is the same in every control plane ("openbox" in ASCII): the
/// migration lock.
const MIGRATION_LOCK: i64 = 0x006f_7065_6e62_6f78;

/// The schema's migrations, in order: each change's number (shared by both backends, see
/// `migrations/`) and its SQL.
pub(super) const MIGRATIONS: &[(u32, &str)] = &[
    (10, include_str!("migrations/postgres/0010-schema.sql")),
    (11, include_str!("migrations/postgres/0011-fleet-ca.sql")),
    (12, include_str!("migrations/postgres/0012-changes.sql")),
    (13, include_str!("migrations/postgres/0013-executions-and-cutoffs.sql")),
    (14, include_str!("migrations/postgres/0014-host-cert-expires.sql")),
];

/// Records that `user_id`'s certificates issued before `now` are no longer good (in the
/// caller's transaction).
async fn cut_off(c: &impl GenericClient, user_id: i64, now: u64) -> Result<()> {
    c.execute(
        "INSERT INTO cert_cutoffs (incarnation, name, cutoff) SELECT incarnation, name, $2 FROM users WHERE id = $1
         ON CONFLICT (incarnation) DO UPDATE SET name = excluded.name, cutoff = excluded.cutoff",
        &[&user_id, &int(now)],
    )
    .await?;
    Ok(())
}

/// The channel every logged change is announced on (in `log` and the statements that log
/// changes themselves), so that the other control planes on the database look at the log
/// at once.
const CHANGES_CHANNEL: &str = "openbox_changes";

/// Held from a change's numbering to its commit, so changes commit in the order of their
/// numbers: a reader that has seen change N never has N-1 appear behind it.
const LOG_LOCK: i64 = 0x006f_7065_6e62_6f79;

/// Appends a change to the log and announces it, at commit (call it in the transaction of
/// the write it describes).
async fn log(c: &impl GenericClient, change: &ChangeKind, now: u64) -> Result<()> {
    let (kind, node, user) = change.parts();
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK]).await?;
    c.execute(
        "WITH logged AS (INSERT INTO changes (at, kind, node_id, user_id) VALUES ($1, $2, $3, $4) RETURNING seq)
         SELECT pg_notify('openbox_changes', seq::TEXT) FROM logged",
        &[&int(now), &kind, &node, &user],
    )
    .await?;
    Ok(())
}

/// Times and counts are u64 here and BIGINT there.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn user_from(r: &Row) -> User {
    User { id: r.get(0), name: r.get(1), admin: r.get(2), incarnation: r.get(3) }
}

const NODE_COLUMNS: &str = "id, name, tags, os, arch, addr, host_key, secret_hash, last_seen, stopped, created_at, \
                            capabilities, mesh_addr, shares_control, host_cert_expires, listed_online";

fn node_from(r: &Row) -> NodeRow {
    NodeRow {
        id: r.get(0),
        name: r.get(1),
        tags: tags_from(r.get(2)),
        platform: Platform { os: r.get(3), arch: r.get(4) },
        addr: r.get(5),
        host_key: r.get(6),
        secret_hash: r.get(7),
        last_seen: r.get::<_, Option<i64>>(8).map(uint),
        stopped: r.get(9),
        created_at: uint(r.get(10)),
        capabilities: tags_from(r.get(11)),
        mesh_addr: r.get(12),
        shares_control: r.get(13),
        host_cert_expires: r.get::<_, Option<i64>>(14).map(uint),
        listed_online: r.get(15),
    }
}

const SESSION_COLUMNS: &str = "id, node_id, isolation, created_at, last_used, state";

fn session_from(r: &Row) -> SessionRow {
    SessionRow {
        id: r.get(0),
        node_id: r.get(1),
        isolation: r.get(2),
        created_at: uint(r.get(3)),
        last_used: uint(r.get(4)),
        state: r.get(5),
    }
}

/// A unique key broken by a concurrent insert becomes the conflict it is.
fn conflict(e: tokio_postgres::Error, refusal: impl FnOnce() -> StoreError) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) { refusal() } else { e.into() }
}

pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
    /// When nodes last beat (and the version they run), for heartbeats that changed
    /// nothing a node list shows: written together by the next sweep (see
    /// [`Postgres::mark_offline`]), one statement a second for all of them, and shown by
    /// this control plane's reads meanwhile.
    beats: std::sync::Mutex<HashMap<String, Beat>>,
}

/// A heartbeat not yet written: when, and the version the node runs.
#[derive(Default)]
struct Beat {
    at: u64,
    version: String,
}

/// Nodes' `last_seen` written by one statement, at most.
const BEATS_PER_STATEMENT: usize = 10_000;

type Client = deadpool_postgres::Object;

impl Postgres {
    /// Connects (the pool opens connections as they are needed) and brings the schema up
    /// to date.
    pub async fn connect(url: &str) -> Result<Postgres> {
        let config: tokio_postgres::Config = url.parse()?;
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager).max_size(POOL_SIZE).build().expect("a pool without timeouts builds");
        let db = Postgres { pool, config, beats: Default::default() };
        db.migrate().await?;
        Ok(db)
    }

    /// Wakes `wake` whenever a change is announced on the database, for as long as the
    /// control plane runs: a connection of its own that listens, made again when it breaks
    /// (and `wake` woken then, for what went by meanwhile).
    pub fn wake_on_changes(&self, wake: Arc<Notify>) {
        let config = self.config.clone();
        tokio::spawn(async move {
            loop {
                match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, mut connection)) => {
                        let notified = wake.clone();
                        let messages = tokio::spawn(async move {
                            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                            while let Some(message) = messages.next().await {
                                match message {
                                    Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                                    Ok(_) => {}
                                    Err(e) => {
                                        return tracing::debug!(error = %e, "the change listener's connection broke");
                                    }
                                }
                            }
                        });
                        match client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await {
                            Ok(()) => wake.notify_one(),
                            Err(e) => tracing::warn!(error = %e, "cannot listen for changes"),
                        }
                        let _ = messages.await;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot connect to listen for changes"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A connection of the pool for `migrate`.
    pub(super) async fn client_for_copy(&self) -> Result<Client> {
        self.client().await
    }

    async fn client(&self) -> Result<Client> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        // Quietly: "already exists, skipping" at every start would read as a problem.
        tx.batch_execute(
            "SET LOCAL client_min_messages TO warning; CREATE TABLE IF NOT EXISTS openbox_schema (version INTEGER NOT NULL)",
        )
        .await?;
        let version: i32 = match tx.query_opt("SELECT version FROM openbox_schema", &[]).await? {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO openbox_schema (version) VALUES (0)", &[]).await?;
                0
            }
        };
        let version = usize::try_from(version).unwrap_or(0);
        rules::schema_known(version, MIGRATIONS.len())?;
        for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(sql).await?;
            let v = i32::try_from(i + 1).expect("few migrations");
            tx.execute("UPDATE openbox_schema SET version = $1", &[&v]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn audit(&self, entries: &[AuditEntry], keep_since: u64) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO audit (at, \"user\", action, node_id, isolation, session, key_id, source, command_sha256,
                 command, detail, record_id, duration_ms, exit)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (record_id) DO NOTHING",
            )
            .await?;
        for e in entries {
            // An entry the node sent before (its reply was lost) is kept once.
            tx.execute(
                &insert,
                &[
                    &int(e.at),
                    &e.user,
                    &e.action,
                    &e.node_id,
                    &e.isolation,
                    &e.session,
                    &e.key_id,
                    &e.source,
                    &e.command_sha256,
                    &e.command,
                    &e.detail,
                    &e.record_id,
                    &e.duration_ms.map(int),
                    &e.exit,
                ],
            )
            .await?;
        }
        let forget = tx.prepare_cached("DELETE FROM audit WHERE at < $1").await?;
        tx.execute(&forget, &[&int(keep_since)]).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn audit_log(
        &self,
        user: Option<&str>,
        node: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT at, \"user\", action, node_id, isolation, session, key_id, source, command_sha256, command, detail,
                        record_id, duration_ms, exit
                 FROM audit
                 WHERE at >= $1 AND ($2::TEXT IS NULL OR \"user\" = $2)
                   AND ($3::TEXT IS NULL OR node_id = $3 OR node_id IN (SELECT id FROM nodes WHERE name = $3))
                 ORDER BY id DESC LIMIT $4",
                &[&int(since), &user, &node, &i64::from(limit)],
            )
            .await?;
        let mut entries: Vec<AuditEntry> = rows
            .iter()
            .map(|r| AuditEntry {
                at: uint(r.get(0)),
                user: r.get(1),
                action: r.get(2),
                node_id: r.get(3),
                isolation: r.get(4),
                session: r.get(5),
                key_id: r.get(6),
                source: r.get(7),
                command_sha256: r.get(8),
                command: r.get(9),
                detail: r.get(10),
                record_id: r.get(11),
                duration_ms: r.get::<_, Option<i64>>(12).map(uint),
                exit: r.get(13),
            })
            .collect();
        entries.reverse();
        Ok(entries)
    }

    pub async fn fleet_ca(&self) -> Result<Option<String>> {
        let row = self.client().await?.query_opt("SELECT public_key FROM fleet_ca WHERE id = 1", &[]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn pin_ca(&self, public_key: &str) -> Result<String> {
        let c = self.client().await?;
        c.execute("INSERT INTO fleet_ca (id, public_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING", &[&public_key])
            .await?;
        Ok(c.query_one("SELECT public_key FROM fleet_ca WHERE id = 1", &[]).await?.get(0))
    }

    pub async fn mesh(&self) -> Result<Option<MeshSettings>> {
        let row = self.client().await?.query_opt("SELECT control_url, auth_key FROM mesh WHERE id = 1", &[]).await?;
        Ok(row.map(|r| MeshSettings { control_url: r.get(0), auth_key: r.get(1) }))
    }

    pub async fn set_mesh(&self, mesh: &MeshSettings) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO mesh (id, control_url, auth_key) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET control_url = excluded.control_url, auth_key = excluded.auth_key",
                &[&mesh.control_url, &mesh.auth_key],
            )
            .await?;
        Ok(())
    }

    pub async fn user_count(&self) -> Result<u64> {
        let row = self.client().await?.query_one("SELECT COUNT(*) FROM users", &[]).await?;
        Ok(uint(row.get(0)))
    }

    pub async fn create_user(&self, name: &str, admin: bool, token_hash: &str, now: u64) -> Result<User> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let exists = || rules::user_exists(name);
        let incarnation = trust::token::random_id()[..16].to_owned();
        let row = tx
            .query_one(
                "INSERT INTO users (name, admin, created_at, incarnation) VALUES ($1, $2, $3, $4) RETURNING id",
                &[&name, &admin, &int(now), &incarnation],
            )
            .await
            .map_err(|e| conflict(e, exists))?;
        let id: i64 = row.get(0);
        tx.execute(
            "INSERT INTO tokens (hash, kind, user_id, created_at) VALUES ($1, 'login', $2, $3)",
            &[&token_hash, &id, &int(now)],
        )
        .await?;
        tx.commit().await?;
        Ok(User { id, name: name.to_owned(), admin, incarnation })
    }

    pub async fn add_login_token(&self, user: &str, token_hash: &str, now: u64) -> Result<()> {
        let c = self.client().await?;
        let id = user_id(&c, user).await?;
        c.execute(
            "INSERT INTO tokens (hash, kind, user_id, created_at) VALUES ($1, 'login', $2, $3)",
            &[&token_hash, &id, &int(now)],
        )
        .await?;
        Ok(())
    }

    pub async fn user_by_login_token(&self, token_hash: &str) -> Result<Option<User>> {
        let c = self.client().await?;
        let query = c
            .prepare_cached(
                "SELECT u.id, u.name, u.admin, u.incarnation FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.hash = $1 AND t.kind = 'login'",
            )
            .await?;
        Ok(c.query_opt(&query, &[&token_hash]).await?.as_ref().map(user_from))
    }

    pub async fn revoke_login_token(&self, token_hash: &str) -> Result<()> {
        self.client().await?.execute("DELETE FROM tokens WHERE hash = $1 AND kind = 'login'", &[&token_hash]).await?;
        Ok(())
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>> {
        let c = self.client().await?;
        let rows = c.query("SELECT id, name, admin, created_at FROM users ORDER BY name", &[]).await?;
        let mut users = Vec::with_capacity(rows.len());
        for r in rows {
            let grants = grants_shown(&c, r.get(0)).await?;
            users.push(UserInfo { name: r.get(1), admin: r.get(2), created_at: uint(r.get(3)), grants });
        }
        Ok(users)
    }

    pub async fn remove_user(&self, name: &str, now: u64) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Every admin row locked: two control planes removing two admins at once cannot
        // both see another one left.
        let admins = tx.query("SELECT name FROM users WHERE admin FOR UPDATE", &[]).await?;
        let row = tx.query_opt("SELECT admin, incarnation, id FROM users WHERE name = $1 FOR UPDATE", &[&name]).await?;
        rules::may_remove_user(name, row.as_ref().map(|r| r.get::<_, bool>(0)), admins.len())?;
        let row = row.expect("checked by the rule");
        let (incarnation, id): (String, i64) = (row.get(1), row.get(2));
        tx.execute("DELETE FROM users WHERE name = $1", &[&name]).await?;
        tx.execute(
            "INSERT INTO revoked_users (incarnation, name, revoked_at) VALUES ($1, $2, $3)
             ON CONFLICT (incarnation) DO UPDATE SET name = excluded.name, revoked_at = excluded.revoked_at",
            &[&incarnation, &name, &int(now)],
        )
        .await?;
        log(&tx, &ChangeKind::Policy(id), now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn revoked_users(&self, since: u64) -> Result<Vec<RevokedUser>> {
        let c = self.client().await?;
        let query = c.prepare_cached("SELECT name, incarnation FROM revoked_users WHERE revoked_at >= $1").await?;
        let rows = c.query(&query, &[&int(since)]).await?;
        Ok(rows.iter().map(|r| RevokedUser { name: r.get(0), incarnation: r.get(1) }).collect())
    }

    pub async fn grants(&self, user_id: i64) -> Result<Vec<Grant>> {
        grants(&self.client().await?, user_id).await
    }

    pub async fn put_grant(&self, user: &str, grant: &Grant, now: u64) -> Result<Vec<Grant>> {
        let mut c = self.client().await?;
        let id = user_id(&c, user).await?;
        let (kind, value) = grant.on.parts();
        let tx = c.transaction().await?;
        let earlier = tx
            .query_opt(
                "SELECT isolation FROM grants WHERE user_id = $1 AND kind = $2 AND value = $3 FOR UPDATE",
                &[&id, &kind, &value],
            )
            .await?
            .map(|r| r.get::<_, String>(0));
        let isolation = tags_json(&grant.isolation);
        tx.execute(
            "INSERT INTO grants (user_id, kind, value, isolation, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, kind, value) DO UPDATE SET isolation = excluded.isolation, created_at = excluded.created_at",
            &[&id, &kind, &value, &isolation, &int(now)],
        )
        .await?;
        // A grant changed may allow less than before: what it allowed is taken back.
        if rules::grant_narrowed(earlier.as_deref(), &isolation) {
            cut_off(&tx, id, now).await?;
        }
        log(&tx, &ChangeKind::Policy(id), now).await?;
        tx.commit().await?;
        grants_shown(&c, id).await
    }

    pub async fn remove_grant(&self, user: &str, on: &Target) -> Result<Vec<Grant>> {
        let mut c = self.client().await?;
        let id = user_id(&c, user).await?;
        let (kind, value) = on.parts();
        let tx = c.transaction().await?;
        let removed = tx
            .execute("DELETE FROM grants WHERE user_id = $1 AND kind = $2 AND value = $3", &[&id, &kind, &value])
            .await?;
        if removed == 0 {
            return Err(rules::no_grant(user, on));
        }
        let now = proto::time::now();
        cut_off(&tx, id, now).await?;
        log(&tx, &ChangeKind::Policy(id), now).await?;
        tx.commit().await?;
        grants_shown(&c, id).await
    }

    pub async fn cert_cutoffs(&self, since: u64) -> Result<Vec<proto::api::CertCutoff>> {
        let rows = self
            .client()
            .await?
            .query("SELECT name, incarnation, cutoff FROM cert_cutoffs WHERE cutoff >= $1", &[&int(since)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| proto::api::CertCutoff { name: r.get(0), incarnation: r.get(1), cutoff: uint(r.get(2)) })
            .collect())
    }

    pub async fn add_web_session(
        &self,
        hash: &str,
        user_id: i64,
        secret_hash: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<()> {
        let c = self.client().await?;
        // Expired ones go as new ones come: the table holds only live sessions.
        c.execute("DELETE FROM web_sessions WHERE expires_at <= $1", &[&int(now)]).await?;
        c.execute(
            "INSERT INTO web_sessions (hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&hash, &user_id, &secret_hash, &int(now), &int(expires_at)],
        )
        .await?;
        Ok(())
    }

    pub async fn web_session(&self, hash: &str, now: u64) -> Result<Option<WebSession>> {
        let c = self.client().await?;
        let query = c
            .prepare_cached(
                "SELECT u.id, u.name, u.admin, u.incarnation, w.csrf, w.expires_at
                 FROM web_sessions w JOIN users u ON u.id = w.user_id WHERE w.hash = $1 AND w.expires_at > $2",
            )
            .await?;
        let row = c.query_opt(&query, &[&hash, &int(now)]).await?;
        Ok(row.map(|r| WebSession { user: user_from(&r), secret_hash: r.get(4), expires_at: uint(r.get(5)) }))
    }

    pub async fn remove_web_session(&self, hash: &str) -> Result<()> {
        self.client().await?.execute("DELETE FROM web_sessions WHERE hash = $1", &[&hash]).await?;
        Ok(())
    }

    pub async fn add_web_link(&self, hash: &str, user_id: i64, now: u64, expires_at: u64) -> Result<()> {
        let c = self.client().await?;
        c.execute("DELETE FROM web_links WHERE expires_at <= $1", &[&int(now)]).await?;
        c.execute(
            "INSERT INTO web_links (hash, user_id, expires_at) VALUES ($1, $2, $3)",
            &[&hash, &user_id, &int(expires_at)],
        )
        .await?;
        Ok(())
    }

    pub async fn take_web_link(&self, hash: &str, now: u64) -> Result<Option<User>> {
        // Deleting is the taking: of two control planes, one gets the row.
        let row = self
            .client()
            .await?
            .query_opt(
                "WITH taken AS (DELETE FROM web_links WHERE hash = $1 RETURNING user_id, expires_at)
                 SELECT u.id, u.name, u.admin, u.incarnation FROM taken JOIN users u ON u.id = taken.user_id
                 WHERE taken.expires_at > $2",
                &[&hash, &int(now)],
            )
            .await?;
        Ok(row.as_ref().map(user_from))
    }

    pub async fn outstanding_enroll_tokens(&self, now: u64) -> Result<Vec<EnrollTokenInfo>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT substr(t.hash, 1, 12), t.tags, t.created_at, t.expires_at, COALESCE(u.name, '')
                 FROM tokens t LEFT JOIN users u ON u.id = t.user_id
                 WHERE t.kind = 'enroll' AND t.used_at IS NULL AND t.expires_at > $1 ORDER BY t.expires_at",
                &[&int(now)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| EnrollTokenInfo {
                id: r.get(0),
                tags: tags_from(r.get(1)),
                created_at: uint(r.get(2)),
                expires_at: uint(r.get(3)),
                created_by: r.get(4),
            })
            .collect())
    }

    pub async fn remove_enroll_token(&self, id: &str) -> Result<()> {
        let gone = self
            .client()
            .await?
            .execute(
                "DELETE FROM tokens WHERE kind = 'enroll' AND used_at IS NULL AND substr(hash, 1, 12) = $1",
                &[&id],
            )
            .await?;
        if gone == 0 {
            return Err(rules::no_unused_enroll_token(id));
        }
        Ok(())
    }

    pub async fn add_enroll_token(
        &self,
        token_hash: &str,
        user_id: i64,
        tags: &[String],
        now: u64,
        expires_at: u64,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO tokens (hash, kind, user_id, tags, created_at, expires_at) VALUES ($1, 'enroll', $2, $3, $4, $5)",
                &[&token_hash, &user_id, &tags_json(tags), &int(now), &int(expires_at)],
            )
            .await?;
        Ok(())
    }

    pub async fn check_enroll_token(&self, token_hash: &str, now: u64) -> Result<TokenCheck> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT tags, expires_at, used_at FROM tokens WHERE hash = $1 AND kind = 'enroll'",
                &[&token_hash],
            )
            .await?;
        let Some(row) = row else { return Ok(Err(EnrollTokenProblem::Unknown)) };
        let (tags, expires_at, used_at): (String, Option<i64>, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        Ok(rules::token_state(tags, expires_at.map(uint), used_at.is_some(), now))
    }

    pub async fn take_enroll_token(&self, token_hash: &str, now: u64) -> Result<TokenCheck> {
        // One statement: of any number of control planes taking it at once, one succeeds.
        let taken = self
            .client()
            .await?
            .query_opt(
                "UPDATE tokens SET used_at = $2
                 WHERE hash = $1 AND kind = 'enroll' AND used_at IS NULL AND (expires_at IS NULL OR expires_at > $2)
                 RETURNING tags",
                &[&token_hash, &int(now)],
            )
            .await?;
        match taken {
            Some(row) => Ok(Ok(tags_from(row.get(0)))),
            // Not taken: say why.
            None => Ok(Err(self.check_enroll_token(token_hash, now).await?.err().unwrap_or(EnrollTokenProblem::Used))),
        }
    }

    pub async fn release_enroll_token(&self, token_hash: &str) -> Result<()> {
        self.client()
            .await?
            .execute("UPDATE tokens SET used_at = NULL WHERE hash = $1 AND kind = 'enroll'", &[&token_hash])
            .await?;
        Ok(())
    }

    pub async fn insert_node(&self, mut node: NodeRow, exact_name: bool) -> Result<NodeRow> {
        let mut c = self.client().await?;
        let base = node.name.clone();
        // Another control plane may take the same free name at the same moment: pick again.
        for attempt in 0.. {
            // The names the rule may look at: this one and its suffixed forms.
            let like = format!("{}-%", base.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            let rows = c.query("SELECT name FROM nodes WHERE name = $1 OR name LIKE $2", &[&base, &like]).await?;
            let names: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            node.name = rules::node_name(&base, exact_name, |n| Ok(names.contains(n)))?;
            let tx = c.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO nodes (id, name, tags, os, arch, addr, host_key, secret_hash, last_seen, created_at,
                        capabilities, mesh_addr, shares_control, listed_online, host_cert_expires)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $9::BIGINT IS NOT NULL, $14)",
                    &[
                        &node.id,
                        &node.name,
                        &tags_json(&node.tags),
                        &node.platform.os,
                        &node.platform.arch,
                        &node.addr,
                        &node.host_key,
                        &node.secret_hash,
                        &node.last_seen.map(int),
                        &int(node.created_at),
                        &tags_json(&node.capabilities),
                        &node.mesh_addr,
                        &node.shares_control,
                        &node.host_cert_expires.map(int),
                    ],
                )
                .await;
            match inserted {
                Ok(_) => {
                    log(&tx, &ChangeKind::Node(node.id.clone()), node.created_at).await?;
                    tx.commit().await?;
                    node.listed_online = node.last_seen.is_some();
                    return Ok(node);
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) && !exact_name && attempt < 5 => continue,
                Err(e) => {
                    return Err(conflict(e, || rules::node_name_taken(&node.name)));
                }
            }
        }
        unreachable!("the loop returns")
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let c = self.client().await?;
        let query = c.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name")).await?;
        Ok(self.with_beats(c.query(&query, &[]).await?.iter().map(node_from).collect()))
    }

    pub async fn nodes_for(&self, target: &Target) -> Result<Vec<NodeRow>> {
        let c = self.client().await?;
        let tag = match target {
            Target::Node(n) => return Ok(self.with_beats(node(&c, n).await?.into_iter().collect())),
            Target::Tag(tag) => tag,
        };
        let query = c
            .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE tags LIKE $1 ESCAPE '\\' ORDER BY name"))
            .await?;
        let rows = c.query(&query, &[&super::tag_pattern(tag)]).await?;
        Ok(self.with_beats(rows.iter().map(node_from).filter(|n| n.tags.contains(tag)).collect()))
    }

    pub async fn node(&self, id_or_name: &str) -> Result<Option<NodeRow>> {
        let row = node(&self.client().await?, id_or_name).await?;
        Ok(self.with_beats(row.into_iter().collect()).pop())
    }

    pub async fn is_revoked(&self, id: &str, secret_hash: &str) -> Result<bool> {
        let c = self.client().await?;
        let query = c
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM revoked_nodes WHERE id = $1 AND secret_hash = $2 AND secret_hash != '')",
            )
            .await?;
        Ok(c.query_one(&query, &[&id, &secret_hash]).await?.get(0))
    }

    pub async fn record_heartbeat(
        &self,
        hb: &Heartbeat,
        unchanged: bool,
        shares_control: bool,
        now: u64,
    ) -> Result<bool> {
        // Most heartbeats change nothing a node list shows (as the row just read says):
        // those are not a transaction each (a row lock and a commit), nor even a read, and
        // join the next batch of beats.
        if unchanged {
            let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
            let beat = beats.entry(hb.node_id.clone()).or_default();
            if now >= beat.at {
                *beat = Beat { at: now, version: hb.version.clone() };
            }
            return Ok(false);
        }
        // Only kinds this control plane knows how to dispatch are kept.
        let caps = tags_json(&proto::api::known_capabilities(&hb.capabilities));
        let cert_expires = (hb.host_cert_valid_before > 0).then(|| int(hb.host_cert_valid_before));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // What a node list shows, before and after: a change there is logged.
        let shown =
            "addr, os, arch, capabilities, mesh_addr, shares_control, stopped, listed_online, host_cert_expires";
        let before = tx.prepare_cached(&format!("SELECT {shown} FROM nodes WHERE id = $1 FOR UPDATE")).await?;
        let update = tx
            .prepare_cached(&format!(
                "UPDATE nodes SET addr = $2, os = $3, arch = $4, version = $5, last_seen = $6, stopped = $7,
                    capabilities = $8, mesh_addr = $9, shares_control = $10, listed_online = NOT $7,
                    host_cert_expires = $11
                 WHERE id = $1 RETURNING {shown}"
            ))
            .await?;
        let Some(before) = tx.query_opt(&before, &[&hb.node_id]).await? else { return Ok(false) };
        let after = tx
            .query_one(
                &update,
                &[
                    &hb.node_id,
                    &hb.addr,
                    &hb.platform.os,
                    &hb.platform.arch,
                    &hb.version,
                    &int(now),
                    &hb.stopping,
                    &caps,
                    &hb.mesh_addr,
                    &shares_control,
                    &cert_expires,
                ],
            )
            .await?;
        let row = |r: &Row| {
            let text = |i| r.get::<_, Option<String>>(i);
            let flags = (r.get::<_, bool>(5), r.get::<_, bool>(6), r.get::<_, bool>(7));
            (text(0), text(1), text(2), text(3), text(4), flags, r.get::<_, Option<i64>>(8))
        };
        let changed = row(&before) != row(&after);
        if changed {
            log(&tx, &ChangeKind::Node(hb.node_id.clone()), now).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Writes the beats kept since the last call, a statement per [`BEATS_PER_STATEMENT`]
    /// nodes; `last_seen` only ever moves forward, whichever control plane wrote last.
    /// What could not be written is kept for the next call.
    async fn write_beats(&self, c: &Client) -> Result<()> {
        let mut beats: Vec<(String, Beat)> =
            std::mem::take(&mut *self.beats.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        if beats.is_empty() {
            return Ok(());
        }
        // In one order everywhere, so that two control planes writing at once wait for
        // each other rather than deadlock.
        beats.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let write = c
            .prepare_cached(
                "UPDATE nodes SET last_seen = beat.at, version = beat.version
                 FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[]) AS beat (id, at, version)
                 WHERE nodes.id = beat.id AND (nodes.last_seen IS NULL OR nodes.last_seen < beat.at)",
            )
            .await?;
        for (i, chunk) in beats.chunks(BEATS_PER_STATEMENT).enumerate() {
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
            let ats: Vec<i64> = chunk.iter().map(|(_, b)| int(b.at)).collect();
            let versions: Vec<&str> = chunk.iter().map(|(_, b)| b.version.as_str()).collect();
            if let Err(e) = c.execute(&write, &[&ids, &ats, &versions]).await {
                let mut kept = self.beats.lock().unwrap_or_else(|e| e.into_inner());
                for (id, beat) in beats.drain(i * BEATS_PER_STATEMENT..) {
                    let newer = kept.entry(id).or_default();
                    if beat.at > newer.at {
                        *newer = beat;
                    }
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Shows the beats not yet written in `rows`.
    fn with_beats(&self, mut rows: Vec<NodeRow>) -> Vec<NodeRow> {
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        if !beats.is_empty() {
            for row in &mut rows {
                if let Some(beat) = beats.get(&row.id) {
                    row.last_seen = Some(row.last_seen.map_or(beat.at, |t| t.max(beat.at)));
                }
            }
        }
        rows
    }

    pub async fn mark_offline(&self, cutoff: u64, now: u64) -> Result<bool> {
        let mut c = self.client().await?;
        // The beats kept since the last sweep first, or it would take their nodes for silent.
        self.write_beats(&c).await?;
        let tx = c.transaction().await?;
        let gone = tx
            .query(
                "UPDATE nodes SET listed_online = FALSE
                 WHERE listed_online AND (stopped OR last_seen IS NULL OR last_seen < $1) RETURNING id",
                &[&int(cutoff)],
            )
            .await?;
        for row in &gone {
            log(&tx, &ChangeKind::Node(row.get(0)), now).await?;
        }
        tx.commit().await?;
        Ok(!gone.is_empty())
    }

    pub async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>> {
        let c = self.client().await?;
        let query = c
            .prepare_cached("SELECT seq, kind, node_id, user_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
            .await?;
        let rows = c.query(&query, &[&seq, &i64::from(limit)]).await?;
        Ok(rows.iter().filter_map(|r| Change::from_parts(r.get(0), r.get::<_, &str>(1), r.get(2), r.get(3))).collect())
    }

    pub async fn change_range(&self) -> Result<(i64, i64)> {
        let c = self.client().await?;
        let query = c.prepare_cached("SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM changes").await?;
        let row = c.query_one(&query, &[]).await?;
        Ok((row.get(0), row.get(1)))
    }

    pub async fn forget_changes(&self, cutoff: u64) -> Result<()> {
        self.client()
            .await?
            .execute("DELETE FROM changes WHERE at < $1 AND seq < (SELECT MAX(seq) FROM changes)", &[&int(cutoff)])
            .await?;
        Ok(())
    }

    pub async fn update_node(&self, id: &str, name: Option<&str>, tags: &[String]) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if let Some(name) = name {
            let taken = || rules::node_name_taken(name);
            tx.execute("UPDATE nodes SET name = $2 WHERE id = $1", &[&id, &name])
                .await
                .map_err(|e| conflict(e, taken))?;
        }
        tx.execute("UPDATE nodes SET tags = $2 WHERE id = $1", &[&id, &tags_json(tags)]).await?;
        log(&tx, &ChangeKind::Node(id.to_owned()), proto::time::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_node(&self, id: &str, now: u64) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = tx.query_opt("DELETE FROM nodes WHERE id = $1 RETURNING host_key, secret_hash", &[&id]).await?;
        let row = row.ok_or_else(|| rules::no_node(id))?;
        let (host_key, secret_hash): (String, String) = (row.get(0), row.get(1));
        tx.execute(
            "INSERT INTO revoked_nodes (id, host_key, revoked_at, secret_hash) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET host_key = excluded.host_key, revoked_at = excluded.revoked_at,
                secret_hash = excluded.secret_hash",
            &[&id, &host_key, &int(now), &secret_hash],
        )
        .await?;
        tx.execute("DELETE FROM grants WHERE kind = 'node' AND value = $1", &[&id]).await?;
        log(&tx, &ChangeKind::NodeRemoved(id.to_owned()), now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn session(&self, user_id: i64, id: &str) -> Result<Option<SessionRow>> {
        let c = self.client().await?;
        let query =
            c.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 AND id = $2")).await?;
        Ok(c.query_opt(&query, &[&user_id, &id]).await?.as_ref().map(session_from))
    }

    pub async fn put_session(&self, user_id: i64, row: &SessionRow) -> Result<String> {
        let mut c = self.client().await?;
        let c = c.transaction().await?;
        let query = c
            .prepare_cached(
                "INSERT INTO sessions (user_id, id, node_id, isolation, created_at, last_used, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (user_id, id) DO UPDATE SET last_used = excluded.last_used
                 RETURNING node_id, xmax = 0",
            )
            .await?;
        let placed = c
            .query_one(
                &query,
                &[
                    &user_id,
                    &row.id,
                    &row.node_id,
                    &row.isolation,
                    &int(row.created_at),
                    &int(row.last_used),
                    &row.state,
                ],
            )
            .await?;
        // xmax is 0 on a row just inserted: the session was placed now.
        if placed.get::<_, bool>(1) {
            log(&c, &ChangeKind::Sessions, row.last_used).await?;
        }
        c.commit().await?;
        Ok(placed.get(0))
    }

    pub async fn list_sessions(&self, user_id: i64) -> Result<Vec<SessionRow>> {
        let c = self.client().await?;
        let query =
            c.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY id")).await?;
        Ok(c.query(&query, &[&user_id]).await?.iter().map(session_from).collect())
    }

    pub async fn remove_session(&self, user_id: i64, id: &str) -> Result<bool> {
        let mut c = self.client().await?;
        let c = c.transaction().await?;
        let removed = c.execute("DELETE FROM sessions WHERE user_id = $1 AND id = $2", &[&user_id, &id]).await? > 0;
        if removed {
            log(&c, &ChangeKind::Sessions, proto::time::now()).await?;
        }
        c.commit().await?;
        Ok(removed)
    }

    pub async fn apply_session_reports(&self, node_id: &str, reports: &[SessionReport]) -> Result<bool> {
        if reports.is_empty() {
            return Ok(false);
        }
        let mut c = self.client().await?;
        let c = c.transaction().await?;
        let key = "node_id = $1 AND id = $3 AND user_id = (SELECT id FROM users WHERE name = $2)";
        let state = c.prepare_cached(&format!("UPDATE sessions SET state = $4 WHERE {key} AND state != $4")).await?;
        let used =
            c.prepare_cached(&format!("UPDATE sessions SET last_used = GREATEST(last_used, $4) WHERE {key}")).await?;
        let mut changed = false;
        for r in reports {
            changed |= c.execute(&state, &[&node_id, &r.user, &r.id, &r.state]).await? > 0;
            c.execute(&used, &[&node_id, &r.user, &r.id, &int(r.last_used)]).await?;
        }
        if changed {
            log(&c, &ChangeKind::Sessions, proto::time::now()).await?;
        }
        c.commit().await?;
        Ok(changed)
    }
}

async fn user_id(c: &Client, name: &str) -> Result<i64> {
    let row = c.query_opt("SELECT id FROM users WHERE name = $1", &[&name]).await?;
    row.map(|r| r.get(0)).ok_or_else(|| rules::no_user(name))
}

async fn grants(c: &Client, user_id: i64) -> Result<Vec<Grant>> {
    let query =
        c.prepare_cached("SELECT kind, value, isolation FROM grants WHERE user_id = $1 ORDER BY kind, value").await?;
    let rows = c.query(&query, &[&user_id]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (kind, value): (String, String) = (r.get(0), r.get(1));
            let on = if kind == "tag" { Target::Tag(value) } else { Target::Node(value) };
            Grant { on, isolation: tags_from(r.get(2)) }
        })
        .collect())
}

/// A user's grants as people read them: a node grant naming the node's name.
async fn grants_shown(c: &Client, user_id: i64) -> Result<Vec<Grant>> {
    let mut shown = grants(c, user_id).await?;
    for g in &mut shown {
        if let Target::Node(id) = &g.on
            && let Some(n) = node(c, id).await?
        {
            g.on = Target::Node(n.name);
        }
    }
    Ok(shown)
}

async fn node(c: &Client, id_or_name: &str) -> Result<Option<NodeRow>> {
    let query = c
        .prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1"
        ))
        .await?;
    Ok(c.query_opt(&query, &[&id_or_name]).await?.as_ref().map(node_from))
}
