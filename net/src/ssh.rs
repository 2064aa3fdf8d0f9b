//! The SSH client side: dial a node, accept it only with a host certificate from the fleet's
//! CA naming the expected node id, authenticate with a user certificate, run commands.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use trust::{Certificate, PrivateKey, PublicKey};

use crate::halt::{Halt, Stops};
use crate::transport::Transport;

/// How long a command has to end after the caller's signal was passed on to it, before
/// its channel is closed (and the agent stops it).
pub const SIGNAL_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach node {node} at {addr}: {why}")]
    Unreachable { node: String, addr: String, why: String },
    #[error("node {node} at {addr} was refused: {why}")]
    HostRejected { node: String, addr: String, why: HostRefusal },
    #[error(
        "node {node} refused the user certificate (its agent log says why); retry, and if it persists log in again"
    )]
    AuthRejected { node: String },
    /// The node did not start an SFTP session.
    #[error("file transfer with node {node} failed: {why}")]
    Sftp { node: String, why: String },
    /// A port forward could not be set up, or one of its connections could not be opened.
    #[error("port forwarding through node {node} failed: {why}")]
    Forward { node: String, why: String },
    /// The command was running when the connection broke; its outcome is unknown.
    #[error("connection to node {node} lost: {why}")]
    Lost { node: String, why: String },
    /// The connection could not start the command; nothing ran, so a retry is safe.
    #[error("connection to node {node} is no longer usable: {why}")]
    Stale { node: String, why: String },
    #[error("cancelled")]
    Cancelled,
    /// The call's deadline passed: the command was signalled and its channel closed.
    #[error("timed out")]
    TimedOut,
    /// The caller was signalled: the signal was passed on and the command did not end
    /// within a moment, so it was stopped.
    #[error("stopped by signal {0}")]
    Interrupted(&'static str),
    /// The command's output could not be written where it goes; the command was stopped.
    #[error("cannot write the command's output: {0}")]
    Output(std::io::Error),
}

/// Where a remote command's output goes.
pub trait Output: Send {
    /// A chunk of stdout; an error means it cannot be delivered, and the command is stopped.
    fn stdout(&mut self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// A chunk of stderr.
    fn stderr(&mut self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Where a remote command's stdin comes from: chunks, then `None` for end of input.
pub trait Input: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// Output into two async writers (a terminal, a pipe, a file, a buffer).
pub struct Writers<O, E> {
    pub stdout: O,
    pub stderr: E,
}

impl<O: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send> Output for Writers<O, E> {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stdout.write_all(data).await?;
        self.stdout.flush().await
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stderr.write_all(data).await?;
        self.stderr.flush().await
    }
}

/// Input from an async reader, until it reports end of file or fails.
pub struct Reader<R>(pub R);

impl<R: AsyncRead + Unpin + Send + 'static> Input for Reader<R> {
    async fn next(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        match self.0.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
        }
    }
}

/// No input: the command sees end of file at once.
pub struct NoInput;

impl Input for NoInput {
    async fn next(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// Input from a channel of chunks (closing the sender ends the input).
impl Input for tokio::sync::mpsc::Receiver<Vec<u8>> {
    async fn next(&mut self) -> Option<Vec<u8>> {
        self.recv().await
    }
}

/// Where a node is, how to reach it, and how to recognise it.
#[derive(Clone, Debug)]
pub struct NodeTarget {
    /// What its host certificate must name.
    pub node_id: String,
    /// What messages call it: its name, as people know it.
    pub name: String,
    pub addr: String,
    pub via: Transport,
    pub ca: PublicKey,
}

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal { name: String, core_dumped: bool, message: String },
}

impl ExitStatus {
    /// The code the CLI exits with: the remote code, or 128+N for a signal, as ssh does.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitStatus::Code(c) => (*c).min(255) as u8,
            ExitStatus::Signal { name, .. } => proto::exec::signal_exit_code(name),
        }
    }
}

struct HostCheck {
    target: NodeTarget,
    refusal: Arc<Mutex<Option<HostRefusal>>>,
    remote_forwards: RemoteForwards,
    /// Why the connection ended, once it has.
    ended: Ended,
}

