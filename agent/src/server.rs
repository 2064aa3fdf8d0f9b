//! The agent's SSH server: it accepts and admits connections and translates russh's
//! callbacks. Authentication goes to [`trust::verify_user_cert`] and [`crate::access`];
//! each session channel gets a task of its own that reads what the channel asks for, has
//! [`crate::plan`] decide, and [`crate::launch`] carry the plan out.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use tokio::net::TcpListener;
use trust::{Certificate, UserGrant};

use crate::access::{Access, Lapsed};
use crate::channel::ChannelOut;
use crate::identity::Identity;
use crate::plan::{Kind, Refusal, Request};
use crate::run_as::{Login, NotMapped, RunAs};
use crate::runtimes::{RuntimeError, Runtimes, Sandbox};
use crate::session::Sessions;

/// State every connection reads: the identity (whose host certificate may be renewed) and
/// the SSH server configuration built from it.
pub struct Shared {
    identity: RwLock<Identity>,
    ssh_config: RwLock<Arc<russh::server::Config>>,
    pub sessions: Arc<Sessions>,
    pub runtimes: Runtimes,
    unauthenticated: Mutex<Unauthenticated>,
    /// What the control plane said about users since their certificates were issued.
    pub access: Access,
    /// What this node ran, for the audit log.
    pub journal: Arc<crate::journal::Journal>,
    /// How a caller that vanished is noticed.
    keepalive: net::ssh::Keepalive,
    /// Which local account runs each user's commands.
    run_as: RunAs,
}

/// How many connections may be open before they authenticate: past it, the oldest of them
/// is closed, so a flood of idle connections cannot shut out a real caller, nor use up
/// the agent's descriptors.
const MAX_UNAUTHENTICATED: usize = 256;
/// How long a connection may take to authenticate.
const AUTH_DEADLINE: Duration = Duration::from_secs(10);

/// The connections that have not authenticated yet, oldest first.
#[derive(Default)]
struct Unauthenticated {
    next_id: u64,
    waiting: VecDeque<(u64, tokio::task::AbortHandle)>,
    closed: u64,
}

impl Shared {
    /// Counts a new connection as unauthenticated, closing the oldest such one when there
    /// are too many.
    fn admit(&self, task: tokio::task::AbortHandle, id: u64) {
        let mut u = self.unauthenticated.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_finished() {
            return; // it ended before it could be counted
        }
        u.waiting.push_back((id, task));
        while u.waiting.len() > MAX_UNAUTHENTICATED {
            if let Some((_, oldest)) = u.waiting.pop_front() {
                oldest.abort();
                u.closed += 1;
                if u.closed.is_power_of_two() {
                    tracing::warn!(
                        closed = u.closed,
                        limit = MAX_UNAUTHENTICATED,
                        "too many connections not yet authenticated; closing the oldest"
                    );
                }
            }
        }
    }

    fn next_connection_id(&self) -> u64 {
        let mut u = self.unauthenticated.lock().unwrap_or_else(|e| e.into_inner());
        u.next_id += 1;
        u.next_id
    }

    /// Takes in the removed users a heartbeat reply names: from now on their certificates
    /// are refused, on open connections too, and their sessions are ended.
    pub async fn revoke(&self, users: Vec<proto::api::RevokedUser>) {
        for user in self.access.revoke(users) {
            let ended = self.sessions.end_user(&user.incarnation).await;
            tracing::info!(user = %user.name, incarnation = %user.incarnation, sessions_ended = ended, "user removed from the fleet");
        }
    }

    /// The connection authenticated, or ended: it no longer counts.
    fn settled(&self, id: u64) {
        let mut u = self.unauthenticated.lock().unwrap_or_else(|e| e.into_inner());
        u.waiting.retain(|(i, _)| *i != id);
    }
}

fn ssh_config(id: &Identity, keepalive: net::ssh::Keepalive) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![id.host_key.clone()],
        certificates: vec![id.host_cert.clone()],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // Input a command does not read stays with the caller (see `channel::Messages`).
        window_on_consume: true,
        max_auth_attempts: 3,
        // A caller that vanished (frozen, or the network to it gone) is noticed, and what
        // it started is stopped as when it hangs up.
        keepalive_interval: Some(keepalive.interval),
        keepalive_max: keepalive.max,
        ..Default::default()
    })
}

