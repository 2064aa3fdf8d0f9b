//! The tailnet node openboxd holds for its user, so that every call after the first
//! reaches tailnet nodes as fast as nodes on the LAN. Configured by `OPENBOX_MESH_CONTROL`
//! (and, the first time, `OPENBOX_MESH_AUTHKEY`) in the environment openboxd starts with —
//! the CLI's, when the CLI starts it — and remembered in the config dir, so a restarted
//! openboxd rejoins as the same tailnet node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

/// How long joining may take before calls that need the tailnet give up.
const UP: Duration = Duration::from_secs(60);

/// Where the tailnet node is in its life.
#[derive(Clone)]
enum State {
    Joining,
    Up(Arc<tailnet::Node>),
    Failed(String),
}

/// The tailnet this openboxd is to join, if any: from the environment, else remembered.
pub fn control_url() -> Option<String> {
    from_env().or_else(|| tailnet::remembered_control_url(&paths::mesh_file()).ok().flatten())
}

fn from_env() -> Option<String> {
    std::env::var(tailnet::CONTROL_ENV).ok().filter(|u| !u.is_empty())
}

pub struct Mesh {
    control_url: String,
    state: watch::Receiver<State>,
    ips: Mutex<Vec<String>>,
}

impl Mesh {
    /// The tailnet settings from the environment, else the remembered ones; `None` when
    /// this openboxd has no tailnet. Starts joining in the background.
    pub fn start(rt: &tokio::runtime::Handle) -> anyhow::Result<Option<Arc<Mesh>>> {
        let file = paths::mesh_file();
        let control_url = match from_env() {
            Some(url) => {
                tailnet::remember_control_url(&file, &url).context(tailnet::CONTROL_ENV)?;
                url
            }
            None => match tailnet::remembered_control_url(&file).context("set OPENBOX_MESH_CONTROL again")? {
                Some(url) => url,
                None => return Ok(None),
            },
        };
        let auth_key = std::env::var(tailnet::AUTHKEY_ENV).ok().filter(|k| !k.is_empty()).map(tailnet::AuthKey::new);
        let config = tailnet::Config {
            dir: paths::tailnet_dir(),
            hostname: format!("openboxd-{}", std::env::var("USER").unwrap_or_else(|_| "user".into())),
            control_url: control_url.clone(),
            auth_key,
            ephemeral: false,
        };
        let (tx, state) = watch::channel(State::Joining);
        let mesh = Arc::new(Mesh { control_url, state, ips: Mutex::default() });
        let m = mesh.clone();
        rt.spawn(async move {
            let joined = async {
                let node = tailnet::Node::new(&config)?;
                node.up(UP).await?;
                Ok::<_, tailnet::TailnetError>(node)
            };
            let next = match joined.await {
                Ok(node) => {
                    let ips: Vec<String> = node.ips().unwrap_or_default().iter().map(|ip| ip.to_string()).collect();
                    tracing::info!(?ips, control = %m.control_url, "on the tailnet");
                    *m.ips.lock().unwrap_or_else(|e| e.into_inner()) = ips;
                    State::Up(Arc::new(node))
                }
                Err(e) => {
                    tracing::warn!(error = %e, control = %m.control_url, "could not join the tailnet");
                    State::Failed(e.to_string())
                }
            };
            let _ = tx.send(next);
        });
        Ok(Some(mesh))
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