/// Why a connection ended, in a caller's words, once it has: said when a command that was
/// running on it is cut short.
type Ended = Arc<Mutex<Option<String>>>;

/// How a dead node is noticed: no answer to `max` keepalives sent `interval` apart on an
/// otherwise silent connection (OpenSSH's `ServerAliveInterval`/`ServerAliveCountMax`).
/// 10 s and 3 by default; `OPENBOX_SERVER_ALIVE_INTERVAL` (a duration such as `10s`) and
/// `OPENBOX_SERVER_ALIVE_COUNT_MAX` change them.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub interval: Duration,
    pub max: usize,
}

impl Keepalive {
    pub const DEFAULT: Keepalive = Keepalive { interval: Duration::from_secs(10), max: 3 };

    /// The settings of this process's environment (the defaults where it says nothing usable).
    pub fn from_env() -> Keepalive {
        let interval = std::env::var("OPENBOX_SERVER_ALIVE_INTERVAL")
            .ok()
            .and_then(|v| proto::parse_secs(&v).ok())
            .filter(|s| *s > 0)
            .map_or(Keepalive::DEFAULT.interval, Duration::from_secs);
        let max = std::env::var("OPENBOX_SERVER_ALIVE_COUNT_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|m| *m > 0)
            .unwrap_or(Keepalive::DEFAULT.max);
        Keepalive { interval, max }
    }

    /// How long a dead peer can go unnoticed.
    pub fn window(&self) -> Duration {
        self.interval * u32::try_from(self.max + 1).unwrap_or(u32::MAX)
    }
}

/// How long reaching a node and its SSH greeting may take before the dial gives up over
/// `via`: `OPENBOX_CONNECT_TIMEOUT` (a duration) when set; else 10 s over TCP, and 30 s
/// over the tailnet, where a peer may take that long to hear of a node that just joined.
pub fn connect_timeout(via: &Transport) -> Duration {
    let default = match via {
        Transport::Tcp => 10,
        Transport::Tailnet(_) => 30,
    };
    std::env::var("OPENBOX_CONNECT_TIMEOUT")
        .ok()
        .and_then(|v| proto::parse_secs(&v).ok())
        .filter(|s| *s > 0)
        .map_or(Duration::from_secs(default), Duration::from_secs)
}

/// Where connections to each port the node listens on for us (`-R`) go here.
type RemoteForwards = Arc<Mutex<std::collections::HashMap<u32, (String, u16)>>>;

/// How long connecting a forwarded connection onward may take.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl client::Handler for HostCheck {
    type Error = russh::Error;

    /// Notes why the connection ended, for a command cut short by it.
    async fn disconnected(&mut self, reason: client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let why = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) if info.message.is_empty() => {
                "the node closed the connection".to_owned()
            }
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the node closed the connection: {}", info.message)
            }
            client::DisconnectReason::Error(russh::Error::KeepaliveTimeout) => {
                let k = Keepalive::from_env();
                format!(
                    "it stopped answering: no reply to {} keepalives in {}s (it is frozen, or the network to it is down)",
                    k.max,
                    k.window().as_secs()
                )
            }
            client::DisconnectReason::Error(e) => e.to_string(),
        };
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        match host_verdict(key.certificate(), &self.target, proto::time::control_now()) {
            Ok(()) => Ok(true),
            Err(why) => {
                tracing::warn!(node = %self.target.node_id, addr = %self.target.addr, %why, "host certificate refused");
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }

    /// A connection to a port the node listens on for us (`-R`): connected onward to its
    /// target here, or refused when no forward of ours names that port.
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let target = self.remote_forwards.lock().unwrap_or_else(|e| e.into_inner()).get(&connected_port).cloned();
        let Some((host, port)) = target else {
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port)));
            match connected.await {
                Ok(Ok(mut tcp)) => {
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(target = %format!("{host}:{port}"), error = %e, "a forwarded connection could not be made");
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                }
                Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }
}

/// Why a node's host key was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HostRefusal {
    #[error(
        "its host certificate is not acceptable: it presented a bare host key, not a host certificate from this fleet's CA"
    )]
    BareKey,
    #[error(
        "its host certificate expired {}: the node renews it at its next heartbeat that reaches its control plane (`openbox nodes` shows when each node's ends)",
        proto::time::ago(*now, Some(*valid_before))
    )]
    Lapsed { valid_before: u64, now: u64 },
    #[error("its host certificate is not acceptable: {0}")]
    Certificate(#[from] trust::TrustError),
}

