//! The registry: users, hashed tokens, the access policy, nodes, sessions, browser
//! sessions and the audit log. One interface, two backends: SQLite (the default, one file)
//! and PostgreSQL (several control planes on one database), chosen by `--db`.

pub mod migrate;
mod postgres;
mod rules;
mod sqlite;

use std::path::{Path, PathBuf};

use proto::api::{
    AuditEntry, EnrollTokenInfo, Grant, Heartbeat, MeshSettings, Node, Platform, RevokedUser, SessionReport, Target,
    UserInfo,
};

pub use postgres::Postgres;
pub use sqlite::Sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An enrollment token's tags, or why it cannot be used.
pub type TokenCheck = std::result::Result<Vec<String>, EnrollTokenProblem>;

/// Where the registry lives, as `--db` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// `sqlite:PATH`, or a plain path.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…` (libpq's URL form).
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Database, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a file, as in sqlite:/var/lib/openbox/openbox.db".into());
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let config =
                text.parse::<tokio_postgres::Config>().map_err(|e| format!("{}: {e}", Database::redact(text)))?;
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                return Err("this version speaks to PostgreSQL without TLS, so sslmode=require cannot be met; reach \
                            the database over a Unix socket (?host=/var/run/postgresql) or a private network"
                    .into());
            }
            return Ok(Database::Postgres(text.to_owned()));
        }
        // Anything else with a scheme is a URL this control plane does not speak, not a
        // file to create (a directory named "mysql:" helps no one).
        if let Some((scheme, _)) = text.split_once(':')
            && !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !Path::new(text).exists()
        {
            return Err(format!(
                "{scheme}: is not a database this control plane speaks; give a file (sqlite:PATH or a plain \
                 path) or postgres://USER@HOST/DB"
            ));
        }
        if text.is_empty() {
            return Err("give a file (sqlite:PATH or a plain path) or postgres://USER@HOST/DB".into());
        }
        Ok(Database::Sqlite(PathBuf::from(text)))
    }
}

impl Database {
    /// The URL with any password hidden, for messages and logs.
    pub fn redact(url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
        let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority = match authority.rsplit_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((name, _)) => format!("{name}:***@{host}"),
                None => format!("{user}@{host}"),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) if query.contains("password=") => format!("{path}?…"),
            _ => tail.to_owned(),
        };
        format!("{scheme}://{authority}{tail}")
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&Database::redact(url)),
        }
    }
}

/// A session in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub node_id: String,
    pub isolation: String,
    pub created_at: u64,
    pub last_used: u64,
    pub state: String,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub admin: bool,
    /// Unique to this user for its whole life: a name removed and added again gets another.
    pub incarnation: String,
}

/// A browser logged in to the dashboard.
pub struct WebSession {
    pub user: User,
    /// The SHA-256 of the session secret every request with its cookie must carry.
    pub secret_hash: String,
    pub expires_at: u64,
}

/// A node as stored, with what the API does not show.
#[derive(Clone, Debug)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub platform: Platform,
    pub addr: String,
    pub mesh_addr: Option<String>,
    pub host_key: String,
    pub secret_hash: String,
    pub last_seen: Option<u64>,
    pub stopped: bool,
    pub created_at: u64,
    /// Isolation kinds the node reported it can serve.
    pub capabilities: Vec<String>,
    /// Its agent could read the control plane's files (see [`Node::shares_control`]).
    pub shares_control: bool,
    /// When its host certificate ends (see [`Node::host_cert_expires`]).
    pub host_cert_expires: Option<u64>,
    /// Announced online in the change log, and not yet offline (kept by the store).
    pub listed_online: bool,
}

impl NodeRow {
    /// Whether heartbeat `hb` (from a node that does or does not share the control plane's
    /// files) leaves what a node list shows of this row as it is.
    pub fn shows_same_after(&self, hb: &Heartbeat, shares_control: bool) -> bool {
        self.addr == hb.addr
            && self.platform == hb.platform
            && self.capabilities == proto::api::known_capabilities(&hb.capabilities)
            && self.mesh_addr == hb.mesh_addr
            && self.shares_control == shares_control
            && self.stopped == hb.stopping
            && self.listed_online != hb.stopping
            && self.host_cert_expires == (hb.host_cert_valid_before > 0).then_some(hb.host_cert_valid_before)
    }

    pub fn to_api(&self, now: u64, offline_after: u64) -> Node {
        let online = !self.stopped && self.last_seen.is_some_and(|t| now.saturating_sub(t) <= offline_after);
        Node {
            id: self.id.clone(),
            name: self.name.clone(),
            tags: self.tags.clone(),
            platform: self.platform.clone(),
            addr: self.addr.clone(),
            mesh_addr: self.mesh_addr.clone(),
            online,
            last_seen: self.last_seen,
            created_at: self.created_at,
            capabilities: self.capabilities.clone(),
            shares_control: self.shares_control,
            host_cert_expires: self.host_cert_expires,
        }
    }
}

