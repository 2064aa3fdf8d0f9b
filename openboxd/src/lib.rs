//! openboxd: the per-user daemon behind the `openbox` CLI. It holds the login state and
//! key, a certificate cache and a pool of SSH connections to nodes, and a live mirror of
//! the node registry — so a repeated `openbox -t TAG cmd` costs one channel on an open
//! connection and no control-plane round trip.
//!
//! Requests arrive over a Unix socket as JSON-RPC ([`serve`], see `docs/rpc.md`), or, for
//! one-shot use without a daemon, as a single call handed over by the CLI ([`handle`]).
//! It knows nothing about parsing command lines.

mod account;
mod bootstrap;
pub mod call_log;
mod cap;
mod commands;
mod connect;
mod copy;
mod events;
mod fanout;
mod files;
mod fleet;
mod forward;
pub mod io;
mod jobs;
mod login;
mod mesh;
mod mirror;
mod pool;
mod rpc;
mod run;
mod skill;
mod spool;
pub mod terminal;

use std::sync::{Arc, RwLock};

pub use mesh::{Wanted as WantedMesh, wanted as wanted_mesh};
use proto::api::NodeUpdate;
use proto::request::{Call, Request};
pub use rpc::serve;

use crate::account::Account;
use crate::io::CallIo;
use crate::login::Login;

/// Exit code for a failed account or fleet command.
pub(crate) const COMMAND_FAILED: u8 = 1;

/// Everything openboxd keeps between calls.
pub struct Daemon {
    /// The current login and all that was made with it; `None` when logged out.
    account: RwLock<Option<Arc<Account>>>,
    mirror: mirror::Mirror,
    /// Whether to follow the registry (a long-lived daemon does; a one-shot call does not).
    follow_registry: bool,
    runtime: tokio::runtime::Handle,
    /// Notified by the `shutdown` method.
    pub shutdown: tokio::sync::Notify,
    calls: std::sync::atomic::AtomicUsize,
    /// The tailnet node, when this openboxd is on a tailnet.
    mesh: Option<Arc<mesh::Mesh>>,
    /// The way that last reached each node (by id), tried first next time.
    ways: std::sync::Mutex<std::collections::HashMap<String, connect::Way>>,
    /// Jobs, which only a long-lived openboxd keeps (and follows).
    jobs: Option<Arc<jobs::Jobs>>,
}

impl Daemon {
    fn way_that_worked(&self, node_id: &str) -> Option<connect::Way> {
        self.ways.lock().unwrap_or_else(|e| e.into_inner()).get(node_id).copied()
    }

    fn remember_way(&self, node_id: &str, way: connect::Way) {
        self.ways.lock().unwrap_or_else(|e| e.into_inner()).insert(node_id.to_owned(), way);
    }

    /// A daemon state, joining `mesh` if given; call from within a tokio runtime.
    pub fn new(follow_registry: bool, mesh: Option<WantedMesh>) -> Arc<Daemon> {
        let d = Arc::new(Daemon {
            account: RwLock::new(None),
            mirror: mirror::Mirror::default(),
            follow_registry,
            runtime: tokio::runtime::Handle::current(),
            shutdown: tokio::sync::Notify::new(),
            calls: Default::default(),
            mesh: mesh.map(|m| mesh::Mesh::start(&tokio::runtime::Handle::current(), m)),
            ways: Default::default(),
            jobs: follow_registry.then(|| jobs::Jobs::open(paths::context().jobs_dir())),
        });
        d.reload_login();
        if let Some(jobs) = &d.jobs {
            jobs.resume(&d);
        }
        d
    }

    /// The jobs, or why there are none here.
    pub(crate) fn jobs(&self) -> anyhow::Result<&Arc<jobs::Jobs>> {
        self.jobs.as_ref().ok_or_else(|| anyhow::anyhow!("jobs are kept by openboxd: leave out --no-daemon"))
    }

