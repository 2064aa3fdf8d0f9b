//! The tailnet node openboxd holds for its user, so that every call after the first
//! reaches tailnet nodes as fast as nodes on the LAN. Which tailnet: `openbox daemon
//! --mesh-control URL`, else `OPENBOX_MESH_CONTROL` in the environment openboxd starts
//! with (the CLI's, when the CLI starts it), else the one remembered in the config dir —
//! given once, or handed out by the control plane at login — so a restarted openboxd
//! rejoins as the same tailnet node.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::watch;

/// How long one try at joining may take before calls that need the tailnet give up
/// (unless `--mesh-timeout` or `OPENBOX_MESH_TIMEOUT` says otherwise).
const UP: Duration = Duration::from_secs(30);
/// How long one try at joining may take, when the flag is not given.
pub const TIMEOUT_ENV: &str = "OPENBOX_MESH_TIMEOUT";
/// How long to wait before trying to join again after a failure, at most.
const RETRY_AT_MOST: Duration = Duration::from_secs(60);
/// Asks for a tailnet without naming one: join the remembered one, or fail.
pub const MESH_ENV: &str = "OPENBOX_MESH";

/// Where the tailnet node is in its life.
#[derive(Clone)]
enum State {
    Joining,
    Up(Arc<tailnet::Node>),
    /// Joining failed; it is tried again (unless the auth key is the problem).
    Failed(String),
}

/// The tailnet to join and, the first time, the key to join with.
pub struct Wanted {
    control_url: String,
    auth_key: Option<tailnet::AuthKey>,
    /// How long one try at joining may take.
    up_timeout: Duration,
}

impl Wanted {
    pub fn control_url(&self) -> &str {
        &self.control_url
    }
}

fn from_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// The tailnet this openboxd is to join: from `control_url` (the flag), else the
/// environment, else what was remembered; `None` when it has none and `required` (the
/// `--mesh` flag, `OPENBOX_MESH=1`) is not set. A tailnet that is given is remembered.
pub fn wanted(
    control_url: Option<String>,
    authkey_file: Option<&Path>,
    required: bool,
    up_timeout: Option<u64>,
) -> anyhow::Result<Option<Wanted>> {
    let up_timeout = match up_timeout {
        Some(secs) => Duration::from_secs(secs.max(1)),
        None => match from_env(TIMEOUT_ENV) {
            Some(text) => Duration::from_secs(proto::parse_secs(&text).context(TIMEOUT_ENV)?.max(1)),
            None => UP,
        },
    };
    let required = required || from_env(MESH_ENV).is_some_and(|v| v != "0");
    let given = control_url.or_else(|| from_env(tailnet::CONTROL_ENV));
    if !tailnet::BUILT && (required || given.is_some()) {
        bail!(tailnet::TailnetError::NotBuilt);
    }
    let control_url = match tailnet::chosen_control_url(&paths::mesh_file(), given)
        .context("the tailnet control URL")?
    {
        Some(_) if !tailnet::BUILT => {
            tracing::warn!("a tailnet is remembered, but this build of openbox has none");
            return Ok(None);
        }
        Some(url) => url,
        None if required => {
            bail!(
                "--mesh needs a tailnet: give --mesh-control URL (or OPENBOX_MESH_CONTROL); it is remembered after that"
            )
        }
        None => return Ok(None),
    };
    let auth_key = tailnet::auth_key(authkey_file)?;
    Ok(Some(Wanted { control_url, auth_key, up_timeout }))
}

/// What [`adopt`] did with the fleet's tailnet handed out at login.
pub enum Adopted {
    /// This openboxd is on it already, or on a tailnet of its own (named here).
    Kept(Option<String>),
    /// Remembered with its key: openboxd must start again to join it.
    Remembered,
    /// This build has no tailnet.
    NotBuilt,
}

/// Takes the fleet's tailnet, handed out by the control plane at login, as this openboxd's
/// own unless it already has one.
pub fn adopt(current: Option<&Mesh>, fleet: &proto::api::MeshSettings) -> anyhow::Result<Adopted> {
    if let Some(mesh) = current {
        if mesh.control_url != fleet.control_url {
            return Ok(Adopted::Kept(Some(mesh.control_url.clone())));
        }
        // Not joined yet, with a key from an earlier login that may have expired since
        // (a key minted for one laptop lasts minutes): the fresh one takes its place.
        if !fleet.auth_key.is_empty() && tailnet::has_kept_auth_key(&paths::tailnet_dir()) {
            tailnet::keep_auth_key(&paths::tailnet_dir(), &tailnet::AuthKey::new(fleet.auth_key.as_str()))?;
            return Ok(Adopted::Remembered);
        }
        return Ok(Adopted::Kept(None));
    }
    if !tailnet::BUILT {
        return Ok(Adopted::NotBuilt);
    }
    tailnet::remember_control_url(&paths::mesh_file(), &fleet.control_url)?;
    tailnet::keep_auth_key(&paths::tailnet_dir(), &tailnet::AuthKey::new(fleet.auth_key.as_str()))?;
    Ok(Adopted::Remembered)
}

