//! Every file openbox reads or writes is named by a function here; nothing depends on the
//! current directory.
//!
//! Priority: when `OPENBOX_HOME` is set, every file of that identity lives under it (so
//! tests, and several identities on one machine, run side by side). Otherwise the platform
//! directories from `directories` are used: config for login state and keys, local data
//! for service state and logs, the runtime directory for sockets.
//!
//! A login and what is made with it (key pair, tailnet node, openboxd and its socket)
//! belong to a [`Context`]. The default context's files are where they have always been;
//! another context's are in a `contexts/NAME/` directory beside them. A process works in
//! the context `OPENBOX_CONTEXT` names (the CLI sets it for what it starts), else the
//! default.

use std::path::PathBuf;

/// The variable that puts every file of one identity under one directory.
pub const HOME_ENV: &str = "OPENBOX_HOME";

/// The variable that names the context a process works in (see [`Context`]).
pub const CONTEXT_ENV: &str = "OPENBOX_CONTEXT";

fn home() -> Option<PathBuf> {
    std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn project() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("dev", "openbox", "openbox")
}

/// Fallback when the platform offers no home directory at all (e.g. a bare service account):
/// a directory named by the user id, which [`create_private_dir`] refuses unless it is this
/// user's own and writable by nobody else — someone who made it first cannot take it over.
fn last_resort() -> PathBuf {
    std::env::temp_dir().join(format!("openbox-{}", rustix::process::geteuid().as_raw()))
}

/// Login state and user keys.
pub fn config_dir() -> PathBuf {
    home().or_else(|| project().map(|p| p.config_dir().to_path_buf())).unwrap_or_else(last_resort)
}

/// What identifies and must be kept: the control plane's database and CA key, an agent's
/// identity, openboxd's jobs (`~/.local/share/openbox`).
pub fn data_dir() -> PathBuf {
    home().or_else(|| project().map(|p| p.data_local_dir().to_path_buf())).unwrap_or_else(last_resort)
}

/// What only says how things went: logs, pid files (`~/.local/state/openbox`, XDG's state
/// directory; where the platform has none, the data directory).
pub fn state_dir() -> PathBuf {
    home()
        .or_else(|| project().map(|p| p.state_dir().unwrap_or_else(|| p.data_local_dir()).to_path_buf()))
        .unwrap_or_else(last_resort)
}

/// Sockets and lock files.
pub fn runtime_dir() -> PathBuf {
    if let Some(h) = home() {
        return h.join("run");
    }
    let platform = project().and_then(|p| p.runtime_dir().map(|d| d.to_path_buf()));
    runtime_dir_from(darwin_user_temp_dir(), platform, data_dir)
}

/// Where sockets go, from what the platform offers: on macOS the user's private temporary
/// directory (`/var/folders/…/T/`, the same for a terminal and a launchd agent), since a
/// socket under `~/Library/Application Support/` can pass the 104 bytes a socket path may
/// have there; elsewhere the runtime directory (`$XDG_RUNTIME_DIR/openbox`), else the
/// state directory's `run`.
fn runtime_dir_from(
    darwin_temp: Option<PathBuf>,
    platform: Option<PathBuf>,
    state: impl FnOnce() -> PathBuf,
) -> PathBuf {
    match (darwin_temp, platform) {
        (Some(temp), _) => temp.join("openbox"),
        (None, Some(runtime)) => runtime,
        (None, None) => state().join("run"),
    }
}

/// The user's private temporary directory on macOS (`confstr(_CS_DARWIN_USER_TEMP_DIR)`,
/// which `$TMPDIR` is set from but which does not depend on the environment).
#[cfg(target_os = "macos")]
#[allow(unsafe_code)] // one libc call, no safe wrapper exists
fn darwin_user_temp_dir() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    let mut buf = vec![0u8; 1024];
    // SAFETY: the buffer is writable for its whole length, which is what is passed.
    let n = unsafe { libc::confstr(libc::_CS_DARWIN_USER_TEMP_DIR, buf.as_mut_ptr().cast(), buf.len()) };
    if n == 0 || n > buf.len() {
        return None;
    }
    buf.truncate(n - 1); // less the NUL
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

