//! What the control plane's own tests start from: an `App` on a fresh SQLite registry,
//! with its admin, and nodes put straight into the registry.

use std::sync::Arc;

use crate::store::{Database, NodeRow, User};
use crate::{App, Config, Store};

/// An app on a fresh registry, the admin's login token, and the directory holding it.
pub async fn app() -> (Arc<App>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Database::Sqlite(dir.path().join("db"))).await.unwrap();
    let admin = crate::bootstrap_admin(&store, "admin").await.unwrap().unwrap().expose().to_owned();
    let config = Config {
        public_url: "http://127.0.0.1:7683".into(),
        fingerprint: None,
        offline_after_secs: 30,
        user_cert_ttl_secs: 300,
        audit_retention_secs: 3600,
        audit_commands: false,
        metrics_token: None,
        mesh_api_key: None,
        mcp_dir: None,
    };
    (App::new(config, store, trust::Ca::generate()).await, admin, dir)
}

/// Puts a node in the registry, seen `age` seconds ago.
pub async fn add_node(app: &App, id: &str, tags: &[&str], age: u64) {
    let row = NodeRow {
        id: id.into(),
        name: id.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        platform: proto::api::Platform::this_machine(),
        addr: "127.0.0.1:1".into(),
        mesh_addr: None,
        host_key: "ssh-ed25519 AAAA".into(),
        secret_hash: "h".into(),
        last_seen: Some(crate::now() - age),
        stopped: false,
        created_at: 1,
        capabilities: vec!["native".into()],
        shares_control: false,
        host_cert_expires: None,
        listed_online: false,
    };
    app.store.insert_node(row, true).await.unwrap();
}

/// A user who is not an admin.
pub async fn user(app: &App, name: &str) -> User {
    app.store.create_user(name, false, &format!("{name}-hash"), 1).await.unwrap()
}