impl Shared {
    pub fn new(
        identity: Identity,
        sessions: Arc<Sessions>,
        runtimes: Runtimes,
        run_as: RunAs,
        journal: Arc<crate::journal::Journal>,
        keepalive: net::ssh::Keepalive,
    ) -> Arc<Shared> {
        let config = ssh_config(&identity, keepalive);
        Arc::new(Shared {
            identity: RwLock::new(identity),
            ssh_config: RwLock::new(config),
            sessions,
            runtimes,
            unauthenticated: Mutex::default(),
            access: Access::default(),
            journal,
            run_as,
            keepalive,
        })
    }

    pub fn identity(&self) -> Identity {
        self.identity.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a renewed host certificate; new connections present it.
    pub fn renew_host_cert(&self, cert: Certificate) {
        let mut id = self.identity.write().unwrap_or_else(|e| e.into_inner());
        id.host_cert = cert;
        *self.ssh_config.write().unwrap_or_else(|e| e.into_inner()) = ssh_config(&id, self.keepalive);
    }

    fn config(&self) -> Arc<russh::server::Config> {
        self.ssh_config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Accepts SSH connections on `listener` until `shutdown` completes.
/// Where the SSH server takes connections from.
pub enum Incoming {
    Tcp(TcpListener),
    Tailnet(tailnet::Listener),
}

/// Serves SSH on every listener until `shutdown` completes.
pub async fn serve(incoming: Vec<Incoming>, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let mut loops = tokio::task::JoinSet::new();
    for listener in incoming {
        loops.spawn(accept_loop(listener, shared.clone()));
    }
    shutdown.await;
    loops.abort_all();
}

async fn accept_loop(listener: Incoming, shared: Arc<Shared>) {
    loop {
        let accepted = match &listener {
            Incoming::Tcp(l) => l.accept().await.map(|(stream, peer)| {
                stream.set_nodelay(true).ok();
                spawn_connection(stream, peer.to_string(), &shared);
            }),
            Incoming::Tailnet(l) => match l.accept().await {
                Ok((stream, peer)) => {
                    spawn_connection(stream, format!("{peer} (tailnet)"), &shared);
                    Ok(())
                }
                Err(tailnet::TailnetError::Closed) => {
                    tracing::warn!("the tailnet listener closed; serving on the tailnet has stopped");
                    return;
                }
                Err(e) => Err(std::io::Error::other(e)),
            },
        };
        if let Err(e) = accepted {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn_connection<S>(stream: S, peer: String, shared: &Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (authenticated, authenticated_rx) = tokio::sync::oneshot::channel();
    let handler = Connection {
        shared: shared.clone(),
        peer: peer.clone(),
        grant: None,
        authenticated: Some(authenticated),
        listeners: Default::default(),
    };
    let config = shared.config();
    let id = shared.next_connection_id();
    let s = shared.clone();
    let task = tokio::spawn(async move {
        let run = async {
            match russh::server::run_stream(config, stream, handler).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "handshake failed"),
            }
        };
        tokio::pin!(run);
        // Until it authenticates, a connection has a deadline (and may be closed early to
        // make room: see `Shared::admit`).
        let first = tokio::time::timeout(AUTH_DEADLINE, async {
            tokio::select! {
                () = &mut run => false,
                got = authenticated_rx => got.is_ok(),
            }
        })
        .await;
        s.settled(id);
        match first {
            Ok(true) => run.await,
            Ok(false) => {}
            Err(_) => tracing::debug!(%peer, "no authentication within 10s; closed"),
        }
    });
    shared.admit(task.abort_handle(), id);
}

/// One client connection: who it authenticated as, and what its certificate allows.
struct Connection {
    shared: Arc<Shared>,
    peer: String,
    grant: Option<UserGrant>,
    /// Told once the connection has authenticated.
    authenticated: Option<tokio::sync::oneshot::Sender<()>>,
    /// The listeners its `-R` forwards asked for; they go when it does.
    listeners: crate::forward::Listeners,
}

impl Connection {
    /// The grant to forward ports with, or why there is none (none at all before the
    /// connection has authenticated).
    fn forwarding(&self) -> Result<&UserGrant, Option<Refusal>> {
        let grant = self.grant.as_ref().ok_or(None)?;
        crate::plan::forwarding(grant, &*self.shared).map_err(Some)?;
        Ok(grant)
    }
}

/// What the plan knows of this node: the control plane's word on users, the runtimes
/// here, and the account mapping.
impl crate::plan::Node for Shared {
    fn lapsed(&self, grant: &UserGrant) -> Option<Lapsed> {
        self.access.lapsed(grant, proto::time::control_now())
    }

    fn sandbox(&self, isolation: &proto::Isolation, admin: bool) -> Result<Sandbox, RuntimeError> {
        self.runtimes.prepare(isolation, admin)
    }

    fn login(&self, user: &str) -> Result<Option<Login>, NotMapped> {
        self.run_as.login(user).map(|l| l.cloned())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    /// Certificates carry the control plane's times: they are judged by its clock.
    fn certificate_time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(proto::time::control_now())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let user = telemetry::untrusted(user);
        tracing::warn!(peer = %self.peer, %user, "refused a bare key: openbox accepts only user certificates from its CA");
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(&mut self, user: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        let id = self.shared.identity();
        match trust::verify_user_cert(cert, &id.ca, user, &id.node_id, proto::time::control_now()) {
            Ok(grant) if self.shared.access.is_cut_off(&grant) => {
                tracing::warn!(peer = %self.peer, %user, key_id = %grant.key_id, "refused a certificate issued before its user's access changed");
                Ok(Auth::reject())
            }
            Ok(grant) if self.shared.access.is_revoked(&grant) => {
                tracing::warn!(peer = %self.peer, %user, key_id = %grant.key_id, "refused the certificate of a user removed from the fleet");
                Ok(Auth::reject())
            }
            Ok(grant) => {
                tracing::info!(peer = %self.peer, %user, key_id = %grant.key_id, isolation = %grant.isolation, "accepted user certificate");
                self.grant = Some(grant);
                if let Some(told) = self.authenticated.take() {
                    let _ = told.send(());
                }
                Ok(Auth::Accept)
            }
            Err(e) => {
                // Nothing in an unverified certificate is trusted, in a log line neither.
                let (user, key_id) = (telemetry::untrusted(user), telemetry::untrusted(cert.key_id()));
                let reason = telemetry::untrusted(&e.to_string());
                tracing::warn!(peer = %self.peer, %user, %key_id, %reason, "refused user certificate");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(grant) = self.grant.clone() else {
            return Ok(()); // dropping `reply` refuses the channel
        };
        // A certificate cut off since it authenticated opens nothing more: the caller
        // connects again and is asked for a new one. (A removed user's channel opens, to
        // be told so.)
        if self.shared.access.is_cut_off(&grant) {
            tracing::info!(peer = %self.peer, user = %grant.user, key_id = %grant.key_id, "refused a channel: the certificate was issued before its user's access changed");
            return Ok(());
        }
        reply.accept().await;
        let handle = session.handle();
        tokio::spawn(serve_channel(channel, grant, handle, self.shared.clone()));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = telemetry::untrusted(&format!("{host_to_connect}:{port_to_connect}"));
        match self.forwarding() {
            Ok(grant) => {
                tracing::info!(user = %grant.user, key_id = %grant.key_id, %target, "forwarding a connection (-L)");
                let handle = session.handle();
                crate::forward::connect_onward(channel, reply, handle, host_to_connect.to_owned(), port_to_connect);
            }
            Err(why) => {
                let why = why.map_or("not authenticated".to_owned(), |r| r.to_string());
                tracing::warn!(peer = %self.peer, %target, reason = %why, "refused a forwarded connection");
                reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            }
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let asked = telemetry::untrusted(&format!("{address}:{port}"));
        let grant = match self.forwarding() {
            Ok(grant) => grant.clone(),
            Err(why) => {
                let why = why.map_or("not authenticated".to_owned(), |r| r.to_string());
                tracing::warn!(peer = %self.peer, %asked, reason = %why, "refused a listener (-R)");
                return Ok(false);
            }
        };
        let agent_is_root = rustix::process::geteuid().is_root();
        let account = match self.shared.run_as.login(&grant.user) {
            Ok(Some(login)) => crate::forward::Account { name: &login.name, is_root: login.uid == 0 },
            Ok(None) => crate::forward::Account { name: "the agent's own user", is_root: agent_is_root },
            Err(why) => {
                tracing::warn!(user = %grant.user, %asked, reason = %why, "refused a listener (-R)");
                return Ok(false);
            }
        };
        match self.listeners.listen(address, port, account, session.handle()).await {
            Ok(()) => {
                tracing::info!(user = %grant.user, key_id = %grant.key_id, %asked, port = *port, "listening for a forward (-R)");
                Ok(true)
            }
            Err(why) => {
                tracing::warn!(user = %grant.user, %asked, reason = %why, "refused a listener (-R)");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let had = self.listeners.cancel(address, port).await;
        tracing::info!(peer = %self.peer, address = %telemetry::untrusted(address), port, had, "stopped listening for a forward (-R)");
        Ok(had)
    }

    /// Answered at once, as OpenSSH clients wait for it: yes to the subsystems the
    /// channel's task will serve (SFTP only where its checks will pass), no to others.
    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let served = match name {
            "sftp" => self.grant.as_ref().is_some_and(|g| {
                let sftp = Request { kind: Kind::Subsystem(name.to_owned()), pty: None, timeout: None, job: None };
                crate::plan::plan(g, sftp, &*self.shared).is_ok()
            }),
            proto::exec::END_SESSION_SUBSYSTEM | proto::exec::JOB_SUBSYSTEM => true,
            _ => false,
        };
        if served {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The channel's own task runs the command; here the request is only acknowledged.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The channel's own task takes the terminal's type and size from the request.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }
}

/// Reads what the channel asks for, has it planned, and carries the plan out — or tells
/// the caller why not. Recorded from the start for the audit (commands, shells and file
/// transfers, refusals of those too): the audit learns what the node ran, and what it
/// would not run, from the node.
async fn serve_channel(channel: Channel<Msg>, grant: UserGrant, handle: russh::server::Handle, shared: Arc<Shared>) {
    let id = channel.id();
    let (mut read, write) = channel.split();
    let mut out = ChannelOut { id, handle, write, record: None };
    let Some(request) = read_request(&mut read).await else { return };
    if let Some(kind) = request.journal_kind() {
        let command = match &request.kind {
            Kind::Command(command) => Some(command.as_str()),
            _ => None,
        };
        out.record = Some(shared.journal.start(&grant, kind, command));
    }
    match crate::plan::plan(&grant, request, &*shared) {
        Ok(plan) => {
            let node_id = shared.identity().node_id;
            let cx = crate::launch::Context { sessions: &shared.sessions, node_id: &node_id };
            crate::launch::launch(plan, &grant, cx, read, out).await;
        }
        Err(refusal) => {
            match &refusal {
                Refusal::Runtime { .. } | Refusal::RuntimeTransfer(_) | Refusal::NotMapped(_) => {
                    tracing::warn!(user = %grant.user, isolation = %grant.isolation, reason = %refusal, "refused a request");
                }
                _ => tracing::info!(user = %grant.user, reason = %refusal, "refused a request"),
            }
            out.refuse(&refusal.to_string()).await;
        }
    }
}

/// What the channel asks for: its exec request, or (after a terminal request) a shell
/// request, or a subsystem — with the terminal and the deadline asked for before it.
/// None when the channel closes first.
async fn read_request(read: &mut russh::ChannelReadHalf) -> Option<Request> {
    let (mut pty, mut timeout, mut job) = (None, None, None);
    let kind = loop {
        match read.wait().await? {
            ChannelMsg::Exec { command, .. } => break Kind::Command(String::from_utf8_lossy(&command).into_owned()),
            ChannelMsg::RequestShell { .. } => break Kind::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break Kind::Subsystem(name),
            ChannelMsg::RequestPty { term, col_width, row_height, .. } => {
                pty = Some(crate::pty::PtyRequest { term, cols: col_width, rows: row_height });
            }
            ChannelMsg::SetEnv { variable_name, variable_value, .. } if variable_name == proto::exec::TIMEOUT_ENV => {
                timeout = proto::exec::parse_timeout(&variable_value);
            }
            ChannelMsg::SetEnv { variable_name, variable_value, .. } if variable_name == proto::exec::JOB_ENV => {
                job = Some(variable_value);
            }
            ChannelMsg::Close | ChannelMsg::Eof => return None,
            _ => continue,
        }
    };
    Some(Request { kind, pty, timeout, job })
}
