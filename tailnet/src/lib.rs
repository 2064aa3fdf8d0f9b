//! A tailnet node inside this process: join a tailnet (Tailscale or Headscale), listen and
//! dial on it, with no system Tailscale install. The safe async wrapper over
//! `openbox-libtailscale-sys`; every `unsafe` block of the mesh is here or there.
//!
//! Blocking C calls run on threads of their own, never on the async runtime; listeners are
//! file descriptors polled with tokio's `AsyncFd`; connections are Unix stream sockets
//! bridged to the tailnet by the Go side. Go's logs go to `tracing` (target `tailscale`).
//! The Go side never uploads logs, never uses Tailscale's public servers for bootstrap, and
//! never reads `TS_AUTHKEY`-style variables: credentials come only through [`Config`].
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtailscale_sys as sys;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

/// Where openbox processes take a tailnet auth key from (the first join only). Commands a
/// node runs never see it.
pub const AUTHKEY_ENV: &str = "OPENBOX_MESH_AUTHKEY";
/// The coordination server openboxd joins (remembered once given).
pub const CONTROL_ENV: &str = "OPENBOX_MESH_CONTROL";

/// Variables tsnet would read a credential from; a tailnet process never has them.
const STRAY_CREDENTIALS: [&str; 6] =
    ["TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_SECRET", "TS_CLIENT_ID", "TS_ID_TOKEN", "TS_AUDIENCE"];

/// Makes sure this process runs with the environment the tailnet needs from its very
/// start — Go reads it once, before `main`: `TS_NO_LOGS_NO_SUPPORT=true` (never upload
/// logs, never use Tailscale's public servers), `TS_DEBUG_USE_DERP_HTTP=1` for a control
/// server on plain http (its DERP relay is plain http too), and none of the
/// `TS_AUTHKEY`-style variables. When that is not so, it starts this program again, in
/// this process, with the environment corrected (and returns only if that fails). Call
/// it first thing in `main`, before any thread starts.
pub fn ensure_environment(plain_http_control: bool) {
    use std::os::unix::process::CommandExt as _;
    const AGAIN: &str = "OPENBOX_TAILNET_ENV";
    let right = std::env::var("TS_NO_LOGS_NO_SUPPORT").is_ok_and(|v| v == "true")
        && (!plain_http_control || std::env::var_os("TS_DEBUG_USE_DERP_HTTP").is_some())
        && STRAY_CREDENTIALS.iter().all(|v| std::env::var_os(v).is_none());
    if right || std::env::var_os(AGAIN).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(AGAIN, "1").env("TS_NO_LOGS_NO_SUPPORT", "true");
    if plain_http_control {
        cmd.env("TS_DEBUG_USE_DERP_HTTP", "1");
    }
    for v in STRAY_CREDENTIALS {
        cmd.env_remove(v);
    }
    let err = cmd.exec();
    eprintln!("openbox: cannot start again with the tailnet's environment ({err})");
}

/// The control URL a process joined once, kept in `file` (private) so that later starts
/// rejoin the same tailnet; refused unless it is an http(s) URL.
pub fn remember_control_url(file: &std::path::Path, url: &str) -> Result<(), TailnetError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(TailnetError::Failed {
            what: "the tailnet control URL",
            why: format!("{url:?} is not an http:// or https:// URL"),
        });
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::json!({ "control_url": url }).to_string();
    std::fs::write(file, text)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The control URL kept by [`remember_control_url`]: `None` when there is none.
pub fn remembered_control_url(file: &std::path::Path) -> Result<Option<String>, TailnetError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let url = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["control_url"].as_str().map(str::to_owned));
    url.map(Some).ok_or_else(|| TailnetError::Failed {
        what: "the remembered tailnet",
        why: format!("{} is damaged", file.display()),
    })
}

/// An auth key; its `Debug` never shows it.
#[derive(Clone)]
pub struct AuthKey(String);

impl AuthKey {
    pub fn new(key: impl Into<String>) -> AuthKey {
        AuthKey(key.into())
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<secret>)")
    }
}