    /// Rereads the login file; when the login changed, the account made for the old one
    /// (its key, certificates, connections and sessions) is replaced as a whole, and the
    /// registry mirror follows the new one.
    pub fn reload_login(&self) {
        let fresh = Login::load().ok();
        let unchanged = |current: &Option<Arc<Account>>| match (current.as_ref(), fresh.as_ref()) {
            (Some(acct), Some(login)) => acct.is(login),
            (None, None) => true,
            _ => false,
        };
        if unchanged(&self.account.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        // Reading (or making) the key happens before the lock is taken, so that no call
        // waits behind file I/O.
        let account = fresh.clone().and_then(|login| match Account::new(login) {
            Ok(acct) => Some(Arc::new(acct)),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the new login cannot be used yet");
                None
            }
        });
        let mut current = self.account.write().unwrap_or_else(|e| e.into_inner());
        if unchanged(&current) {
            return; // another reload got here first
        }
        tracing::info!(user = ?fresh.as_ref().map(|l| &l.user), "login changed");
        *current = account;
        drop(current);
        if self.follow_registry {
            self.mirror.follow(fresh, &self.runtime);
        }
    }

    /// The current account: what every call that reaches a node works with.
    pub fn account(&self) -> anyhow::Result<Arc<Account>> {
        if let Some(acct) = self.account.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(acct);
        }
        // The file may have appeared since; the watcher may not have said so yet.
        Ok(Arc::new(Account::new(Login::load()?)?))
    }

    /// The fleet as the registry mirror holds it now, and its changes from now on.
    pub fn subscribe(&self) -> (proto::rpc::Subscribed, tokio::sync::broadcast::Receiver<proto::rpc::FleetEvent>) {
        self.mirror.subscribe()
    }

    /// The current login, for calls that only talk to the control plane.
    pub fn login(&self) -> anyhow::Result<Login> {
        if let Some(acct) = self.account.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(acct.login.clone());
        }
        Login::load()
    }

    /// A different number each call, to spread a tag's calls over its nodes.
    fn spread(&self) -> usize {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn status(&self) -> proto::rpc::Status {
        let acct = self.account.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (live, nodes) = self.mirror.status();
        proto::rpc::Status {
            version: proto::VERSION.into(),
            socket: paths::daemon_socket().display().to_string(),
            protocol: proto::rpc::PROTOCOL,
            pid: std::process::id(),
            context: paths::context().name().into(),
            logged_in: acct.is_some(),
            server: acct.as_ref().map(|a| a.login.server.url.clone()),
            user: acct.as_ref().map(|a| a.login.user.clone()),
            connections: acct.map_or(0, |a| a.pool.connections()),
            registry_live: live,
            nodes,
            mesh: self.mesh.as_ref().map(|m| m.status()),
        }
    }
}

/// Carries out one CLI call with its streams and returns its exit code, once all its
/// output is written. The call's halts stop a running command early: the caller gone, or
/// signalled (see `net::halt`).
pub async fn handle(d: &Arc<Daemon>, call: Call, mut io: CallIo) -> u8 {
    let code = handle_with(d, call, &mut io).await;
    crate::io::conclude(io.output, code).await
}