/// Whether a node may be talked to: only with a host certificate from the fleet's CA,
/// valid at `now`, naming the node id the caller meant to reach. Why not, otherwise.
fn host_verdict(cert: Option<&Certificate>, target: &NodeTarget, now: u64) -> Result<(), HostRefusal> {
    match cert {
        Some(cert) => trust::verify_host_cert(cert, &target.ca, &target.node_id, now).map_err(|e| match e {
            trust::TrustError::Expired { valid_before, now } => HostRefusal::Lapsed { valid_before, now },
            e => e.into(),
        }),
        None => Err(HostRefusal::BareKey),
    }
}

fn client_config() -> Arc<client::Config> {
    // Ask for the host's certificate; a bare host key is then refused by HostCheck.
    // AES-GCM first: with hardware AES it is the fastest cipher both ends offer.
    let preferred = russh::Preferred {
        host_key_certificates: Cow::Borrowed(&[russh::keys::Algorithm::Ed25519]),
        cipher: Cow::Borrowed(&[russh::cipher::AES_256_GCM, russh::cipher::CHACHA20_POLY1305]),
        ..Default::default()
    };
    let keepalive = Keepalive::from_env();
    Arc::new(client::Config {
        preferred,
        nodelay: true,
        keepalive_interval: Some(keepalive.interval),
        keepalive_max: keepalive.max,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        ..Default::default()
    })
}

/// A connection to one node whose host certificate has been verified.
pub struct Connection {
    handle: Handle<HostCheck>,
    node: String,
    remote_forwards: RemoteForwards,
    ended: Ended,
}

/// Dials the node through its transport and verifies its host certificate, within
/// [`connect_timeout`]: a node that accepts the connection but never speaks (frozen) is
/// given up on.
pub async fn dial(target: &NodeTarget) -> Result<Connection, SshError> {
    dial_within(target, connect_timeout(&target.via)).await
}

/// As [`dial`], giving up after `limit` (shorter when there is another way to try).
pub async fn dial_within(target: &NodeTarget, limit: Duration) -> Result<Connection, SshError> {
    match tokio::time::timeout(limit, dial_now(target)).await {
        Ok(dialled) => dialled,
        Err(_) => Err(SshError::Unreachable {
            node: target.name.clone(),
            addr: target.addr.clone(),
            why: format!("no answer within {}s", limit.as_secs_f64().round() as u64),
        }),
    }
}

async fn dial_now(target: &NodeTarget) -> Result<Connection, SshError> {
    let node = target.name.clone();
    let unreachable = |why: String| SshError::Unreachable { node: node.clone(), addr: target.addr.clone(), why };
    let stream = target.via.connect(&target.addr).await.map_err(|e| unreachable(e.to_string()))?;
    let refusal = Arc::new(Mutex::new(None));
    let remote_forwards = RemoteForwards::default();
    let ended = Ended::default();
    let check = HostCheck {
        target: target.clone(),
        refusal: refusal.clone(),
        remote_forwards: remote_forwards.clone(),
        ended: ended.clone(),
    };
    match client::connect_stream(client_config(), stream, check).await {
        Ok(handle) => Ok(Connection { handle, node, remote_forwards, ended }),
        Err(e) => {
            if let Some(why) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(SshError::HostRejected { node, addr: target.addr.clone(), why });
            }
            Err(unreachable(format!("SSH handshake failed: {e}")))
        }
    }
}

