//! What this node can run commands under: natively always; in Docker containers when a
//! Docker-API engine answers; in nspawn containers when systemd-nspawn can run here. Checked
//! again for every heartbeat and before every isolated command, so the registry follows an
//! engine that starts or stops, and a command never runs somewhere it was not asked to.

use std::sync::Mutex;

use proto::Isolation;
use proto::isolation::Limits;

use crate::confine::{ConfineError, Confinement, Policy};
use crate::docker::{Engine, EngineError};
use crate::nspawn::NspawnError;

/// Why a command (or a session's shell) cannot run under its isolation here, in words a
/// user can act on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Docker(#[from] EngineError),
    #[error(transparent)]
    Nspawn(#[from] NspawnError),
    #[error(transparent)]
    Confine(#[from] ConfineError),
    /// The process (a session's shell) could not be started.
    #[error("{0}")]
    Spawn(std::io::Error),
}

/// What one command runs under here: the runtime found for its isolation, with every host
/// path in it resolved to what it is on this node, and how tightly it is held beside that.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub runtime: Runtime,
    pub hold: Confinement,
}

/// The runtime a command's isolation found on this node.
#[derive(Clone, Debug)]
pub enum Runtime {
    /// A shell on the node itself.
    Native,
    /// systemd-nspawn over the root tree `dir` (resolved: see `nspawn::resolve_tree`).
    Nspawn { dir: String, limits: Limits },
    /// A container from `image` on this engine.
    Docker { engine: Engine, image: String, limits: Limits },
}

pub struct Runtimes {
    node_id: String,
    /// What users who are not admins may have here.
    pub policy: Policy,
    /// The engine client, made once its socket exists.
    docker: Mutex<Option<Engine>>,
}

impl Runtimes {
    pub fn new(node_id: &str, policy: Policy) -> Runtimes {
        Runtimes { node_id: node_id.to_owned(), policy, docker: Mutex::new(None) }
    }

    /// The Docker engine client, or why there is none.
    pub fn docker(&self) -> Result<Engine, EngineError> {
        let mut slot = self.docker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = slot.as_ref() {
            return Ok(engine.clone());
        }
        let engine = Engine::from_env(&self.node_id)?;
        *slot = Some(engine.clone());
        Ok(engine)
    }

    /// What this machine can serve before it has a node id, for its enrollment (the id
    /// only labels containers, and a probe creates none).
    pub async fn probe() -> Vec<String> {
        Runtimes::new("", Policy::default()).capabilities().await
    }

    /// The isolation kinds this node can serve right now, for the heartbeat.
    pub async fn capabilities(&self) -> Vec<String> {
        let mut caps = vec!["native".to_owned()];
        if let Ok(engine) = self.docker()
            && engine.check().await.is_ok()
        {
            caps.push("docker".to_owned());
        }
        if crate::nspawn::unavailable().is_none() {
            caps.push("nspawn".to_owned());
        }
        caps
    }

    /// What `isolation` runs under here for a user (an admin or not), if it can run here
    /// now; why not, in words a user can act on.
    pub fn prepare(&self, isolation: &Isolation, admin: bool) -> Result<Sandbox, RuntimeError> {
        let hold = Confinement { confined: !admin, max_processes: self.policy.max_processes };
        let runtime = match isolation {
            Isolation::Native => Runtime::Native,
            Isolation::Docker { image, limits } => {
                // No ping here: it would cost a round trip on every call, and an engine
                // that does not answer fails the container's creation with the same words.
                let engine = self.docker()?;
                // An engine on this machine sees this machine's paths (a remote one does not).
                let local = if engine.host.starts_with("unix://") { Ok(()) } else { Err(engine.host.as_str()) };
                let limits = crate::confine::mounts(limits, hold, &self.policy, local)?;
                Runtime::Docker { engine, image: image.clone(), limits }
            }
            Isolation::Nspawn { dir, limits } => {
                if let Some(why) = crate::nspawn::unavailable() {
                    return Err(why.into());
                }
                let dir = crate::nspawn::resolve_tree(dir)?;
                let limits = crate::confine::mounts(limits, hold, &self.policy, Ok(()))?;
                Runtime::Nspawn { dir, limits }
            }
        };
        Ok(Sandbox { runtime, hold })
    }

    /// Removes containers an earlier run of this agent left behind.
    pub async fn clean_up(&self) {
        if let Ok(engine) = self.docker()
            && engine.check().await.is_ok()
        {
            engine.remove_leftovers().await;
        }
    }
}
