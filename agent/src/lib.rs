//! The openbox agent, one per node: enrolls once, then serves SSH with mutual certificate
//! checks, heartbeats to the control plane, and runs each command it is handed.
//!
//! The agent trusts exactly one thing: a user certificate signed by the fleet's CA for this
//! node (see `trust`). It never asks the control plane whether to run a command — the
//! certificate already says who may run what here — so commands keep working while the
//! control plane is down, for as long as callers' certificates are valid.

mod access;
mod channel;
pub mod confine;
mod control;
mod docker;
mod drive;
mod enroll;
mod exec;
mod forward;
mod heartbeat;
mod identity;
mod journal;
mod launch;
mod leftovers;
mod nspawn;
mod plan;
mod procs;
mod pty;
pub mod run_as;
mod runtimes;
mod server;
mod session;
pub mod sftp;
mod signals;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
pub use identity::Identity;

/// What the fuzz targets (`fuzz/`) drive directly.
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::session::framing::Scanner;
}

/// Takes the agent's own credentials out of a command's environment: commands it runs
/// never see them.
pub(crate) fn hide_secrets(cmd: &mut tokio::process::Command) {
    for var in [tailnet::AUTHKEY_ENV, proto::api::ENROLL_TOKEN_ENV] {
        cmd.env_remove(var);
    }
}

/// This node's identity as `openbox agent --identity` shows it (id, name, control plane;
/// no secrets), if it has enrolled.
pub fn enrolled(dir: &std::path::Path) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(Identity::load(dir)?
        .map(|id| serde_json::json!({"node_id": id.node_id, "name": id.name, "server": id.server.url})))
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the node identity lives.
    pub dir: PathBuf,
    /// The control plane, needed to enroll (afterwards it is remembered; given again, it
    /// replaces the remembered one).
    pub server: Option<net::control::Endpoint>,
    /// Enrollment token, needed only the first time.
    pub token: Option<String>,
    /// Address the SSH server listens on over TCP; none for a node on the tailnet only.
    pub listen: Option<String>,
    /// Serve on a tailnet too (or only).
    pub mesh: Option<Mesh>,
    /// Address callers dial, when it differs from the listen address.
    pub advertise: Option<String>,
    pub tags: Vec<String>,
    pub name: Option<String>,
    pub heartbeat_every: Duration,
    /// Sessions idle longer than this are reaped.
    pub session_idle: Duration,
    /// Which local account runs each user's commands (none: the agent's own).
    pub run_as: run_as::RunAs,
    /// What users who are not admins may have here.
    pub policy: confine::Policy,
    /// How a caller that vanished is noticed.
    pub keepalive: net::ssh::Keepalive,
}

/// How the agent joins a tailnet.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// The coordination server (Headscale, or Tailscale's).
    pub control_url: String,
    /// Needed the first time only: the node keeps its tailnet identity under its dir.
    pub auth_key: Option<tailnet::AuthKey>,
    /// The port the SSH server listens on, on the tailnet.
    pub port: u16,
    /// How long joining may take at start before the agent gives up.
    pub up_timeout: Duration,
}

/// The tailnet settings from the command line and what an earlier start remembered (the
/// control URL, in `mesh.json` under the agent's dir). The auth key comes from a file or
/// `OPENBOX_MESH_AUTHKEY`, never from the command line.
pub fn mesh_settings(
    dir: &std::path::Path,
    asked: bool,
    control_url: Option<String>,
    authkey_file: Option<&std::path::Path>,
    port: u16,
    up_timeout: Duration,
) -> anyhow::Result<Option<Mesh>> {
    let remembered = paths::agent_mesh(dir);
    if !tailnet::BUILT && (asked || control_url.is_some() || remembered.exists()) {
        return Err(tailnet::TailnetError::NotBuilt.into());
    }
    let control_url = match tailnet::chosen_control_url(&remembered, control_url).context("--mesh-control")? {
        Some(url) => url,
        None if asked => bail!("--mesh needs a tailnet: give --mesh-control URL (it is remembered after that)"),
        None => return Ok(None),
    };
    let auth_key = tailnet::auth_key(authkey_file)?;
    Ok(Some(Mesh { control_url, auth_key, port, up_timeout }))
}

