//! The openbox control plane: users and login tokens, the node registry and its
//! heartbeats, enrollment, and the SSH certificate authority that signs a short-lived user
//! certificate for every dispatch.
//!
//! It brokers identity and steps aside: command bytes never pass through it — except for
//! the dashboard's console (`handlers::console`), where it runs one command on the caller's behalf
//! with a key and certificate of its own for that call. It knows nothing of how agents
//! run commands. It also serves the dashboard's pages (`web`).
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind port 0.

mod access;
mod audit;
mod auth;
mod changes;
mod coordination;
mod enrollment;
mod handlers;
mod http;
pub mod https;
pub mod mcp;
pub mod mesh;
mod metrics;
mod placement;
mod refusal;
mod router;
pub mod store;
#[cfg(test)]
mod testing;
mod web;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
pub use store::{Store, StoreError};
use trust::Ca;

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The URL people and nodes use to reach this control plane (shown in printed commands).
    pub public_url: String,
    /// The fingerprint of its TLS key that clients pin (`SHA256:…`), when it serves HTTPS.
    pub fingerprint: Option<String>,
    /// A node whose last heartbeat is older than this many seconds is shown offline.
    pub offline_after_secs: u64,
    /// How long a user certificate minted for a dispatch stays valid.
    pub user_cert_ttl_secs: u64,
    /// How long the audit log keeps an entry.
    pub audit_retention_secs: u64,
    /// Whether the audit log keeps command lines (else only their SHA-256).
    pub audit_commands: bool,
    /// The token that lets a scraper read `/metrics` from elsewhere than this machine.
    pub metrics_token: Option<String>,
    /// An API key for the fleet's tailnet's coordination server (Headscale's), with which
    /// each laptop and node gets a one-time key of its own (see `coordination`).
    pub mesh_api_key: Option<trust::Secret>,
    /// Where the MCP servers run for users (`/mcp`, see [`mcp`]) keep their state; `None`:
    /// `/mcp` is not served.
    pub mcp_dir: Option<PathBuf>,
}

/// Changes an event stream may fall behind by before it is sent the whole list again.
const UPDATE_BACKLOG: usize = 4096;

/// What request handlers share.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub ca: Ca,
    /// This machine and the control plane's user, to tell the nodes that share its files.
    pub host: proto::api::AgentHost,
    /// The current node list, pushed to every open `/v1/events` stream when it changes.
    registry: tokio::sync::watch::Sender<Vec<proto::api::Node>>,
    /// Ticks when a session is placed, ends or is removed, so that event streams send
    /// their caller's session list again.
    sessions: tokio::sync::watch::Sender<()>,
    /// Set when shutdown begins, so that endless event streams end and let it finish.
    closing: tokio::sync::watch::Sender<bool>,
    /// Each change to the registry, as the change log tells it (see [`changes`]).
    updates: tokio::sync::broadcast::Sender<Arc<changes::Update>>,
    /// The newest change published.
    latest: std::sync::atomic::AtomicI64,
    /// Wakes the change follower: a change was made here, or announced by the database.
    wake: Arc<tokio::sync::Notify>,
    pub(crate) metrics: metrics::Metrics,
    /// The coordination server's API, when the control plane holds a key for it.
    coordination: Option<coordination::Coordination>,
    /// The MCP servers run for users behind `/mcp`.
    pub(crate) mcp: mcp::Gateway,
    /// Counts the policy changes published (a user removed, a grant changed).
    policy_changes: std::sync::atomic::AtomicU64,
    /// What every heartbeat's reply tells alike, as last read (see [`App::bulletin`]).
    bulletin: std::sync::Mutex<Option<Arc<Bulletin>>>,
    /// Nodes as last read for their heartbeats (see [`App::known_node`]).
    known_nodes: std::sync::Mutex<std::collections::HashMap<String, Arc<store::NodeRow>>>,
}

/// What every node is told in its heartbeat's reply: users removed lately, and users
/// whose certificates from before a time are no longer good.
pub(crate) struct Bulletin {
    pub revoked_users: Vec<proto::api::RevokedUser>,
    pub cert_cutoffs: Vec<proto::api::CertCutoff>,
    /// The second it was read, and the policy changes published by then.
    read_at: (u64, u64),
}