#[cfg(not(target_os = "macos"))]
fn darwin_user_temp_dir() -> Option<PathBuf> {
    None
}

/// The longest path a Unix socket may have on this system, in bytes: `sun_path` less
/// its closing NUL.
pub const SOCKET_PATH_MAX: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

/// Checks that `socket` is short enough to bind or connect to, with what to do if not
/// (the system's own error, "path must be shorter than SUN_LEN", does not say).
pub fn check_socket_path(socket: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt as _;
    let len = socket.as_os_str().as_bytes().len();
    if len <= SOCKET_PATH_MAX {
        return Ok(());
    }
    Err(format!(
        "the socket path {} is {len} bytes, longer than the {SOCKET_PATH_MAX} a Unix socket may have here: \
         set {HOME_ENV} to a shorter directory, or use a shorter context name",
        socket.display()
    ))
}

/// The CLI's login state in this process's context (see [`Context::login_file`]).
pub fn login_file() -> PathBuf {
    context().login_file()
}

/// The user's key pair in this process's context (see [`Context::user_key`]).
pub fn user_key() -> PathBuf {
    context().user_key()
}

/// The control plane's files (database, CA key) when run with defaults.
pub fn control_dir() -> PathBuf {
    data_dir().join("control")
}

/// Where the control plane writes the admin's first login token (mode 0600) when it does not
/// run on a terminal and is given no `--bootstrap-token-file`, as under a service manager.
pub fn control_admin_token() -> PathBuf {
    control_dir().join("admin-token")
}

/// The agent's identity: node id, host key and certificate, CA key, heartbeat secret.
pub fn agent_dir() -> PathBuf {
    data_dir().join("agent")
}

/// Logs and pid files of the processes `openbox up` starts, and openboxd's log.
pub fn logs_dir() -> PathBuf {
    let logs = state_dir().join("logs");
    // Earlier releases kept them in the data directory: they move, once, to their place
    // (a process writing to a log there keeps writing to it; renaming keeps the file).
    let earlier = data_dir().join("logs");
    if earlier != logs && !logs.exists() && earlier.is_dir() {
        let moved =
            logs.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::rename(&earlier, &logs));
        // Another process may have moved them first; only when they are not there either
        // do the earlier ones stay in use.
        if moved.is_err() && !logs.is_dir() {
            return earlier;
        }
    }
    logs
}

/// The socket of this process's context's openboxd (see [`Context::daemon_socket`]).
pub fn daemon_socket() -> PathBuf {
    context().daemon_socket()
}

/// This process's context's tailnet (see [`Context::mesh_file`]).
pub fn mesh_file() -> PathBuf {
    context().mesh_file()
}

/// This process's context's tailnet node state (see [`Context::tailnet_dir`]).
pub fn tailnet_dir() -> PathBuf {
    context().tailnet_dir()
}

/// A background process's log in [`logs_dir`]: `openboxd`, `control`, `agent`.
pub fn log_file(name: &str) -> PathBuf {
    logs_dir().join(format!("{name}.log"))
}

/// The pid file of a process `openbox up` started.
pub fn pid_file(name: &str) -> PathBuf {
    logs_dir().join(format!("{name}.pid"))
}

/// The control plane address `openbox up` was last given (for the next `up`).
pub fn up_addr_file() -> PathBuf {
    logs_dir().join("up.addr")
}

/// Where the local control plane leaves its admin's first login token for `openbox up`.
pub fn admin_token_file() -> PathBuf {
    logs_dir().join("admin.token")
}

/// The control plane's SQLite database, by default.
pub fn control_db() -> PathBuf {
    control_dir().join("openbox.db")
}

/// The control plane's CA private key, by default.
pub fn control_ca_key() -> PathBuf {
    control_dir().join("ca_key")
}

/// The agent's identity (node id, certificates, heartbeat secret) in its directory `dir`.
pub fn agent_identity(dir: &std::path::Path) -> PathBuf {
    dir.join("identity.json")
}

