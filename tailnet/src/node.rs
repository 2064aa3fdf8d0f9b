//! The tailnet node over libtailscale's C API: every `unsafe` call of the wrapper.

use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtailscale_sys as sys;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

use crate::{Config, TailnetError};

/// A tailnet node. Dropping it leaves the tailnet (unless `up` is still running, which
/// must not be raced: then it stays until the process ends).
pub struct Node {
    sd: sys::tailscale,
    dir: std::path::PathBuf,
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
        let key = config.auth_key.clone().or_else(|| crate::kept_auth_key(&config.dir));
        let key = key.as_ref().map(|k| cstr("the auth key", &k.0)).transpose()?;
        // SAFETY: plain calls with valid NUL-terminated strings; the handle is ours.
        let sd = unsafe { sys::tailscale_new() };
        if sd < 0 {
            return Err(TailnetError::Environment);
        }
        let node = Node { sd, dir: config.dir.clone(), last_log: Arc::default() };
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
            Ok(Ok(0)) => {
                crate::forget_kept_auth_key(&self.dir);
                Ok(())
            }
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