impl App {
    pub async fn new(config: Config, store: Store, ca: Ca) -> Arc<App> {
        let (sessions, _) = tokio::sync::watch::channel(());
        let (closing, _) = tokio::sync::watch::channel(false);
        let host = proto::api::AgentHost { machine: paths::machine(), uid: rustix::process::geteuid().as_raw() };
        // Streams start from here; what came before is in the node list they are sent first.
        let latest = match store.change_range().await {
            Ok((_, newest)) => newest,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change log; following it from its start");
                0
            }
        };
        // The node list now (read after that point, so it holds every change up to it);
        // from here on each change patches it.
        let t = now();
        let nodes = match store.list_nodes().await {
            Ok(rows) => rows.iter().map(|n| n.to_api(t, config.offline_after_secs)).collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not list nodes for the registry feed");
                Vec::new()
            }
        };
        let (registry, _) = tokio::sync::watch::channel(nodes);
        let (updates, _) = tokio::sync::broadcast::channel(UPDATE_BACKLOG);
        let wake = Arc::new(tokio::sync::Notify::new());
        store.wake_on_changes(wake.clone());
        let latest = std::sync::atomic::AtomicI64::new(latest);
        let metrics = metrics::Metrics::default();
        let coordination = match (&config.mesh_api_key, store.mesh().await) {
            (Some(key), Ok(Some(mesh))) => match coordination::Coordination::new(&mesh.control_url, key.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot use the tailnet's coordination server; its reusable key goes to admins only");
                    None
                }
            },
            _ => None,
        };
        let config_mcp_dir = config.mcp_dir.clone();
        Arc::new(App {
            config,
            store,
            ca,
            host,
            registry,
            sessions,
            closing,
            updates,
            latest,
            wake,
            metrics,
            coordination,
            mcp: mcp::Gateway::new(config_mcp_dir),
            policy_changes: Default::default(),
            bulletin: Default::default(),
            known_nodes: Default::default(),
        })
    }

    /// Takes one node's change into the node list (kept in name order): each change costs
    /// a node, not the whole registry read again.
    pub(crate) fn patch_registry(&self, id: &str, node: Option<&proto::api::Node>) {
        self.registry.send_if_modified(|list| {
            let at = list.iter().position(|n| n.id == id);
            match (at, node) {
                (Some(i), Some(node)) if list[i] == *node => false,
                (Some(i), None) => {
                    list.remove(i);
                    true
                }
                (at, Some(node)) => {
                    if let Some(i) = at {
                        list.remove(i);
                    }
                    let to = list.partition_point(|n| n.name < node.name);
                    list.insert(to, node.clone());
                    true
                }
                (None, None) => false,
            }
        });
    }

    /// Node `id` as its heartbeats are checked against: kept from the last read, so that a
    /// heartbeat costs no read of the database. The change log's follower forgets a node
    /// whenever it is changed or removed through any control plane (see
    /// [`App::forget_node`]), so what is kept is never older than what the follower has
    /// published.
    pub(crate) async fn known_node(&self, id: &str) -> Result<Option<Arc<store::NodeRow>>, StoreError> {
        if let Some(row) = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(Some(row.clone()));
        }
        let read_at = self.latest.load(std::sync::atomic::Ordering::Acquire);
        let Some(row) = self.store.node(id).await?.map(Arc::new) else { return Ok(None) };
        let mut known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
        // Kept only when no change was published meanwhile: the row may predate it, and
        // the follower may have forgotten the node before this could keep it.
        if row.id == id && self.latest.load(std::sync::atomic::Ordering::Acquire) == read_at {
            known.insert(row.id.clone(), row.clone());
        }
        Ok(Some(row))
    }

    /// Forgets what was kept of node `id` (called after the change is published).
    pub(crate) fn forget_node(&self, id: &str) {
        self.known_nodes.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// What every heartbeat's reply tells, read from the database at most once a second
    /// and again as soon as a policy change is published: thousands of heartbeats a
    /// second would otherwise each read the same two lists.
    pub(crate) async fn bulletin(&self, revocations_kept_secs: u64) -> Result<Arc<Bulletin>, StoreError> {
        let t = now();
        let read_at = (t, self.policy_changes.load(std::sync::atomic::Ordering::Acquire));
        if let Some(b) = &*self.bulletin.lock().unwrap_or_else(|e| e.into_inner())
            && b.read_at == read_at
        {
            return Ok(b.clone());
        }
        let bulletin = Arc::new(Bulletin {
            revoked_users: self.store.revoked_users(t.saturating_sub(revocations_kept_secs)).await?,
            // Narrowed lately enough that a certificate from before may still be valid.
            cert_cutoffs: self
                .store
                .cert_cutoffs(t.saturating_sub(self.config.user_cert_ttl_secs + 2 * proto::cert::CLOCK_SKEW_SECS))
                .await?,
            read_at,
        });
        *self.bulletin.lock().unwrap_or_else(|e| e.into_inner()) = Some(bulletin.clone());
        Ok(bulletin)
    }

    /// Says a change was logged here: the follower reads the log at once.
    pub(crate) fn changed(&self) {
        // A removal or a narrowed grant made here is told from the next heartbeat on, not
        // only once the follower has published it.
        *self.bulletin.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.wake.notify_one();
    }

    /// Every registry change from now on, and the newest one published so far.
    pub(crate) fn subscribe_updates(&self) -> (tokio::sync::broadcast::Receiver<Arc<changes::Update>>, i64) {
        let rx = self.updates.subscribe();
        (rx, self.latest.load(std::sync::atomic::Ordering::Acquire))
    }

    /// What `user` may run where, as their grants say now.
    pub(crate) async fn access<'a>(&self, user: &'a store::User) -> Result<access::Access<'a>, StoreError> {
        let grants = if user.admin { Vec::new() } else { self.store.grants(user.id).await? };
        Ok(access::Access::new(user, grants))
    }

    /// Whether an agent that reports `host` could read this control plane's files.
    pub(crate) fn shares_control(&self, host: Option<&proto::api::AgentHost>) -> bool {
        access::shares_control(&self.host, host)
    }

    pub fn subscribe_registry(&self) -> tokio::sync::watch::Receiver<Vec<proto::api::Node>> {
        self.registry.subscribe()
    }

    pub fn subscribe_sessions(&self) -> tokio::sync::watch::Receiver<()> {
        self.sessions.subscribe()
    }

    /// Completes when the control plane starts shutting down.
    pub fn closing(&self) -> impl Future<Output = ()> + use<> {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

/// Loads the CA key from `path`, or creates it there (mode 0600) on first start.
pub fn load_or_create_ca(path: &Path) -> anyhow::Result<Ca> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ca::from_openssh(&text).with_context(|| format!("reading the CA key {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ca = Ca::generate();
            paths::write_private(path, ca.to_openssh()?.expose().as_bytes())
                .with_context(|| format!("writing the CA key {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new certificate authority");
            Ok(ca)
        }
        Err(e) => Err(e).with_context(|| format!("reading the CA key {}", path.display())),
    }
}

/// Seconds since the Unix epoch.
pub use proto::time::now;

/// On an empty registry, creates the admin user and returns its one-time login token.
pub async fn bootstrap_admin(store: &Store, admin: &str) -> anyhow::Result<Option<trust::Secret>> {
    if store.user_count().await? > 0 {
        return Ok(None);
    }
    let token = trust::token::generate(trust::token::LOGIN_PREFIX);
    match store.create_user(admin, true, &trust::token::hash(token.expose()), now()).await {
        Ok(_) => Ok(Some(token)),
        // Another control plane on the same database made it a moment ago.
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Mints an extra login token for an existing user (for an admin who lost theirs).
pub async fn new_login_token(store: &Store, user: &str) -> Result<trust::Secret, StoreError> {
    let token = trust::token::generate(trust::token::LOGIN_PREFIX);
    store.add_login_token(user, &trust::token::hash(token.expose()), now()).await?;
    Ok(token)
}

/// Serves the API on `listener` (HTTPS with `tls`) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    tls: Option<Arc<tls::rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Nodes go offline by staying silent; notice that within a second. Changes made
    // through any control plane on the database reach this one's event streams.
    let sweeper = tokio::spawn(changes::sweep(app.clone()));
    app.mcp.revoke_earlier(&app).await;
    let follower = tokio::spawn(changes::follow(app.clone()));
    let closing = app.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    http::serve(listener, router::router(app), tls, shutdown).await;
    sweeper.abort();
    follower.abort();
    Ok(())
}

/// The default file locations, under the control directory of [`paths`].
pub fn default_db() -> PathBuf {
    paths::control_db()
}

pub fn default_ca() -> PathBuf {
    paths::control_ca_key()
}
