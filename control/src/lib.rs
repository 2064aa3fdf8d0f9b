//! The openbox control plane: users and login tokens, the node registry and its
//! heartbeats, enrollment, and the SSH certificate authority that signs a short-lived user
//! certificate for every dispatch.
//!
//! It brokers identity and steps aside: command bytes never pass through it. It knows
//! nothing about SSH sessions or how agents run commands.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind port 0.

mod api;
mod store;

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
    /// A node whose last heartbeat is older than this many seconds is shown offline.
    pub offline_after_secs: u64,
}

/// What request handlers share.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub ca: Ca,
}

/// Loads the CA key from `path`, or creates it there (mode 0600) on first start.
pub fn load_or_create_ca(path: &Path) -> anyhow::Result<Ca> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ca::from_openssh(&text)
            .with_context(|| format!("reading the CA key {}", path.display())),
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
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// On an empty registry, creates the admin user and returns its one-time login token.
pub fn bootstrap_admin(store: &Store, admin: &str) -> anyhow::Result<Option<trust::Secret>> {
    if store.user_count()? > 0 {
        return Ok(None);
    }
    let token = trust::token::generate(trust::token::LOGIN_PREFIX);
    store.create_user(admin, true, &trust::token::hash(token.expose()), now())?;
    Ok(Some(token))
}

/// Mints an extra login token for an existing user (for an admin who lost theirs).
pub fn new_login_token(store: &Store, user: &str) -> anyhow::Result<trust::Secret> {
    let token = trust::token::generate(trust::token::LOGIN_PREFIX);
    store.add_login_token(user, &trust::token::hash(token.expose()), now())?;
    Ok(token)
}

/// Serves the HTTP API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The default file locations, under the control directory of [`paths`].
pub fn default_db() -> PathBuf {
    paths::control_dir().join("openbox.db")
}

pub fn default_ca() -> PathBuf {
    paths::control_dir().join("ca_key")
}