/// Why an enrollment token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum EnrollTokenProblem {
    Unknown,
    Used,
    Expired,
}

/// One numbered change to the registry, from the log every control plane on the database
/// reads: event streams send them (and resume from their numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A node joined, changed what a node list shows, or went online or offline.
    Node(String),
    /// A node was removed.
    NodeRemoved(String),
    /// A user's grants changed (or the user was removed): what they may see changed.
    Policy(i64),
    /// A session was placed, ended or removed.
    Sessions,
}

impl ChangeKind {
    /// As the log keeps it: kind, node, user.
    fn parts(&self) -> (&'static str, Option<&str>, Option<i64>) {
        match self {
            ChangeKind::Node(id) => ("node", Some(id), None),
            ChangeKind::NodeRemoved(id) => ("node_removed", Some(id), None),
            ChangeKind::Policy(user) => ("policy", None, Some(*user)),
            ChangeKind::Sessions => ("sessions", None, None),
        }
    }
}

impl Change {
    /// A logged change; one of a kind this version does not know is skipped.
    fn from_parts(seq: i64, kind: &str, node: Option<String>, user: Option<i64>) -> Option<Change> {
        let kind = match (kind, node, user) {
            ("node", Some(id), _) => ChangeKind::Node(id),
            ("node_removed", Some(id), _) => ChangeKind::NodeRemoved(id),
            ("policy", _, Some(user)) => ChangeKind::Policy(user),
            ("sessions", _, _) => ChangeKind::Sessions,
            _ => return None,
        };
        Some(Change { seq, kind })
    }
}

/// A LIKE pattern matching a JSON list that holds `tag` (to be checked exactly after).
fn tag_pattern(tag: &str) -> String {
    let quoted = serde_json::to_string(tag).expect("a string serializes");
    let escaped = quoted.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

/// Tags and isolation kinds are kept as JSON lists in both backends.
fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("a list of strings serializes")
}