/// How a node joins its tailnet.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the node keeps its state (its identity on the tailnet survives restarts).
    pub dir: PathBuf,
    pub hostname: String,
    /// The coordination server, e.g. `https://headscale.example` or Tailscale's.
    pub control_url: String,
    /// Needed only the first time (or after the state is lost).
    pub auth_key: Option<AuthKey>,
    /// Removed from the tailnet soon after it goes away.
    pub ephemeral: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TailnetError {
    #[error("{what}: {why}")]
    Failed { what: &'static str, why: String },
    #[error("the tailnet auth key has expired; make a new one on the control server")]
    AuthKeyExpired,
    #[error("the tailnet auth key is not valid ({0}); check it, or make a new one on the control server")]
    AuthKeyInvalid(String),
    #[error("the tailnet node did not come up within {}s{}", .0.as_secs(), last_words(.1))]
    UpTimeout(Duration, String),
    #[error(
        "this process did not start with the tailnet's environment (TS_NO_LOGS_NO_SUPPORT=true, no TS_AUTHKEY-style variables); call tailnet::ensure_environment first"
    )]
    Environment,
    /// The listener's node left the tailnet: no more connections will come.
    #[error("the tailnet listener closed")]
    Closed,
    #[error("{0} must not contain a NUL byte")]
    Nul(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn last_words(log: &str) -> String {
    if log.is_empty() { String::new() } else { format!(" (its last log line: {log})") }
}

/// A tailnet node. Dropping it leaves the tailnet (unless `up` is still running, which
/// must not be raced: then it stays until the process ends).
pub struct Node {
    sd: sys::tailscale,
    last_log: Arc<Mutex<String>>,
}

/// Says which it is when the control server refused the auth key: expired, or not valid.
fn refusal(e: TailnetError) -> TailnetError {
    let TailnetError::Failed { why, .. } = &e else { return e };
    let reason = why.rsplit("backend: ").next().unwrap_or(why).trim();
    let lower = reason.to_lowercase();
    if lower.contains("key") && lower.contains("expired") {
        TailnetError::AuthKeyExpired
    } else if lower.contains("auth-key") || lower.contains("authkey") || lower.contains("invalid key") {
        TailnetError::AuthKeyInvalid(reason.to_owned())
    } else {
        e
    }
}

fn cstr(what: &'static str, s: &str) -> Result<CString, TailnetError> {
    CString::new(s).map_err(|_| TailnetError::Nul(what))
}

impl Node {
    /// Configures a node (nothing is sent before [`Node::up`]).
    pub fn new(config: &Config) -> Result<Node, TailnetError> {
        std::fs::create_dir_all(&config.dir)?;
        let dir = cstr("the state directory", &config.dir.to_string_lossy())?;
        let hostname = cstr("the host name", &config.hostname)?;
        let control = cstr("the control URL", &config.control_url)?;
        let key = config.auth_key.as_ref().map(|k| cstr("the auth key", &k.0)).transpose()?;
        // SAFETY: plain calls with valid NUL-terminated strings; the handle is ours.
        let sd = unsafe { sys::tailscale_new() };
        if sd < 0 {
            return Err(TailnetError::Environment);
        }
        let node = Node { sd, last_log: Arc::default() };
        let set = |what: &'static str, rc: c_int| if rc == 0 { Ok(()) } else { Err(node.error(what)) };
        unsafe {
            set("setting the state directory", sys::tailscale_set_dir(sd, dir.as_ptr()))?;
            set("setting the host name", sys::tailscale_set_hostname(sd, hostname.as_ptr()))?;
            set("setting the control URL", sys::tailscale_set_control_url(sd, control.as_ptr()))?;
            set("setting ephemeral", sys::tailscale_set_ephemeral(sd, c_int::from(config.ephemeral)))?;
            if let Some(key) = &key {
                set("setting the auth key", sys::tailscale_set_authkey(sd, key.as_ptr()))?;
            }
        }
        let log_fd = node.route_logs()?;
        // SAFETY: the Go side takes ownership of the descriptor.
        set("routing the logs", unsafe { sys::tailscale_set_logfd(sd, log_fd) })?;
        Ok(node)
    }

    /// A pipe whose read end feeds Go's log lines into `tracing`; returns the write end.
    fn route_logs(&self) -> Result<RawFd, TailnetError> {
        let (reader, writer) = std::io::pipe()?;
        let last = self.last_log.clone();
        std::thread::Builder::new().name("tailscale-log".into()).spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                tracing::debug!(target: "tailscale", "{line}");
                *last.lock().unwrap_or_else(|e| e.into_inner()) = line;
            }
        })?;
        Ok(OwnedFd::from(writer).into_raw_fd())
    }

    /// Joins the tailnet and waits until the node is running on it, for at most `deadline`.
    pub async fn up(&self, deadline: Duration) -> Result<(), TailnetError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sd = self.sd;
        std::thread::Builder::new().name("tailscale-up".into()).spawn(move || {
            // SAFETY: a plain call on our handle; closing it cancels this call first.
            let rc = unsafe { sys::tailscale_up(sd) };
            let _ = tx.send(rc);
        })?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(0)) => Ok(()),
            Ok(_) => Err(refusal(self.error("joining the tailnet"))),
            Err(_) => Err(TailnetError::UpTimeout(deadline, self.last_log())),
        }
    }

    /// The node's tailnet addresses (IPv4 first).
    pub fn ips(&self) -> Result<Vec<IpAddr>, TailnetError> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer and its length match.
        if unsafe { sys::tailscale_getips(self.sd, buf.as_mut_ptr(), buf.len()) } != 0 {
            return Err(self.error("reading the tailnet addresses"));
        }
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        Ok(text.split(',').filter_map(|ip| ip.parse().ok()).collect())
    }

    /// Listens on the tailnet, e.g. on `:22`.
    pub fn listen(&self, addr: &str) -> Result<Listener, TailnetError> {
        let (network, addr) = (cstr("the network", "tcp")?, cstr("the address", addr)?);
        let mut fd: c_int = -1;
        // SAFETY: valid strings and an out pointer to a local.
        if unsafe { sys::tailscale_listen(self.sd, network.as_ptr(), addr.as_ptr(), &mut fd) } != 0 {
            return Err(self.error("listening on the tailnet"));
        }
        // SAFETY: the descriptor is new and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_nonblocking(&fd)?;
        // SAFETY: an OwnedFd keeps its one descriptor open until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| TailnetError::Io(e.into()))?;
        Ok(Listener { fd })
    }

    /// Opens a TCP connection to `addr` (`IP:PORT`) over the tailnet.
    pub async fn dial(&self, addr: &str) -> Result<UnixStream, TailnetError> {
        let (network, addr) = (cstr("the network", "tcp")?, cstr("the address", addr)?);
        let sd = self.sd;
        let fd = tokio::task::spawn_blocking(move || {
            let mut fd: c_int = -1;
            // SAFETY: valid strings and an out pointer to a local; a new descriptor is
            // owned at once, so it is closed even if nobody waits for this any more.
            let rc = unsafe { sys::tailscale_dial(sd, network.as_ptr(), addr.as_ptr(), &mut fd) };
            (rc == 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .await
        .map_err(|e| TailnetError::Failed { what: "dialing over the tailnet", why: e.to_string() })?;
        match fd {
            Some(fd) => stream(fd),
            None => Err(self.error("dialing over the tailnet")),
        }
    }

    fn last_log(&self) -> String {
        self.last_log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The Go side's last error for this node, as a typed error.
    fn error(&self, what: &'static str) -> TailnetError {
        let mut buf = [0 as c_char; 1024];
        // SAFETY: the buffer and its length match.
        unsafe { sys::tailscale_errmsg(self.sd, buf.as_mut_ptr(), buf.len()) };
        let why = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        TailnetError::Failed { what, why: if why.is_empty() { "unknown error".into() } else { why } }
    }
}

impl Drop for Node {
    /// Leaves the tailnet, on a thread of its own (closing cancels a running `up` first,
    /// then waits for the node to stop).
    fn drop(&mut self) {
        let sd = self.sd;
        let closing = std::thread::Builder::new().name("tailscale-close".into()).spawn(move || {
            // SAFETY: the handle is ours and used by no one else any more.
            unsafe { sys::tailscale_close(sd) };
        });
        if closing.is_err() {
            tracing::warn!("could not start a thread to leave the tailnet");
        }
    }
}

/// Accepts connections that come to a node over the tailnet.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
}

impl Listener {
    /// The next connection and the tailnet address it came from.
    pub async fn accept(&self) -> Result<(UnixStream, String), TailnetError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                let mut conn: c_int = -1;
                // SAFETY: a readable listener descriptor and an out pointer to a local.
                match unsafe { sys::tailscale_accept(fd.get_ref().as_raw_fd(), &mut conn) } {
                    0 => Ok(conn),
                    errno => Err(std::io::Error::from_raw_os_error(errno)),
                }
            });
            let conn = match got {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => return Err(TailnetError::Closed),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            };
            let mut buf = [0 as c_char; 128];
            // SAFETY: the buffer and its length match.
            let rc = unsafe {
                sys::tailscale_getremoteaddr(self.fd.get_ref().as_raw_fd(), conn, buf.as_mut_ptr(), buf.len())
            };
            let remote = if rc == 0 {
                unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
            } else {
                String::new()
            };
            // SAFETY: the descriptor was just received and is ours.
            return Ok((stream(unsafe { OwnedFd::from_raw_fd(conn) })?, remote));
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let std: std::os::unix::net::UnixStream = fd.try_clone()?.into();
    std.set_nonblocking(true)
}