impl Connection {
    /// Authenticates as `user` with a user certificate for `key`.
    pub async fn authenticate(&mut self, user: &str, key: Arc<PrivateKey>, cert: Certificate) -> Result<(), SshError> {
        let lost = |e: russh::Error| SshError::Lost { node: self.node.clone(), why: e.to_string() };
        let res = self.handle.authenticate_openssh_cert(user, key, cert).await.map_err(lost)?;
        if res.success() { Ok(()) } else { Err(SshError::AuthRejected { node: self.node.clone() }) }
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// The connection has ended: why, as [`SshError::Lost`] (none while it is open).
    pub fn lost(&self) -> Option<SshError> {
        if !self.is_closed() {
            return None;
        }
        let why = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(SshError::Lost { node: self.node.clone(), why: why.unwrap_or_else(|| "the connection closed".into()) })
    }

    /// Runs `command` on the node: feeds it `input`, streams its stdout and stderr into
    /// `output` as they arrive, and returns how it ended. If `cancel` completes first, the
    /// channel is closed (the agent then kills the command) and [`SshError::Cancelled`] is
    /// returned. A failure before the command started is [`SshError::Stale`]: the
    /// connection is unusable and the command can safely be retried on a new one.
    pub async fn exec(
        &self,
        command: &str,
        input: impl Input,
        output: &mut impl Output,
        cancel: impl Future<Output = ()>,
    ) -> Result<ExitStatus, SshError> {
        self.start(command, &[]).await?.finish(input, output, cancel).await
    }

    /// Opens a channel and starts `command` on it. Fails with [`SshError::Stale`] when the
    /// connection cannot: then nothing ran.
    pub async fn start(&self, command: &str, env: &[(&str, &str)]) -> Result<Started, SshError> {
        let stale = |e: russh::Error| SshError::Stale { node: self.node.clone(), why: e.to_string() };
        let channel = self.handle.channel_open_session().await.map_err(stale)?;
        for (name, value) in env {
            channel.set_env(false, *name, *value).await.map_err(stale)?;
        }
        channel.exec(true, command).await.map_err(stale)?;
        Ok(Started { channel, node: self.node.clone(), resizes: None, ended: self.ended.clone() })
    }

    /// Opens a channel with a pseudo-terminal like `pty` and starts `command` in it, or the
    /// user's login shell when there is none. Fails with [`SshError::Stale`] as
    /// [`Connection::start`] does.
    pub async fn start_in_pty(
        &self,
        command: Option<&str>,
        env: &[(&str, &str)],
        pty: &PtySpec,
    ) -> Result<Started, SshError> {
        let stale = |e: russh::Error| SshError::Stale { node: self.node.clone(), why: e.to_string() };
        let channel = self.handle.channel_open_session().await.map_err(stale)?;
        for (name, value) in env {
            channel.set_env(false, *name, *value).await.map_err(stale)?;
        }
        channel.request_pty(false, &pty.term, pty.cols, pty.rows, 0, 0, &[]).await.map_err(stale)?;
        match command {
            Some(command) => channel.exec(true, command).await.map_err(stale)?,
            None => channel.request_shell(true).await.map_err(stale)?,
        }
        Ok(Started { channel, node: self.node.clone(), resizes: None, ended: self.ended.clone() })
    }

    /// Opens a channel with `env` set and starts SSH subsystem `name` on it. Fails with
    /// [`SshError::Stale`] as [`Connection::start`] does.
    pub async fn start_subsystem(&self, name: &str, env: &[(&str, &str)]) -> Result<Started, SshError> {
        let stale = |e: russh::Error| SshError::Stale { node: self.node.clone(), why: e.to_string() };
        let channel = self.handle.channel_open_session().await.map_err(stale)?;
        for (name, value) in env {
            channel.set_env(false, *name, *value).await.map_err(stale)?;
        }
        channel.request_subsystem(true, name).await.map_err(stale)?;
        Ok(Started { channel, node: self.node.clone(), resizes: None, ended: self.ended.clone() })
    }

    /// Asks the agent to run SSH subsystem `name` (no input, no output expected).
    pub async fn subsystem(&self, name: &str) -> Result<ExitStatus, SshError> {
        let stale = |e: russh::Error| SshError::Stale { node: self.node.clone(), why: e.to_string() };
        let channel = self.handle.channel_open_session().await.map_err(stale)?;
        channel.request_subsystem(true, name).await.map_err(stale)?;
        let mut output = Writers { stdout: tokio::io::sink(), stderr: tokio::io::sink() };
        Started { channel, node: self.node.clone(), resizes: None, ended: self.ended.clone() }
            .finish(NoInput, &mut output, std::future::pending())
            .await
    }

    /// A byte stream to `host:port` as seen from the node (`-L`), for a connection that
    /// came from `from` here.
    pub async fn direct_tcpip(
        &self,
        host: &str,
        port: u16,
        from: std::net::SocketAddr,
    ) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), from.ip().to_string(), u32::from(from.port()))
            .await
            .map_err(|e| SshError::Forward { node: self.node.clone(), why: format!("to {host}:{port}: {e}") })?;
        Ok(channel.into_stream())
    }

    /// An SFTP session with the node's SFTP server, on a channel of its own.
    pub async fn sftp(&self) -> Result<russh_sftp::client::SftpSession, SshError> {
        let stale = |e: russh::Error| SshError::Stale { node: self.node.clone(), why: e.to_string() };
        let mut channel = self.handle.channel_open_session().await.map_err(stale)?;
        channel.request_subsystem(true, "sftp").await.map_err(stale)?;
        let refused = |why: &str| SshError::Sftp { node: self.node.clone(), why: why.to_owned() };
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err(refused(
                        "it refused SFTP (file transfer needs a native certificate outside a session; its agent log says why)",
                    ));
                }
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return Err(refused("it closed the channel")),
                Some(_) => {}
            }
        }
        // Larger writes, more of them in flight: a file streams at the speed of the link, not
        // of round trips (our server takes packets up to 256 KiB, as OpenSSH's does).
        let config = russh_sftp::client::Config {
            request_timeout_secs: 120,
            max_write_packet_len: 128 * 1024,
            max_concurrent_writes: 32,
            max_concurrent_reads: 32,
            ..Default::default()
        };
        russh_sftp::client::SftpSession::new_with_config(channel.into_stream(), config)
            .await
            .map_err(|e| refused(&format!("the SFTP session did not start: {e}")))
    }

    /// Asks the node to listen on its loopback `port` (0: any free one) and send each
    /// connection back here, to `target` (`-R`); the port it listens on.
    pub async fn remote_forward(&self, port: u16, target: (String, u16)) -> Result<u16, SshError> {
        let refused = |why: String| SshError::Forward { node: self.node.clone(), why };
        let forwards = self.remote_forwards.clone();
        let register = |port: u32| forwards.lock().unwrap_or_else(|e| e.into_inner()).insert(port, target.clone());
        if port != 0 {
            register(u32::from(port)); // before the first connection can come
        }
        match self.handle.tcpip_forward("127.0.0.1", u32::from(port)).await {
            Ok(bound) => {
                // The node names the port only when asked for any (RFC 4254 7.1).
                let bound = if port == 0 { bound } else { u32::from(port) };
                register(bound);
                u16::try_from(bound).map_err(|_| refused(format!("the node listens on {bound}, not a port")))
            }
            Err(e) => {
                forwards.lock().unwrap_or_else(|e| e.into_inner()).remove(&u32::from(port));
                Err(refused(format!(
                    "it would not listen on 127.0.0.1:{port} ({e}); the port may be in use there, need root, or your certificate not permit forwarding (its agent log says which)"
                )))
            }
        }
    }

    /// Stops a forward [`Connection::remote_forward`] started.
    pub async fn cancel_remote_forward(&self, port: u16) {
        let _ = self.handle.cancel_tcpip_forward("127.0.0.1", u32::from(port)).await;
        self.remote_forwards.lock().unwrap_or_else(|e| e.into_inner()).remove(&u32::from(port));
    }

    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// A pseudo-terminal for a command: the caller's terminal type and size.
