//! The openbox agent, one per node: enrolls once, then serves SSH with mutual certificate
//! checks, heartbeats to the control plane, and runs each command it is handed.
//!
//! The agent trusts exactly one thing: a user certificate signed by the fleet's CA for this
//! node (see `trust`). It never asks the control plane whether to run a command — the
//! certificate already says who may run what here — so commands keep working while the
//! control plane is down, for as long as callers' certificates are valid.

mod channel;
mod docker;
mod drive;
mod exec;
mod heartbeat;
mod identity;
mod nspawn;
mod procs;
mod runtimes;
mod server;
mod session;
mod signals;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
pub use identity::Identity;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the node identity lives.
    pub dir: PathBuf,
    /// Control-plane URL, needed to enroll (afterwards it is remembered).
    pub server: Option<String>,
    /// Enrollment token, needed only the first time.
    pub token: Option<String>,
    /// Address the SSH server listens on.
    pub listen: String,
    /// Address callers dial, when it differs from the listen address.
    pub advertise: Option<String>,
    pub tags: Vec<String>,
    pub name: Option<String>,
    pub heartbeat_every: Duration,
    /// Sessions idle longer than this are reaped.
    pub session_idle: Duration,
}

/// What `run` says once it is serving (printed by the binary; tests wait for it).
pub fn ready_line(id: &Identity, addr: &str) -> String {
    format!("openbox agent: node {} ({}) serving on {addr}", id.name, id.node_id)
}

/// Enrolls if needed, then serves until `shutdown` completes or the node is removed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let existing = Identity::load(&config.dir)?;
    if existing.is_none() && config.token.is_none() {
        bail!(
            "this node has not enrolled yet: run `openbox agent --server URL --token enroll_…` (an admin mints the token with `openbox node token`)"
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.listen).await.with_context(|| {
        format!("cannot listen on {}; is another agent running? (--addr picks another)", config.listen)
    })?;
    let bound = listener.local_addr()?;
    let addr = advertised(bound, config.advertise.as_deref())?;

    let identity = match existing {
        Some(id) => {
            if config.token.is_some() {
                tracing::info!(node = %id.node_id, "already enrolled; the --token given is not used");
            }
            id
        }
        None => {
            let server = config.server.as_deref().context("enrolling needs --server URL")?;
            let token = config.token.as_deref().unwrap_or_default();
            let id = identity::enroll(identity::EnrollParams {
                server,
                token,
                name: config.name.clone(),
                addr: addr.clone(),
                tags: config.tags.clone(),
                capabilities: runtimes::Runtimes::probe().await,
            })
            .await?;
            id.save(&config.dir)?;
            tracing::info!(node = %id.node_id, name = %id.name, "enrolled");
            id
        }
    };
    let ready = ready_line(&identity, &addr);
    let sessions = session::Sessions::new(config.session_idle);
    let reaper = tokio::spawn(sessions.clone().reap_forever());
    let runtimes = runtimes::Runtimes::new(&identity.node_id);
    runtimes.clean_up().await;
    tracing::info!(isolation = ?runtimes.capabilities().await, "this node can run commands under");
    let shared = server::Shared::new(identity, sessions, runtimes);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(listener, shared.clone(), async {
        let _ = stop_rx.await;
    }));
    let outcome = tokio::select! {
        stop = heartbeat::run(shared.clone(), addr.clone(), config.heartbeat_every, config.dir.clone(), || println!("{ready}")) => Some(stop),
        _ = shutdown => None,
    };
    let _ = stop_tx.send(());
    let _ = serving.await;
    reaper.abort();
    shared.sessions.stop_all().await;
    match outcome {
        None => {
            heartbeat::say_goodbye(&shared, &addr).await;
            tracing::info!("agent stopped");
            Ok(())
        }
        Some(heartbeat::Stop::Revoked(why)) => {
            Identity::forget(&config.dir);
            bail!("{why}; this node's identity has been discarded")
        }
    }
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