/// What `run` says once it is serving (printed by the binary; tests wait for it).
pub fn ready_line(id: &Identity, addr: &str) -> String {
    format!("openbox agent: node {} ({}) serving on {addr}", id.name, id.node_id)
}

/// How a run of the agent ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// About to enroll into a fleet whose control plane holds a tailnet: the agent must
    /// start again to join it first (the tailnet's environment is set before a process
    /// starts).
    JoinTailnet(String),
}

/// The tailnet state dir under the agent's dir.
fn tailnet_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("tailnet")
}

/// Refuses an enrollment `token` when the agent state in `dir` already belongs to a node
/// that enrolled with another: that is a second agent on this machine, which would
/// otherwise take over the first one's node. The token it enrolled with (a service's
/// token file, read at every start) is a restart. A node that enrolled before the token
/// was remembered cannot tell: a token from a file (a service's) is let through, one
/// given on the command line or in the environment (as a person starts an agent) is not.
pub fn check_token_is_this_nodes(dir: &std::path::Path, token: &str, from_file: bool) -> anyhow::Result<()> {
    let Some(id) = Identity::load(dir)? else { return Ok(()) };
    match &id.enrolled_with {
        Some(hash) if *hash == trust::token::hash(token) => Ok(()),
        None if from_file => {
            tracing::warn!(node = %id.node_id, dir = %dir.display(), "already enrolled; the token given is not used (a second agent needs --state-dir DIR)");
            Ok(())
        }
        _ => bail!(
            "the agent state in {} already belongs to node {} ({}), which enrolled with another token. \
             To run a second agent on this machine, give it a directory of its own: \
             `openbox agent --state-dir DIR …` (or OPENBOX_HOME=DIR). To start node {} again, leave the token out.",
            dir.display(),
            id.name,
            id.node_id,
            id.name
        ),
    }
}

/// Sets the identity in `dir` aside (its files renamed `*.forgotten`), so that the next
/// start enrolls anew; what it was, if there was one.
pub fn forget_identity(dir: &std::path::Path) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(shown) = enrolled(dir)? else { return Ok(None) };
    for file in [paths::agent_identity(dir), paths::agent_host_key(dir)] {
        let mut aside = file.clone().into_os_string();
        aside.push(".forgotten");
        std::fs::rename(&file, &aside).with_context(|| format!("setting {} aside", file.display()))?;
    }
    Ok(Some(shown))
}

