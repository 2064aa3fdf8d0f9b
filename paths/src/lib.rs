//! Every file openbox reads or writes is named by a function here; nothing depends on the
//! current directory.
//!
//! Priority: when `OPENBOX_HOME` is set, every file of that identity lives under it (so
//! tests, and several identities on one machine, run side by side). Otherwise the platform
//! directories from `directories` are used: config for login state and keys, local data
//! for service state and logs, the runtime directory for sockets.

use std::path::PathBuf;

/// The variable that puts every file of one identity under one directory.
pub const HOME_ENV: &str = "OPENBOX_HOME";

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

/// Service state (control-plane database, agent identity) and logs.
pub fn state_dir() -> PathBuf {
    home().or_else(|| project().map(|p| p.data_local_dir().to_path_buf())).unwrap_or_else(last_resort)
}

/// Sockets and lock files.
pub fn runtime_dir() -> PathBuf {
    if let Some(h) = home() {
        return h.join("run");
    }
    project().and_then(|p| p.runtime_dir().map(|d| d.to_path_buf())).unwrap_or_else(|| state_dir().join("run"))
}

/// The CLI's login state: server URL, token, user name.
pub fn login_file() -> PathBuf {
    config_dir().join("login.json")
}

/// The user's own SSH key pair, generated at login; the private half never leaves here.
pub fn user_key() -> PathBuf {
    config_dir().join("id_ed25519")
}

/// The control plane's files (database, CA key) when run with defaults.
pub fn control_dir() -> PathBuf {
    state_dir().join("control")
}

/// The agent's identity: node id, host key and certificate, CA key, heartbeat secret.
pub fn agent_dir() -> PathBuf {
    state_dir().join("agent")
}

/// Logs and pid files of the processes `openbox up` starts.
pub fn logs_dir() -> PathBuf {
    state_dir().join("logs")
}

/// openboxd's Unix socket.
pub fn daemon_socket() -> PathBuf {
    runtime_dir().join("openboxd.sock")
}

/// The tailnet openboxd joined (its control URL), remembered across restarts.
pub fn mesh_file() -> PathBuf {
    config_dir().join("mesh.json")
}

/// openboxd's tailnet node state: its identity on the tailnet.
pub fn tailnet_dir() -> PathBuf {
    config_dir().join("tailnet")
}

/// The lock under which a CLI starts openboxd (beside the socket), so concurrent first
/// calls start one daemon.
pub fn daemon_lock() -> PathBuf {
    runtime_dir().join("openboxd.lock")
}

/// A background process's log in [`logs_dir`]: `openboxd`, `control`, `agent`.
pub fn log_file(name: &str) -> PathBuf {
    logs_dir().join(format!("{name}.log"))
}

/// The pid file of a process `openbox up` started.
pub fn pid_file(name: &str) -> PathBuf {
    logs_dir().join(format!("{name}.pid"))
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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A new file, never an existing one or what a link points at (O_EXCL): a leftover from
    // a crash is removed first (removing a link removes the link, not its target).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
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