/// The tailnet an agent joined (its control URL), in its directory `dir`.
pub fn agent_mesh(dir: &std::path::Path) -> PathBuf {
    dir.join("mesh.json")
}

/// The agent's host private key in its directory `dir`.
pub fn agent_host_key(dir: &std::path::Path) -> PathBuf {
    dir.join("host_key")
}

/// One login and everything made with it: the login file, the user's key pair, the
/// tailnet openboxd joins, and the openboxd that holds them, with its socket and log.
/// Several contexts let one user work with several control planes side by side, each
/// through an openboxd of its own.
///
/// The default context is the one that existed before there were contexts: its files are
/// in the config, runtime and logs directories themselves. Any other, `NAME`, has the same
/// files in `contexts/NAME/` under each of them, so removing it removes three directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// Valid by construction ([`Context::new`]); empty for the default.
    name: String,
}

/// The longest context name: a socket path must stay short ([`SOCKET_PATH_MAX`]).
const CONTEXT_NAME_MAX: usize = 32;

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Context {
    /// The name of the default context.
    pub const DEFAULT: &str = "default";

    /// The context called `name` (`default` is the default one). This is the one check
    /// of a context name: it becomes a directory name, so only `[a-z0-9][a-z0-9_-]*`, at
    /// most 32 characters.
    pub fn new(name: &str) -> Result<Context, String> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if name == Self::DEFAULT {
            return Ok(Context::default());
        }
        if name.is_empty() || name.len() > CONTEXT_NAME_MAX || !name.chars().all(ok) || name.starts_with(['-', '_']) {
            return Err(format!(
                "{name:?} is not a context name: use 1 to {CONTEXT_NAME_MAX} of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ));
        }
        Ok(Context { name: name.to_owned() })
    }

    /// The context `OPENBOX_CONTEXT` names, else the default. Programs call this once at
    /// start, to refuse a bad name with its message.
    pub fn from_env() -> Result<Context, String> {
        match std::env::var(CONTEXT_ENV) {
            Ok(v) if !v.is_empty() => Context::new(&v).map_err(|e| format!("{CONTEXT_ENV}: {e}")),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Context::default()),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{CONTEXT_ENV} is not valid UTF-8")),
        }
    }

    pub fn name(&self) -> &str {
        if self.is_default() { Self::DEFAULT } else { &self.name }
    }

    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    /// `base` for the default context, `base/contexts/NAME` for another.
    fn under(&self, base: PathBuf) -> PathBuf {
        if self.is_default() { base } else { base.join("contexts").join(&self.name) }
    }

    /// Where this context's login, key pair and tailnet state are.
    pub fn config_dir(&self) -> PathBuf {
        self.under(config_dir())
    }

    /// Where this context's openboxd has its socket and lock.
    pub fn runtime_dir(&self) -> PathBuf {
        if self.is_default() {
            return runtime_dir();
        }
        context_runtime_dir(runtime_dir(), &self.name, cfg!(target_os = "macos"))
    }

    /// Where this context's openboxd keeps its jobs: each one's record and output.
    pub fn jobs_dir(&self) -> PathBuf {
        self.under(data_dir()).join("jobs")
    }

    /// Where this context's openboxd logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.under(logs_dir())
    }

    /// The login state: server URL, token, user name.
    pub fn login_file(&self) -> PathBuf {
        self.config_dir().join("login.json")
    }

    /// The user's own SSH key pair, generated at login; the private half never leaves
    /// here. One per context: control planes of different owners cannot tell by the key
    /// that the same person uses them, and removing a context removes its key.
    pub fn user_key(&self) -> PathBuf {
        self.config_dir().join("id_ed25519")
    }

    /// The tailnet openboxd joined (its control URL), remembered across restarts.
    pub fn mesh_file(&self) -> PathBuf {
        self.config_dir().join("mesh.json")
    }

    /// openboxd's tailnet node state: its identity on the tailnet.
    pub fn tailnet_dir(&self) -> PathBuf {
        self.config_dir().join("tailnet")
    }

    /// openboxd's Unix socket.
    pub fn daemon_socket(&self) -> PathBuf {
        self.runtime_dir().join("openboxd.sock")
    }

    /// The lock under which a CLI starts openboxd (beside the socket), so concurrent first
    /// calls start one daemon.
    pub fn daemon_lock(&self) -> PathBuf {
        self.runtime_dir().join("openboxd.lock")
    }

    /// The log of the openboxd a CLI starts.
    pub fn daemon_log(&self) -> PathBuf {
        self.logs_dir().join("openboxd.log")
    }

    /// Whether the context is there to use: the default always is; another once a login
    /// made its directory.
    pub fn exists(&self) -> bool {
        self.is_default() || self.config_dir().is_dir()
    }

    /// The directories that hold this context's files and nothing else (none for the
    /// default, whose files live beside everything else's).
    pub fn own_dirs(&self) -> Vec<PathBuf> {
        if self.is_default() {
            return Vec::new();
        }
        let mut dirs = vec![self.config_dir(), self.runtime_dir(), self.logs_dir()];
        // Its jobs, when they are not in its config directory already.
        let data = self.under(data_dir());
        if !dirs.contains(&data) {
            dirs.push(data);
        }
        dirs
    }
}