/// Enrolls if needed, then serves until `shutdown` completes or the node is removed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Ended> {
    let existing = Identity::load(&config.dir)?;
    if existing.is_none() && config.token.is_none() {
        bail!(
            "this node has not enrolled yet: run `openbox agent --server URL --token enroll_…` (an admin mints the token with `openbox node token`)"
        );
    }
    if existing.is_none()
        && config.mesh.is_none()
        && let (Some(server), Some(token)) = (&config.server, &config.token)
        && let Some(mesh) = enroll::fleet_mesh(server, token).await?
    {
        if tailnet::BUILT {
            // Zero-config: join the fleet's tailnet first (starting again, with the
            // environment it needs), then enroll with the tailnet address.
            tailnet::remember_control_url(&paths::agent_mesh(&config.dir), &mesh.control_url)?;
            tailnet::keep_auth_key(&tailnet_dir(&config.dir), &tailnet::AuthKey::new(&mesh.auth_key))?;
            return Ok(Ended::JoinTailnet(mesh.control_url));
        }
        tracing::warn!(control = %mesh.control_url, "the fleet has a tailnet, but this build of openbox has none; serving over TCP only");
    }
    let mut incoming = Vec::new();
    let mut addr = String::new();
    if let Some(listen) = &config.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}; is another agent running? (--addr picks another)"))?;
        addr = advertised(listener.local_addr()?, config.advertise.as_deref())?;
        incoming.push(server::Incoming::Tcp(listener));
    }
    // The tailnet node lives as long as the agent serves on it.
    let (tailnet, mesh_addr) = match &config.mesh {
        Some(mesh) => {
            let (node, listener, mesh_addr) = join_tailnet(&config, mesh).await?;
            incoming.push(server::Incoming::Tailnet(listener));
            (Some(std::sync::Arc::new(node)), Some(mesh_addr))
        }
        None => (None, None),
    };
    if incoming.is_empty() {
        bail!("nothing to serve on: give --addr HOST:PORT, or join a tailnet with --mesh-control URL");
    }
    let addrs = heartbeat::Addrs { addr: addr.clone(), mesh_addr: mesh_addr.clone(), tailnet: tailnet.clone() };

    let identity = match existing {
        Some(mut id) => {
            if let Some(server) = config.server.as_ref().filter(|s| **s != id.server) {
                tracing::info!(node = %id.node_id, was = %id.server.url, now = %server.url, "the control plane is now reached as given");
                id.server = server.clone();
                id.save(&config.dir)?;
            }
            id
        }
        None => {
            let server = config.server.as_ref().context("enrolling needs --server URL")?;
            let token = config.token.as_deref().unwrap_or_default();
            let id = enroll::enroll(enroll::EnrollParams {
                server,
                token,
                name: config.name.clone(),
                addr: addr.clone(),
                mesh_addr: mesh_addr.clone(),
                tags: config.tags.clone(),
                capabilities: runtimes::Runtimes::probe().await,
                tailnet: tailnet.clone(),
            })
            .await?;
            id.save(&config.dir)?;
            tracing::info!(node = %id.node_id, name = %id.name, "enrolled");
            id
        }
    };
    let ready = ready_line(&identity, if addr.is_empty() { mesh_addr.as_deref().unwrap_or_default() } else { &addr });
    let sessions = session::Sessions::new(config.session_idle, config.policy.max_sessions.into(), &config.dir).await;
    leftovers::open(&config.dir);
    let reaper = tokio::spawn(sessions.clone().reap_forever());
    confine::limit_processes(config.policy.max_processes).context("setting the process limit (--max-processes)")?;
    let runtimes = runtimes::Runtimes::new(&identity.node_id, config.policy.clone());
    runtimes.clean_up().await;
    tracing::info!(isolation = ?runtimes.capabilities().await, "this node can run commands under");
    let journal = journal::Journal::open(&config.dir);
    let shared = server::Shared::new(identity, sessions, runtimes, config.run_as.clone(), journal, config.keepalive);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(incoming, shared.clone(), async {
        let _ = stop_rx.await;
    }));
    let outcome = tokio::select! {
        stop = heartbeat::run(shared.clone(), addrs.clone(), config.heartbeat_every, config.dir.clone(), || println!("{ready}")) => Some(stop),
        _ = shutdown => None,
    };
    let _ = stop_tx.send(());
    let _ = serving.await;
    reaper.abort();
    shared.sessions.stop_all().await;
    match outcome {
        None => {
            heartbeat::say_goodbye(&shared, &addrs).await;
            tracing::info!("agent stopped");
            Ok(Ended::Stopped)
        }
        Some(heartbeat::Stop::Revoked(why)) => {
            Identity::forget(&config.dir);
            bail!("{why}; this node's identity has been discarded")
        }
    }
}

/// Joins the tailnet (state under the agent's dir, so a restart is the same tailnet node)
/// and listens for SSH there; returns the node, its listener and its tailnet address.
async fn join_tailnet(config: &Config, mesh: &Mesh) -> anyhow::Result<(tailnet::Node, tailnet::Listener, String)> {
    let hostname = config.name.clone().unwrap_or_else(|| "openbox-node".into());
    let node = tailnet::Node::new(&tailnet::Config {
        dir: tailnet_dir(&config.dir),
        hostname,
        control_url: mesh.control_url.clone(),
        auth_key: mesh.auth_key.clone(),
        ephemeral: false,
    })?;
    node.up(mesh.up_timeout).await.with_context(|| format!("joining the tailnet at {}", mesh.control_url))?;
    let listener = node.listen(&format!(":{}", mesh.port))?;
    let ip = node.ips()?.into_iter().next().context("the tailnet gave this node no address")?;
    let mesh_addr = std::net::SocketAddr::new(ip, mesh.port).to_string();
    tracing::info!(%mesh_addr, control = %mesh.control_url, "on the tailnet");
    Ok((node, listener, mesh_addr))
}

fn advertised(bound: SocketAddr, advertise: Option<&str>) -> anyhow::Result<String> {
    if let Some(a) = advertise {
        return Ok(a.to_owned());
    }
    if bound.ip().is_unspecified() {
        bail!("listening on {bound} (all addresses): say which address callers should dial with --advertise HOST:PORT");
    }
    Ok(bound.to_string())
}