async fn handle_with(d: &Arc<Daemon>, call: Call, io: &mut CallIo) -> u8 {
    let json = call.json;
    let result = match call.request {
        Request::Run(req) if json && req.tty.is_none() => return run::run_json(d, req, io).await,
        Request::Run(req) => return run::run(d, req, io).await.exit_code,
        Request::FanOut(req) => return fanout::run(d, req, json, io).await,
        Request::Login { server, token, fingerprint, insecure_http } => {
            commands::login(d, &server, fingerprint.as_deref(), insecure_http, &token).await
        }
        Request::Logout => commands::logout(d).await,
        Request::Whoami => commands::whoami(d).await,
        Request::Dashboard => commands::dashboard(d).await,
        Request::Skill { agents, dir, global, print } => skill::write(d, &agents, &dir, global, print).await,
        Request::UserAdd { name } => commands::user_add(d, &name).await,
        Request::UserList => commands::user_list(d).await,
        Request::UserRemove { name } => commands::user_remove(d, &name).await,
        Request::UserToken { name } => commands::user_token(d, &name).await,
        Request::UserGrant { name, grant } => commands::user_grant(d, &name, &grant).await,
        Request::UserRevoke { name, on } => commands::user_revoke(d, &name, &on).await,
        Request::NodeToken { tags, ttl_secs } => commands::node_token(d, &tags, ttl_secs).await,
        Request::NodeAdd(req) => bootstrap::node_add(d, req, &mut io.output).await,
        Request::Copy(req) => copy::copy(d, req, io).await,
        Request::Nodes { tag } => commands::nodes(d, tag.as_deref()).await,
        Request::NodeRemove { node } => commands::node_remove(d, &node).await,
        Request::NodeTag { node, add, remove } => {
            commands::node_update(d, &node, NodeUpdate { name: None, add_tags: add, remove_tags: remove }).await
        }
        Request::NodeRename { node, name } => {
            commands::node_update(d, &node, NodeUpdate { name: Some(name), ..Default::default() }).await
        }
        Request::Up(req) => fleet::up(d, req).await,
        Request::Down => fleet::down().await,
        Request::Sessions => commands::sessions(d).await,
        Request::SessionRemove { id } => commands::session_remove(d, &id).await,
        Request::Audit { user, node, since_secs } => {
            commands::audit(d, user.as_deref(), node.as_deref(), since_secs).await
        }
        Request::JobStart { run, stdin, terminal } => match d.jobs() {
            Ok(jobs) => jobs.start(d, run, stdin, terminal).await.map(|info| jobs::started(&info)),
            Err(e) => Err(e),
        },
        Request::Jobs => d.jobs().map(|jobs| jobs::listed(&jobs.list())),
        Request::JobLogs { id, follow } => return jobs::logs_command(d, &id, follow, &mut io.output).await,
        Request::JobWait { id, timeout_secs } => {
            return jobs::wait_command(d, &id, timeout_secs, json, &mut io.output).await;
        }
        Request::JobStop { id } => match d.jobs() {
            Ok(jobs) => jobs.stop(d, &id).await.map(|info| jobs::described(&info)),
            Err(e) => Err(e),
        },
        Request::JobSend { id, close } => match d.jobs() {
            Ok(jobs) => jobs.send(d, &id, io.take_input(), close).await.map(|info| jobs::described(&info)),
            Err(e) => Err(e),
        },
        Request::JobScreen { id } => match d.jobs() {
            Ok(jobs) => jobs.screen(d, &id).await.map(|screen| jobs::screened(&screen)),
            Err(e) => Err(e),
        },
        Request::JobRemove { id } => match d.jobs() {
            Ok(jobs) => jobs
                .forget(d, &id)
                .await
                .map(|()| commands::Reply::new(serde_json::json!({"removed": id}), format!("Removed job {id}."))),
            Err(e) => Err(e),
        },
        Request::Names { kind } => {
            let names = d.mirror.names(kind);
            let text = names.iter().map(|n| format!("{n}\n")).collect::<String>();
            Ok(commands::Reply {
                json: serde_json::json!(names),
                text: text.trim_end().to_owned(),
                warnings: Vec::new(),
            })
        }
        Request::DaemonStatus => Ok(daemon_status(d)),
        Request::DaemonStop => {
            d.shutdown.notify_one();
            Ok(commands::Reply {
                json: serde_json::to_value(proto::rpc::Stopping { stopping: true }).expect("serializable"),
                text: "openboxd is stopping.".into(),
                warnings: vec![],
            })
        }
    };
    let output = &mut io.output;
    match result {
        Ok(reply) => {
            // What nodes and others reported reaches a terminal here: its control
            // characters are shown, never obeyed (JSON escapes them itself).
            for w in &reply.warnings {
                output.eprint(&format!("openbox: {}\n", printable(w))).await;
            }
            if json {
                output.print(&format!("{}\n", serde_json::to_string_pretty(&reply.json).unwrap_or_default())).await;
            } else if !reply.text.is_empty() {
                output.print(&format!("{}\n", printable(reply.text.trim_end()))).await;
            }
            0
        }
        Err(e) => {
            output.eprint(&format!("openbox: {}\n", printable(&format!("{e:#}")))).await;
            e.downcast_ref::<copy::Stopped>().map_or(COMMAND_FAILED, |s| s.code)
        }
    }
}

use proto::output::printable;

fn daemon_status(d: &Daemon) -> commands::Reply {
    let s = d.status();
    let text = format!(
        "openboxd {} (pid {}, protocol {})\n  context     {}\n  socket      {}\n  login       {}\n  connections {}\n  registry    {} ({} nodes)",
        s.version,
        s.pid,
        s.protocol,
        s.context,
        s.socket,
        match (&s.user, &s.server) {
            (Some(u), Some(srv)) => format!("{u} at {srv}"),
            _ => "not logged in".into(),
        },
        s.connections,
        if s.registry_live { "live" } else { "not connected" },
        s.nodes
    );
    commands::Reply { json: serde_json::to_value(&s).unwrap_or_default(), text, warnings: vec![] }
}