/// This process's tailnet node, once started: control-plane clients reach a control
/// plane at a tailnet address through it.
static THIS_PROCESS: std::sync::OnceLock<Arc<Mesh>> = std::sync::OnceLock::new();

/// A client for the control plane at `server`: over the tailnet when that is a tailnet
/// address (and this openboxd is on the tailnet), else over TCP.
pub fn control_client(
    server: &net::control::Endpoint,
    token: Option<trust::Secret>,
) -> Result<net::control::Client, net::control::ControlError> {
    let client = net::control::Client::new(server, token)?;
    Ok(match THIS_PROCESS.get() {
        Some(mesh) => client.with_tailnet(mesh.clone()),
        None => client,
    })
}

impl net::control::TailnetAccess for Mesh {
    fn node(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<tailnet::Node>, String>> + Send + '_>> {
        Box::pin(Mesh::node(self))
    }
}

pub struct Mesh {
    control_url: String,
    state: watch::Receiver<State>,
    ips: Mutex<Vec<String>>,
}

impl Mesh {
    /// Starts joining `wanted` in the background, and keeps trying while it fails for any
    /// reason but the auth key.
    pub fn start(rt: &tokio::runtime::Handle, wanted: Wanted) -> Arc<Mesh> {
        let config = tailnet::Config {
            dir: paths::tailnet_dir(),
            hostname: format!("openboxd-{}", std::env::var("USER").unwrap_or_else(|_| "user".into())),
            control_url: wanted.control_url.clone(),
            auth_key: wanted.auth_key,
            ephemeral: false,
        };
        let (tx, state) = watch::channel(State::Joining);
        let up_timeout = wanted.up_timeout;
        let mesh = Arc::new(Mesh { control_url: wanted.control_url, state, ips: Mutex::default() });
        let m = mesh.clone();
        rt.spawn(async move {
            let mut pause = Duration::from_secs(2);
            loop {
                let joined = async {
                    let node = tailnet::Node::new(&config)?;
                    node.up(up_timeout).await?;
                    Ok::<_, tailnet::TailnetError>(node)
                };
                match joined.await {
                    Ok(node) => {
                        let ips: Vec<String> =
                            node.ips().unwrap_or_default().iter().map(|ip| ip.to_string()).collect();
                        tracing::info!(?ips, control = %m.control_url, "on the tailnet");
                        *m.ips.lock().unwrap_or_else(|e| e.into_inner()) = ips;
                        let _ = tx.send(State::Up(Arc::new(node)));
                        return;
                    }
                    Err(e) => {
                        let final_ = matches!(
                            e,
                            tailnet::TailnetError::AuthKeyExpired
                                | tailnet::TailnetError::AuthKeyInvalid(_)
                                | tailnet::TailnetError::NotBuilt
                                | tailnet::TailnetError::Environment
                        );
                        tracing::warn!(error = %e, control = %m.control_url, retry = !final_, "could not join the tailnet");
                        let _ = tx.send(State::Failed(if final_ { e.to_string() } else { format!("{e} (trying again)") }));
                        if final_ {
                            return;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_AT_MOST);
            }
        });
        let _ = THIS_PROCESS.set(mesh.clone());
        mesh
    }

    /// The tailnet node, once it is up (waiting for it if it is still joining).
    pub async fn node(&self) -> Result<Arc<tailnet::Node>, String> {
        let mut state = self.state.clone();
        let settled = state.wait_for(|s| !matches!(s, State::Joining)).await.map(|s| s.clone());
        match settled {
            Ok(State::Up(node)) => Ok(node),
            Ok(State::Failed(why)) => {
                Err(format!("this openboxd could not join the tailnet at {}: {why}", self.control_url))
            }
            _ => Err("the tailnet node stopped".into()),
        }
    }

    /// Whether the node is still joining (a call that needs it will wait).
    pub fn joining(&self) -> bool {
        matches!(*self.state.borrow(), State::Joining)
    }

    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    pub fn status(&self) -> proto::rpc::MeshStatus {
        let state = self.state.borrow().clone();
        proto::rpc::MeshStatus {
            control_url: self.control_url.clone(),
            up: matches!(state, State::Up(_)),
            ips: self.ips.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            error: match state {
                State::Failed(why) => Some(why),
                _ => None,
            },
        }
    }
}