/// Where a context other than the default has its socket and lock under the runtime
/// directory `base`: `contexts/NAME` like its other files, or, when `flat`, as on macOS,
/// `NAME` itself, so that the longest context's socket fits a Mac's 103 bytes. (A context
/// name has no dot, so it never meets the default's `openboxd.sock` and `openboxd.lock`.)
fn context_runtime_dir(base: PathBuf, name: &str, flat: bool) -> PathBuf {
    if flat { base.join(name) } else { base.join("contexts").join(name) }
}

/// The context this process works in: `OPENBOX_CONTEXT`, else the default.
///
/// # Panics
/// When `OPENBOX_CONTEXT` is not a valid name: a program that may run with one calls
/// [`Context::from_env`] first, and stops with its message.
pub fn context() -> Context {
    Context::from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// Every context there is, the default first, then the others by name.
pub fn contexts() -> Vec<Context> {
    let mut found: Vec<Context> = std::fs::read_dir(config_dir().join("contexts"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Context::new(e.file_name().to_str()?).ok())
        .filter(|c| !c.is_default())
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found.insert(0, Context::default());
    found
}

/// Which context is current when neither `--context` nor `OPENBOX_CONTEXT` says: one
/// line, the context's name. Absent when the default is current.
pub fn current_context_file() -> PathBuf {
    config_dir().join("current-context")
}

/// Creates `dir` and its parents with mode 0700, and checks that `dir` is this user's own
/// directory (not a link, not someone else's) that nobody else may write to.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory of this user (uid {me}): it must be a directory this user owns that nobody else can write to; remove it, or set OPENBOX_HOME to another place",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Writes a file only its owner can read (0600), atomically: a crash leaves the old
/// contents or the new, never half.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    write_atomically(path, contents, 0o600)
}

/// Writes `path` whole with `mode`, into a directory that exists: a new file renamed over
/// the old, so a crash leaves the old contents or the new, never half.
pub fn write_atomically(path: &std::path::Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A new file, never an existing one or what a link points at (O_EXCL): a leftover from
    // a crash is removed first (removing a link removes the link, not its target).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    // Exactly `mode`, whatever the umask took away.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// This machine, as a hash of its systemd machine id (the host name where it has none):
/// two processes that say the same share a filesystem. A hash, because the id itself is
/// meant to stay on the machine.
/// Read once per process: it does not change while it runs.
pub fn machine() -> String {
    use sha2::Digest as _;
    static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            let id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
                .iter()
                .find_map(|f| std::fs::read_to_string(f).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
                .unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned());
            let digest = sha2::Sha256::digest(format!("openbox machine {id}"));
            digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
        })
        .clone()
}

