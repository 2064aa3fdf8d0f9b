//! The agent's SSH server. The russh handler only translates callbacks: authentication
//! goes to [`trust::verify_user_cert`], and each session channel is handed to its own task
//! in [`crate::exec`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use tokio::net::TcpListener;
use trust::{Certificate, UserGrant};

use crate::channel::{ChannelOut, Outcome};
use crate::exec;
use crate::identity::Identity;
use crate::run_as::RunAs;
use crate::runtimes::Runtimes;
use crate::session::{Files, Job, Sessions};

/// State every connection reads: the identity (whose host certificate may be renewed) and
/// the SSH server configuration built from it.
pub struct Shared {
    identity: RwLock<Identity>,
    ssh_config: RwLock<Arc<russh::server::Config>>,
    pub sessions: Arc<Sessions>,
    pub runtimes: Runtimes,
    unauthenticated: Mutex<Unauthenticated>,
    /// Users removed from the fleet, as the control plane said in heartbeat replies.
    revoked: Mutex<std::collections::HashSet<proto::api::RevokedUser>>,
    /// For users whose access was narrowed lately (by incarnation): certificates issued
    /// before this time are refused.
    cutoffs: Mutex<std::collections::HashMap<String, u64>>,
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

    /// Whether `grant` is a removed user's. A certificate naming no incarnation (from an
    /// older control plane) counts as removed when a user of its name was.
    /// Why a connection's grant no longer holds, if it does not: a pooled connection may
    /// outlive the certificate that opened it, and its user. Checked on every request.
    fn lapsed(&self, grant: &UserGrant) -> Option<String> {
        if proto::time::control_now() >= grant.valid_before {
            return Some("the user certificate for this connection has expired; reconnect".into());
        }
        if self.is_cut_off(grant) {
            return Some(format!(
                "{}'s access to this node changed after this certificate was issued; connect again for a new one",
                grant.user
            ));
        }
        self.is_revoked(grant).then(|| format!("user {} was removed from this fleet", grant.user))
    }