fn stream(fd: OwnedFd) -> Result<UnixStream, TailnetError> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    Ok(UnixStream::from_std(std)?)
}

/// Waits for SIGTERM or SIGINT, in a process that runs Go. The handlers are tokio's,
/// re-installed with `SA_ONSTACK`: Go requires that of every handler it did not install
/// itself, since such a signal may land on one of its threads, whose own stack is too
/// small to run a handler on. Call within a tokio runtime.
pub fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGCHLD too: tokio's process support installs its handler once, and children exit
    // all the time. Registering it here installs it now, so the flag can be added.
    drop(signal(SignalKind::child())?);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
        on_alternate_stack(sig)?;
    }
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Adds `SA_ONSTACK` to the handler installed for `sig`.
fn on_alternate_stack(sig: c_int) -> std::io::Result<()> {
    // SAFETY: sigaction with a zeroed struct to read into, then the same handler, mask
    // and flags written back with one more flag.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut act) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if act.sa_flags & libc::SA_ONSTACK == 0 {
            act.sa_flags |= libc::SA_ONSTACK;
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn shutdown_handlers_run_on_the_alternate_stack_as_go_requires() {
        let _wait = super::shutdown_signals().unwrap();
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            // SAFETY: reading the current action into a zeroed struct.
            let flags = unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut act), 0);
                assert_ne!(act.sa_sigaction, libc::SIG_DFL, "a handler is installed");
                act.sa_flags
            };
            assert_ne!(flags & libc::SA_ONSTACK, 0, "signal {sig} lacks SA_ONSTACK");
        }
    }
}