#[derive(Clone, Debug)]
pub struct PtySpec {
    /// `TERM`, e.g. `xterm-256color`.
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// A command that has started on a node.
pub struct Started {
    channel: russh::Channel<client::Msg>,
    node: String,
    /// New terminal sizes (columns, rows) to pass on while it runs.
    resizes: Option<tokio::sync::mpsc::Receiver<(u32, u32)>>,
    /// Why its connection ended, should it end under the command.
    ended: Ended,
}

impl Started {
    pub(crate) fn new(channel: russh::Channel<client::Msg>, node: String) -> Started {
        Started { channel, node, resizes: None, ended: Ended::default() }
    }

    /// Passes each size from `resizes` on to the command's terminal while it runs.
    pub fn with_resizes(mut self, resizes: tokio::sync::mpsc::Receiver<(u32, u32)>) -> Started {
        self.resizes = Some(resizes);
        self
    }

    /// Feeds the command `input`, streams its output, and returns how it ended; `cancel`
    /// completing (the caller gone) stops it.
    pub async fn finish(
        self,
        input: impl Input,
        output: &mut impl Output,
        cancel: impl Future<Output = ()>,
    ) -> Result<ExitStatus, SshError> {
        self.finish_until(input, output, &mut crate::halt::GoneWhen::new(cancel)).await
    }