    /// Whether the grant's user was removed from the fleet, or its certificate was issued
    /// before its access here was last narrowed: either way it is good for nothing.
    fn is_revoked(&self, grant: &UserGrant) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.iter().any(|r| match &grant.incarnation {
            Some(i) => *i == r.incarnation,
            None => r.name == grant.user,
        })
    }

    fn is_cut_off(&self, grant: &UserGrant) -> bool {
        let cutoffs = self.cutoffs.lock().unwrap_or_else(|e| e.into_inner());
        let key = grant.incarnation.as_deref().unwrap_or(&grant.user);
        // Cut off in the second it was issued, too: the control plane issues none in the
        // second of a cut-off after it (see `placement::dispatch`).
        cutoffs.get(key).is_some_and(|cutoff| grant.issued_at <= *cutoff)
    }

    /// Takes in when users' access was last narrowed, as heartbeat replies say: from now
    /// on their certificates from before then are refused, on open connections too.
    pub fn cut_off(&self, cutoffs: Vec<proto::api::CertCutoff>) {
        let mut known = self.cutoffs.lock().unwrap_or_else(|e| e.into_inner());
        for c in cutoffs {
            let at = known.entry(c.incarnation).or_default();
            if c.cutoff > *at {
                tracing::info!(user = %c.name, cutoff = c.cutoff, "certificates issued before a change of access are refused");
                *at = c.cutoff;
            }
        }
    }

    /// Takes in the removed users a heartbeat reply names: from now on their certificates
    /// are refused, on open connections too, and their sessions are ended.
    pub async fn revoke(&self, users: Vec<proto::api::RevokedUser>) {
        let fresh: Vec<proto::api::RevokedUser> = {
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            users.into_iter().filter(|u| revoked.insert(u.clone())).collect()
        };
        for user in fresh {
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
            revoked: Mutex::default(),
            cutoffs: Mutex::default(),
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
    /// The grant to forward ports with, or why there is none — checked on every request:
    /// a pooled connection may outlive its certificate, and its user.
    fn forwarding(&self) -> Result<&UserGrant, String> {
        let grant = self.grant.as_ref().ok_or("not authenticated")?;
        if let Some(why) = self.shared.lapsed(grant) {
            return Err(why);
        }
        match crate::forward::refusal(grant) {
            Some(why) => Err(why),
            None => Ok(grant),
        }
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
            Ok(grant) if self.shared.is_cut_off(&grant) => {
                tracing::warn!(peer = %self.peer, %user, key_id = %grant.key_id, "refused a certificate issued before its user's access changed");
                Ok(Auth::reject())
            }
            Ok(grant) if self.shared.is_revoked(&grant) => {
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
        if self.shared.is_cut_off(&grant) {
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
            "sftp" => self.grant.as_ref().is_some_and(|g| sftp_refusal(g, &self.shared).is_none()),
            proto::exec::END_SESSION_SUBSYSTEM => true,
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

/// Waits for the channel's exec request (or, after a terminal request, a shell request),
/// then runs it under the isolation the certificate names — in the certificate's session
/// when it names one. Anything else (but the session-ending subsystem) is refused.
async fn serve_channel(channel: Channel<Msg>, grant: UserGrant, handle: russh::server::Handle, shared: Arc<Shared>) {
    let id = channel.id();
    let (mut read, write) = channel.split();
    let mut out = ChannelOut { id, handle, write, record: None };
    let mut timeout = None;
    let mut pty = None;
    // `None`: the account's login shell, in the terminal asked for.
    let command: Option<String> = loop {
        match read.wait().await {
            Some(ChannelMsg::Exec { command, .. }) => break Some(String::from_utf8_lossy(&command).into_owned()),
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                pty = Some(crate::pty::PtyRequest { term, cols: col_width, rows: row_height });
            }
            Some(ChannelMsg::RequestShell { .. }) if pty.is_some() => break None,
            Some(ChannelMsg::SetEnv { variable_name, variable_value, .. })
                if variable_name == proto::exec::TIMEOUT_ENV =>
            {
                timeout = proto::exec::parse_timeout(&variable_value);
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == proto::exec::END_SESSION_SUBSYSTEM => {
                let Some(session) = &grant.session else {
                    return out.refuse("this certificate names no session to end").await;
                };
                let had = shared.sessions.remove(&grant.user, session).await;
                tracing::info!(user = %grant.user, %session, had_shell = had, "session ended");
                return out.finish(Outcome::Code(0)).await;
            }
            Some(ChannelMsg::RequestShell { .. }) => {
                return out
                    .refuse("a shell needs a terminal: ask for one first (`openbox -n NODE -i`, `ssh -t`)")
                    .await;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                out.record = Some(shared.journal.start(&grant, "sftp", None));
                return serve_sftp(&grant, &shared, timeout, read, out).await;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) => {
                return out.refuse(&format!("subsystem {name:?} is not offered")).await;
            }
            Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return,
            Some(_) => continue,
        }
    };
    // Recorded from here, refusals too: the audit learns what the node ran, and what it
    // would not run, from the node.
    let kind = if command.is_some() { "command" } else { "shell" };
    out.record = Some(shared.journal.start(&grant, kind, command.as_deref()));
    if let Some(why) = shared.lapsed(&grant) {
        return out.refuse(&format!("{why}; nothing was run")).await;
    }
    // The isolation comes from the signed certificate, already parsed strictly; it runs
    // exactly as issued or not at all, with its host paths judged by what they are here.
    let isolation = &grant.isolation;
    let sandbox = match shared.runtimes.prepare(isolation, grant.admin) {
        Ok(sandbox) => sandbox,
        Err(why) => {
            tracing::warn!(user = %grant.user, %isolation, reason = %why, "refused an isolation this node cannot serve now");
            return out
                .refuse(&format!("cannot run {} isolation here: {why}; nothing was run", isolation.kind()))
                .await;
        }
    };
    let hold = sandbox.hold;
    // Whose account it runs as: the mapping's, from the verified principal, or none at all.
    let login = match shared.run_as.login(&grant.user) {
        Ok(login) => login,
        Err(why) => {
            tracing::warn!(user = %grant.user, "refused a user the --run-as mapping does not name");
            return out.refuse(&why).await;
        }
    };
    if let (Some(login), proto::Isolation::Nspawn { .. }) = (login, isolation)
        && login.uid != 0
    {
        return out
            .refuse(&format!(
                "this node runs {}'s commands as {}, and an nspawn container would run them as root; use native or docker isolation",
                grant.user, login.name
            ))
            .await;
    }
    // The command itself may hold secrets (a token in a curl header): only its size and a
    // short hash at info, the text at debug.
    let text = command.as_deref().unwrap_or_default();
    let command_hash = &trust::token::hash(text)[..16];
    let terminal = pty.is_some();
    tracing::info!(user = %grant.user, key_id = %grant.key_id, session = ?grant.session, %isolation, terminal, shell = command.is_none(), command_bytes = text.len(), %command_hash, "exec");
    tracing::debug!(command = %telemetry::untrusted(text), "exec");
    let node_id = shared.identity().node_id;
    let env = [(proto::exec::USER_ENV, grant.user.as_str()), (proto::exec::NODE_ENV, node_id.as_str())];
    let job = |command| Job {
        command,
        isolation,
        sandbox: &sandbox,
        owner: grant.incarnation.as_deref(),
        runtimes: &shared.runtimes,
        env: &env,
        timeout,
        login,
    };
    if let Some(pty) = pty {
        if let Some(session) = &grant.session {
            // An empty command: a login shell.
            let job = job(command.as_deref().unwrap_or_default());
            return shared.sessions.terminal(&grant.user, session, job, &pty, read, out).await;
        }
        if let proto::Isolation::Docker { image, limits } = &sandbox.isolation {
            let engine = shared.runtimes.docker().expect("checked above");
            let spec =
                crate::docker::Spec { image, limits, hold, env: &env, session: None, login, tty: Some(&pty.term) };
            let size = (pty.cols, pty.rows);
            return crate::docker::run_in_terminal(&engine, spec, command.as_deref(), size, timeout, read, out).await;
        }
        let spawn = in_terminal(command.as_deref(), &sandbox, &env, login);
        return crate::pty::run(spawn, &pty, timeout, read, out).await;
    }
    let Some(command) = command else { return }; // a shell is asked for only with a terminal
    if let Some(session) = &grant.session {
        return shared.sessions.run(&grant.user, session, job(&command), &out, read).await;
    }
    match &sandbox.isolation {
        proto::Isolation::Native => exec::run_native(&command, &env, login, hold, timeout, read, out).await,
        proto::Isolation::Nspawn { dir, limits } => {
            let argv = crate::nspawn::one_shot_argv(&command, hold.process_limit());
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let cmd = crate::nspawn::command(dir, limits, hold, &env, &argv);
            exec::run_process(cmd, exec::Tree::Nspawn, None, timeout, read, out).await;
        }
        proto::Isolation::Docker { image, limits } => {
            let engine = shared.runtimes.docker().expect("checked above");
            let spec = crate::docker::Spec { image, limits, hold, env: &env, session: None, login, tty: None };
            crate::docker::run_once(&engine, spec, &command, timeout, read, out).await;
        }
    }
}

/// What runs `command` (or the login shell) in a terminal of its own, natively or in an
/// nspawn container (a Docker engine makes the terminal itself).
fn in_terminal<'a>(
    command: Option<&str>,
    sandbox: &crate::runtimes::Sandbox,
    env: &[(&str, &str)],
    login: Option<&'a crate::run_as::Login>,
) -> crate::pty::Spawn<'a> {
    match &sandbox.isolation {
        proto::Isolation::Nspawn { dir, limits } => {
            let argv: Vec<String> = match command {
                Some(command) => crate::nspawn::one_shot_argv(command, sandbox.hold.process_limit()),
                None => vec!["/bin/sh".into(), "-l".into()],
            };
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let cmd = crate::nspawn::command_in_terminal(dir, limits, sandbox.hold, env, &argv);
            // Mapped accounts other than root were refused nspawn above.
            // nspawn passes the container only what --setenv gives.
            crate::pty::Spawn { cmd, env: crate::pty::Env::Inherit, arg0: None, login: None, tree: exec::Tree::Nspawn }
        }
        proto::Isolation::Docker { .. } => unreachable!("a Docker engine makes its own terminal"),
        proto::Isolation::Native => {
            let (cmd, arg0) = match command {
                Some(command) => {
                    let mut cmd = exec::native_shell(env, login);
                    cmd.arg("-c").arg(command);
                    (cmd, None)
                }
                None => {
                    // A login shell, as sshd starts one: its name with a leading dash.
                    let shell = crate::pty::login_shell(login);
                    let name = shell.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    (exec::native_command(&shell, env, login), Some(format!("-{name}").into()))
                }
            };
            crate::pty::Spawn { cmd, env: crate::pty::Env::Inherit, arg0, login, tree: exec::Tree::Group }
        }
    }
}

/// The `sftp` subsystem: the agent's own SFTP server, started as the account this user's
/// commands run as, so it may touch exactly what that account may.
async fn serve_sftp(
    grant: &UserGrant,
    shared: &Shared,
    timeout: Option<std::time::Duration>,
    read: russh::ChannelReadHalf,
    out: ChannelOut,
) {
    if let Some(why) = sftp_refusal(grant, shared) {
        return out.refuse(&why).await;
    }
    let login = match shared.run_as.login(&grant.user) {
        Ok(login) => login,
        Err(why) => return out.refuse(&why).await,
    };
    tracing::info!(user = %grant.user, key_id = %grant.key_id, session = ?grant.session, "sftp");
    let Some(session) = &grant.session else {
        return start_sftp(None, login, timeout, read, out).await;
    };
    let sandbox = match shared.runtimes.prepare(&grant.isolation, grant.admin) {
        Ok(sandbox) => sandbox,
        Err(why) => return out.refuse(&format!("{why}; nothing was transferred")).await,
    };
    let job = Job {
        command: "",
        isolation: &grant.isolation,
        sandbox: &sandbox,
        owner: grant.incarnation.as_deref(),
        runtimes: &shared.runtimes,
        env: &[],
        timeout,
        login,
    };
    let serve = |files, out: ChannelOut| async move {
        match files {
            Files::Host => start_sftp(None, login, timeout, read, out).await,
            // A container's files are its root's: the server serves them as that root.
            Files::Root(_) if login.is_some_and(|l| l.uid != 0) => {
                out.refuse("file transfer into a container runs as its root, which this node does not map you to")
                    .await;
            }
            Files::Root(pid) => start_sftp(Some(pid), None, timeout, read, out).await,
        }
    };
    shared.sessions.visit(&grant.user, session, job, out, serve).await;
}

/// Starts the agent's SFTP server for the channel: as `login`, over the node's files, or
/// (as root) over the filesystem of the process `root`'s container.
async fn start_sftp(
    root: Option<crate::procs::Proc>,
    login: Option<&crate::run_as::Login>,
    timeout: Option<std::time::Duration>,
    read: russh::ChannelReadHalf,
    out: ChannelOut,
) {
    if root.is_none() && login.is_none() {
        return crate::sftp::serve_in_agent(read, out).await;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return out.refuse(&format!("cannot find the agent's own binary for SFTP: {e}")).await,
    };
    let mut cmd = exec::native_command(&exe, &[], login);
    cmd.arg(crate::sftp::SERVER_ARG);
    if let Some(shell) = root {
        cmd.arg(shell.to_string());
    }
    exec::run_process(cmd, exec::Tree::Group, None, timeout, read, out).await;
}

/// Why `grant` may not have an SFTP server here, if it may not.
fn sftp_refusal(grant: &UserGrant, shared: &Shared) -> Option<String> {
    if let Some(why) = shared.lapsed(grant) {
        return Some(why);
    }
    if grant.isolation != proto::Isolation::Native && grant.session.is_none() {
        return Some(
            "a one-shot container keeps no files to transfer: copy into a session's container (-s SID) or the node"
                .into(),
        );
    }
    shared.run_as.login(&grant.user).err()
}