/// Another openbox binary: they are installed side by side, so next to the running one,
/// else found in PATH.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_go_to_the_macos_temporary_directory_else_the_runtime_directory_else_state() {
        let state = || PathBuf::from("/home/u/.local/share/openbox");
        let mac = Some(PathBuf::from("/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T/"));
        let xdg = PathBuf::from("/run/user/1000/openbox");
        assert_eq!(
            runtime_dir_from(mac.clone(), None, state),
            PathBuf::from("/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T/openbox")
        );
        assert_eq!(runtime_dir_from(None, Some(xdg.clone()), state), xdg);
        assert_eq!(runtime_dir_from(None, None, state), PathBuf::from("/home/u/.local/share/openbox/run"));
        // The longest context's socket on a Mac fits its 103 bytes (a Mac's temporary
        // directory always has this shape and length).
        let longest = "x".repeat(CONTEXT_NAME_MAX);
        let socket = context_runtime_dir(runtime_dir_from(mac, None, state), &longest, true).join("openboxd.sock");
        assert!(socket.as_os_str().len() <= 103, "{} is {} bytes", socket.display(), socket.as_os_str().len());
        assert_eq!(check_socket_path(&socket), Ok(()));
    }

    #[test]
    fn a_socket_path_too_long_is_refused_with_what_to_do() {
        let long = PathBuf::from("/tmp").join("d".repeat(SOCKET_PATH_MAX)).join("openboxd.sock");
        let err = check_socket_path(&long).unwrap_err();
        assert!(err.contains("longer than the") && err.contains(HOME_ENV), "{err}");
        let fits = PathBuf::from("/").join("s".repeat(SOCKET_PATH_MAX - 1));
        assert_eq!(check_socket_path(&fits), Ok(()));
    }

    #[test]
    fn context_names_are_short_lowercase_words() {
        for good in ["work", "a", "eu-1", "lab_2", "0day", &"x".repeat(32)] {
            assert_eq!(Context::new(good).map(|c| c.name().to_owned()), Ok(good.to_owned()), "{good:?}");
        }
        for bad in ["", "Work", "-x", "_x", "a/b", "..", "a.b", "a b", "é", &"x".repeat(33)] {
            let err = Context::new(bad).expect_err(bad);
            assert!(err.contains("a-z, 0-9"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_default_context_keeps_the_files_where_they_always_were() {
        let d = Context::new("default").unwrap();
        assert!(d.is_default() && d == Context::default());
        assert_eq!(d.name(), "default");
        assert_eq!(d.login_file(), config_dir().join("login.json"));
        assert_eq!(d.user_key(), config_dir().join("id_ed25519"));
        assert_eq!(d.mesh_file(), config_dir().join("mesh.json"));
        assert_eq!(d.tailnet_dir(), config_dir().join("tailnet"));
        assert_eq!(d.daemon_socket(), runtime_dir().join("openboxd.sock"));
        assert_eq!(d.daemon_lock(), runtime_dir().join("openboxd.lock"));
        assert_eq!(d.daemon_log(), log_file("openboxd"));
        assert!(d.own_dirs().is_empty() && d.exists());
    }

    #[test]
    fn another_context_has_the_same_files_under_contexts_name() {
        let c = Context::new("work").unwrap();
        assert_eq!(c.login_file(), config_dir().join("contexts/work/login.json"));
        assert_eq!(c.user_key(), config_dir().join("contexts/work/id_ed25519"));
        assert_eq!(c.tailnet_dir(), config_dir().join("contexts/work/tailnet"));
        // A Mac keeps sockets flat under its runtime directory (see `context_runtime_dir`).
        let run = runtime_dir().join(if cfg!(target_os = "macos") { "work" } else { "contexts/work" });
        assert_eq!(c.daemon_socket(), run.join("openboxd.sock"));
        assert_eq!(c.daemon_log(), logs_dir().join("contexts/work/openboxd.log"));
        let mut own = vec![config_dir().join("contexts/work"), run, logs_dir().join("contexts/work")];
        let data = data_dir().join("contexts/work");
        if !own.contains(&data) {
            own.push(data);
        }
        assert_eq!(c.own_dirs(), own);
        assert_eq!(c.jobs_dir(), data_dir().join("contexts/work/jobs"));
    }
}