    /// As [`Started::finish`], stopped as `stops` says (see [`Halt`]): the caller gone
    /// ([`SshError::Cancelled`]); a signal passed on, then the command given
    /// [`SIGNAL_GRACE`] to end (its status, if it does; else [`SshError::Interrupted`]); the
    /// deadline ([`SshError::TimedOut`], the command signalled with TERM). Whatever stops
    /// it, the channel is closed, so the agent ends the command.
    pub async fn finish_until(
        self,
        input: impl Input,
        output: &mut impl Output,
        stops: &mut impl crate::halt::Stops,
    ) -> Result<ExitStatus, SshError> {
        let (mut read, write) = self.channel.split();
        let write = Arc::new(write);

        let feeder = {
            let write = write.clone();
            let mut input = input;
            tokio::spawn(async move {
                while let Some(chunk) = input.next().await {
                    if write.data_bytes(chunk).await.is_err() {
                        return;
                    }
                }
                let _ = write.eof().await;
            })
        };

        let mut status = None;
        let mut resizes = self.resizes;
        // Set once a signal has been passed on: the command then has until here to end.
        let mut grace: Option<(tokio::time::Instant, &'static str)> = None;
        let ended = loop {
            let msg = tokio::select! {
                m = read.wait() => m,
                halt = stops.next() => match halt {
                    Halt::Signal(name) => {
                        if let Some(sig) = ssh_sig(name) {
                            let _ = write.signal(sig).await;
                        }
                        grace.get_or_insert((tokio::time::Instant::now() + SIGNAL_GRACE, name));
                        continue;
                    }
                    halt => break Err(halted(halt, &write).await),
                },
                () = async { tokio::time::sleep_until(grace.expect("guarded").0).await }, if grace.is_some() => {
                    break Err(SshError::Interrupted(grace.expect("guarded").1));
                }
                Some((cols, rows)) = async { resizes.as_mut()?.recv().await }, if resizes.is_some() => {
                    let _ = write.window_change(cols, rows, 0, 0).await;
                    continue;
                }
            };
            // Output that cannot be delivered is never dropped quietly: the command stops,
            // as a local one would on SIGPIPE, and the caller hears why. A caller that
            // goes away while its output waits for room is noticed all the same, and so
            // is the deadline. `Err(None)`: the caller went away first.
            let delivered = match &msg {
                Some(ChannelMsg::Data { data }) => Some(deliver(output.stdout(data), stops, &write).await),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    Some(deliver(output.stderr(data), stops, &write).await)
                }
                _ => None,
            };
            match delivered {
                Some(Ok(())) => continue,
                Some(Err(why)) => break Err(why),
                None => {}
            }
            match msg {
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(ExitStatus::Code(exit_status)),
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
                    let name = sig_name(&signal_name);
                    status = Some(ExitStatus::Signal { name, core_dumped, message: error_message });
                }
                Some(ChannelMsg::Close) | None => break Ok(()),
                Some(_) => {}
            }
        };
        feeder.abort();
        if ended.is_err() {
            // Stop the command: closing the channel makes the agent end it. Our read half
            // goes first, so that russh's connection loop, which may be waiting to hand us
            // more output, is free to send the close.
            drop(read);
            let _ = tokio::time::timeout(Duration::from_secs(5), write.close()).await;
        }
        ended?;
        if status.is_none() {
            // The connection's own end is noted a moment after its channels end.
            for _ in 0..20 {
                if self.ended.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        status.ok_or_else(|| {
            let said = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let why = said.unwrap_or_else(|| "the connection closed while the command was running".into());
            SshError::Lost { node: self.node.clone(), why }
        })
    }
}

/// The russh signal for an SSH signal name (`TERM`).
fn ssh_sig(name: &str) -> Option<russh::Sig> {
    use russh::Sig::*;
    let all = [ABRT, ALRM, FPE, HUP, ILL, INT, KILL, PIPE, QUIT, SEGV, TERM, USR1];
    match all.into_iter().find(|s| sig_name(s) == name) {
        Some(sig) => Some(sig),
        None => proto::exec::signal_number(name).map(|_| russh::Sig::Custom(name.to_owned())),
    }
}

/// What a halt that ends the wait for a command means: the deadline signals it first.
async fn halted(halt: Halt, write: &russh::ChannelWriteHalf<client::Msg>) -> SshError {
    match halt {
        Halt::Deadline => {
            let _ = write.signal(russh::Sig::TERM).await;
            SshError::TimedOut
        }
        Halt::Gone => SshError::Cancelled,
        Halt::Signal(name) => SshError::Interrupted(name),
    }
}

/// Waits for output to be taken by the caller (`written`), hearing halts meanwhile: a
/// signal is passed on and the wait goes on; the caller gone or the deadline end it.
async fn deliver(
    written: impl Future<Output = std::io::Result<()>>,
    stops: &mut impl Stops,
    write: &russh::ChannelWriteHalf<client::Msg>,
) -> Result<(), SshError> {
    tokio::pin!(written);
    loop {
        tokio::select! {
            r = &mut written => return r.map_err(SshError::Output),
            halt = stops.next() => match halt {
                Halt::Signal(name) => {
                    if let Some(sig) = ssh_sig(name) {
                        let _ = write.signal(sig).await;
                    }
                }
                halt => return Err(halted(halt, write).await),
            },
        }
    }
}

fn sig_name(sig: &russh::Sig) -> String {
    match sig {
        russh::Sig::Custom(name) => name.clone(),
        // russh's names for the standard signals are SSH's, as its Debug output spells them.
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(ca: &trust::Ca) -> NodeTarget {
        NodeTarget {
            node_id: "n1".into(),
            name: "one".into(),
            addr: "127.0.0.1:1".into(),
            via: Transport::Tcp,
            ca: ca.public_key().clone(),
        }
    }

    #[test]
    fn a_node_is_accepted_only_with_a_valid_host_certificate_for_it_from_the_fleets_ca() {
        let ca = trust::Ca::generate();
        let host = trust::generate_key();
        let now = 1_000_000;
        let cert = |ca: &trust::Ca, node: &str, after: u64, before: u64| {
            ca.sign_host(host.public_key(), node, after, before).expect("sign")
        };
        let t = target(&ca);
        assert!(host_verdict(Some(&cert(&ca, "n1", now - 10, now + 10)), &t, now).is_ok());

        let refused = |c: Option<&Certificate>, needle: &str| {
            let why = host_verdict(c, &t, now).expect_err("must be refused").to_string();
            assert!(why.contains(needle), "{why}");
        };
        refused(None, "bare host key");
        refused(Some(&cert(&trust::Ca::generate(), "n1", now - 10, now + 10)), "certificate authority");
        refused(Some(&cert(&ca, "n2", now - 10, now + 10)), "not \"n1\"");
        refused(Some(&cert(&ca, "n1", now - 100, now - 10)), "expired");
        refused(Some(&cert(&ca, "n1", now + 10, now + 100)), "not valid until");
    }

    #[test]
    fn russh_names_its_signals_as_the_shared_table_does() {
        use russh::Sig::*;
        for sig in [ABRT, ALRM, FPE, HUP, ILL, INT, KILL, PIPE, QUIT, SEGV, TERM, USR1] {
            let name = sig_name(&sig);
            assert!(proto::exec::signal_number(&name).is_some(), "{name}");
        }
        assert_eq!(sig_name(&Custom("USR2".into())), "USR2");
    }

    #[test]
    fn exit_codes_are_the_remote_code_or_128_plus_the_signal() {
        assert_eq!(ExitStatus::Code(3).exit_code(), 3);
        assert_eq!(ExitStatus::Code(300).exit_code(), 255);
        let killed = |name: &str| ExitStatus::Signal { name: name.into(), core_dumped: false, message: String::new() };
        assert_eq!(killed("TERM").exit_code(), 143);
        assert_eq!(killed("USR2").exit_code(), 140);
    }
}