fn tags_from(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// The registry, on one backend or the other.
pub enum Store {
    Sqlite(Sqlite),
    Postgres(Box<Postgres>),
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(db: &Database) -> Result<Store> {
        Ok(match db {
            Database::Sqlite(path) => Store::Sqlite(Sqlite::open(path)?),
            Database::Postgres(url) => Store::Postgres(Box::new(Postgres::connect(url).await?)),
        })
    }

    /// Wakes `wake` when another control plane on the database logs a change (SQLite has
    /// one control plane: its own changes wake it directly).
    pub fn wake_on_changes(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        if let Store::Postgres(db) = self {
            db.wake_on_changes(wake);
        }
    }
}

/// Each call goes to the backend in use (SQLite's calls are short and local, and run in
/// place; PostgreSQL's are awaited).
macro_rules! both {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret> {
                    match self {
                        Store::Sqlite(db) => db.$name($($arg),*),
                        Store::Postgres(db) => db.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

both! {
    /// The public key of the CA this fleet trusts, once recorded.
    fn fleet_ca(&self) -> Option<String>;
    /// The public key of the CA this fleet trusts: `public_key`, if none was recorded yet.
    fn pin_ca(&self, public_key: &str) -> String;

    /// Records `entries` (in one transaction; an entry whose `record_id` is already
    /// there is kept once), and forgets entries from before `keep_since`.
    fn audit(&self, entries: &[AuditEntry], keep_since: u64) -> ();
    /// The newest `limit` entries (oldest first) since `since`, by `user` and on `node` (an
    /// id, or the name of a node that still exists) when given.
    fn audit_log(&self, user: Option<&str>, node: Option<&str>, since: u64, limit: u32) -> Vec<AuditEntry>;

    /// The tailnet this control plane hands out, if it holds one.
    fn mesh(&self) -> Option<MeshSettings>;
    /// Replaces the tailnet this control plane hands out.
    fn set_mesh(&self, mesh: &MeshSettings) -> ();

    fn user_count(&self) -> u64;
    /// Creates a user together with its first login token (by hash).
    fn create_user(&self, name: &str, admin: bool, token_hash: &str, now: u64) -> User;
    /// Adds another login token for an existing user.
    fn add_login_token(&self, user: &str, token_hash: &str, now: u64) -> ();
    fn user_by_login_token(&self, token_hash: &str) -> Option<User>;
    fn revoke_login_token(&self, token_hash: &str) -> ();
    fn list_users(&self) -> Vec<UserInfo>;
    /// Removes a user and every token it had; the last admin cannot be removed.
    fn remove_user(&self, name: &str, now: u64) -> ();
    /// Users removed since `since`, for agents to refuse and to end what they left.
    fn revoked_users(&self, since: u64) -> Vec<RevokedUser>;

    /// A user's grants, a node grant naming the node's id.
    fn grants(&self, user_id: i64) -> Vec<Grant>;
    /// Grants `user` the nodes of a tag, or one node (by id), replacing an earlier grant on
    /// the same; returns the user's grants now (a node grant naming the node).
    fn put_grant(&self, user: &str, grant: &Grant, now: u64) -> Vec<Grant>;
    /// Takes back a grant; returns the user's grants now.
    fn remove_grant(&self, user: &str, on: &Target) -> Vec<Grant>;
    /// Users whose access was narrowed (a grant taken back or changed) since `since`, and
    /// when: nodes refuse their certificates issued before then.
    fn cert_cutoffs(&self, since: u64) -> Vec<proto::api::CertCutoff>;

    fn add_web_session(&self, hash: &str, user_id: i64, secret_hash: &str, now: u64, expires_at: u64) -> ();
    /// A live browser session.
    fn web_session(&self, hash: &str, now: u64) -> Option<WebSession>;
    fn remove_web_session(&self, hash: &str) -> ();
    fn add_web_link(&self, hash: &str, user_id: i64, now: u64, expires_at: u64) -> ();
    /// Uses up a one-time link: its user, if it was live (it works once either way).
    fn take_web_link(&self, hash: &str, now: u64) -> Option<User>;

    /// Enrollment tokens that can still be used, soonest to expire first; each is known by
    /// the start of its hash (the token itself is not kept).
    fn outstanding_enroll_tokens(&self, now: u64) -> Vec<EnrollTokenInfo>;
    /// Withdraws an unused enrollment token, by the start of its hash.
    fn remove_enroll_token(&self, id: &str) -> ();
    fn add_enroll_token(&self, token_hash: &str, user_id: i64, tags: &[String], now: u64, expires_at: u64) -> ();
    /// The tags of an enrollment token that can still be used, without using it.
    fn check_enroll_token(&self, token_hash: &str, now: u64) -> TokenCheck;
    /// Marks an enrollment token used and returns its tags, atomically: a token enrolls at
    /// most one node, however many control planes share the database.
    fn take_enroll_token(&self, token_hash: &str, now: u64) -> TokenCheck;

    /// Makes a taken enrollment token usable again (the node it was taken for could not be
    /// added).
    fn release_enroll_token(&self, token_hash: &str) -> ();
    /// Inserts a node; when `exact_name` is false and the name is taken, a numeric suffix
    /// keeps it unique.
    fn insert_node(&self, node: NodeRow, exact_name: bool) -> NodeRow;
    fn list_nodes(&self) -> Vec<NodeRow>;
    /// The nodes `target` names: the node (by id, or else by name), or those carrying the tag.
    fn nodes_for(&self, target: &Target) -> Vec<NodeRow>;
    /// A node by id, or else by name.
    fn node(&self, id_or_name: &str) -> Option<NodeRow>;
    /// Whether `id` names a node that was removed, asked with that node's own secret.
    fn is_revoked(&self, id: &str, secret_hash: &str) -> bool;
    /// Records a heartbeat, and whether (by the host it reports) the node shares the
    /// control plane's files; `unchanged`: by the node's row as the caller read it just
    /// before, the beat changes nothing a node list shows ([`NodeRow::shows_same_after`]).
    /// Returns whether that changed what a node list shows (and so was logged).
    fn record_heartbeat(&self, hb: &Heartbeat, unchanged: bool, shares_control: bool, now: u64) -> bool;
    /// Nodes silent since before `cutoff` (or stopped) that were last announced online
    /// are announced offline (logged), each once however many control planes sweep.
    /// Returns whether any was.
    fn mark_offline(&self, cutoff: u64, now: u64) -> bool;
    /// Logged changes after `seq`, oldest first, at most `limit`.
    fn changes_since(&self, seq: i64, limit: u32) -> Vec<Change>;
    /// The oldest change still kept and the newest (0 and 0 before the first).
    fn change_range(&self) -> (i64, i64);
    /// Forgets changes from before `cutoff`, keeping the newest.
    fn forget_changes(&self, cutoff: u64) -> ();
    /// Renames and retags a node.
    fn update_node(&self, id: &str, name: Option<&str>, tags: &[String]) -> ();
    /// Removes a node and records its identity as revoked, in one transaction.
    fn remove_node(&self, id: &str, now: u64) -> ();

    fn session(&self, user_id: i64, id: &str) -> Option<SessionRow>;
    /// Records a session's use; on its first use, places it on `row.node_id`. Returns the
    /// node it is on: another first use may have placed it a moment earlier.
    fn put_session(&self, user_id: i64, row: &SessionRow) -> String;
    fn list_sessions(&self, user_id: i64) -> Vec<SessionRow>;
    fn remove_session(&self, user_id: i64, id: &str) -> bool;
    /// Applies what a node reported about its sessions (by user name); reports for
    /// sessions the directory does not hold on that node are ignored. Returns whether any
    /// session's state changed (a use alone does not count).
    fn apply_session_reports(&self, node_id: &str, reports: &[SessionReport]) -> bool;
}

#[cfg(test)]
mod tests;
