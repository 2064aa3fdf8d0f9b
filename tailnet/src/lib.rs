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

use std::os::raw::c_int;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "mesh")]
mod node;
#[cfg(feature = "mesh")]
pub use node::{Listener, Node};
#[cfg(not(feature = "mesh"))]
mod absent;
#[cfg(not(feature = "mesh"))]
pub use absent::{Listener, Node};

/// Whether this build has the tailnet in it (the default `mesh` feature; needs Go).
pub const BUILT: bool = cfg!(feature = "mesh");

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
/// it first thing in `main`, before any thread starts, with the control URL it will join.
pub fn ensure_environment(control_url: &str) {
    use std::os::unix::process::CommandExt as _;
    let plain_http_control = control_url.starts_with("http://");
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
        why: format!("{} is damaged; give the control URL again", file.display()),
    })
}

/// The tailnet a process is to join: `given` (then remembered in `file`), else the one an
/// earlier start remembered there; `None` when there is neither.
pub fn chosen_control_url(file: &std::path::Path, given: Option<String>) -> Result<Option<String>, TailnetError> {
    match given {
        Some(url) => {
            remember_control_url(file, &url)?;
            Ok(Some(url))
        }
        None => remembered_control_url(file),
    }
}

/// Where a node's state dir keeps an auth key it has not joined with yet.
fn kept_auth_key_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("pending-authkey")
}

/// Keeps `key` in a node's state dir (mode 0600) until a node made with that dir has
/// joined with it: for a process that learns the key and must start again before it can
/// join (see [`ensure_environment`]). A [`Config`] without a key uses the kept one.
pub fn keep_auth_key(state_dir: &std::path::Path, key: &AuthKey) -> Result<(), TailnetError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(state_dir)?;
    let file = kept_auth_key_file(state_dir);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&file)?;
    f.write_all(key.expose().as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Whether a node's state dir still keeps a key it has not joined with.
pub fn has_kept_auth_key(state_dir: &std::path::Path) -> bool {
    kept_auth_key_file(state_dir).exists()
}

/// The key [`keep_auth_key`] kept, if any.
#[cfg_attr(not(feature = "mesh"), allow(dead_code))]
fn kept_auth_key(state_dir: &std::path::Path) -> Option<AuthKey> {
    let key = std::fs::read_to_string(kept_auth_key_file(state_dir)).ok()?;
    let key = key.trim();
    (!key.is_empty()).then(|| AuthKey::new(key))
}

/// Forgets a kept key once the node has joined (its state now identifies it).
#[cfg_attr(not(feature = "mesh"), allow(dead_code))]
fn forget_kept_auth_key(state_dir: &std::path::Path) {
    let _ = std::fs::remove_file(kept_auth_key_file(state_dir));
}

/// The auth key in `file` when one is given, else in `OPENBOX_MESH_AUTHKEY`; `None` when
/// neither has one. Never from the command line.
pub fn auth_key(file: Option<&std::path::Path>) -> Result<Option<AuthKey>, TailnetError> {
    let Some(f) = file else {
        return Ok(std::env::var(AUTHKEY_ENV).ok().filter(|k| !k.is_empty()).map(AuthKey::new));
    };
    let failed = |why: String| TailnetError::Failed { what: "reading the tailnet auth key", why };
    let key = std::fs::read_to_string(f).map_err(|e| failed(format!("{}: {e}", f.display())))?;
    match key.trim() {
        "" => Err(failed(format!("{} is empty", f.display()))),
        key => Ok(Some(AuthKey::new(key))),
    }
}

/// An auth key; its `Debug` never shows it.
#[derive(Clone)]
pub struct AuthKey(String);

impl AuthKey {
    pub fn new(key: impl Into<String>) -> AuthKey {
        AuthKey(key.into())
    }

    /// The key itself, for where it must be stored or sent (a secret).
    pub fn expose(&self) -> &str {
        &self.0
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
    #[error(
        "this build of openbox has no tailnet: it was built without the `mesh` feature (which needs Go >= 1.25 with cgo); use a release build, or build with the default features"
    )]
    NotBuilt,
    #[error("{0} must not contain a NUL byte")]
    Nul(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn last_words(log: &str) -> String {
    if log.is_empty() { String::new() } else { format!(" (its last log line: {log})") }
}

/// Waits for SIGTERM, SIGINT or SIGQUIT, in a process that runs Go. The handlers are
/// tokio's, re-installed with `SA_ONSTACK`: Go requires that of every handler it did not
/// install itself, since such a signal may land on one of its threads, whose own stack is
/// too small to run a handler on. SIGHUP is caught and ignored: a service has nothing to
/// reload, and a caught signal (unlike an ignored one, as under `nohup`) is back to its
/// default in the commands the service starts, so a terminal that hangs up ends them.
/// Call within a tokio runtime.
pub fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    // SIGCHLD too: tokio's process support installs its handler once, and children exit
    // all the time. Registering it here installs it now, so the flag can be added. A
    // handler, once installed, stays for the life of the process.
    drop(signal(SignalKind::child())?);
    drop(signal(SignalKind::hangup())?);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGCHLD, libc::SIGHUP] {
        on_alternate_stack(sig)?;
    }
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
    })
}

/// The signals a one-shot caller passes on to its call (SIGINT, SIGTERM, SIGHUP), by
/// their SSH names, as they come; handlers installed as [`shutdown_signals`] does.
pub fn call_signals() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<&'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, sig, name) in [
        (SignalKind::interrupt(), libc::SIGINT, "INT"),
        (SignalKind::terminate(), libc::SIGTERM, "TERM"),
        (SignalKind::hangup(), libc::SIGHUP, "HUP"),
    ] {
        let mut stream = signal(kind)?;
        on_alternate_stack(sig)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(name).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
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
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGCHLD, libc::SIGHUP] {
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
