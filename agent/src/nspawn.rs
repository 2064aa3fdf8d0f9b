//! systemd-nspawn containers over a root tree on this node. Every container runs with a
//! throw-away overlay over the tree (`--volatile=overlay`), so runs on one tree never
//! clash and never change it; a session keeps its container, and so its changes, until it
//! ends. No system bus is needed (`--register=no --keep-unit`).

use proto::isolation::{Limits, Network};
use tokio::process::Command;

const NSPAWN: &str = "systemd-nspawn";

/// Why a command cannot run in an nspawn container here.
#[derive(Debug, thiserror::Error)]
pub enum NspawnError {
    #[error("systemd-nspawn exists only on Linux")]
    NotLinux,
    #[error("systemd-nspawn needs the agent to run as root")]
    NotRoot,
    #[error("systemd-nspawn is not installed (Debian: apt install systemd-container)")]
    NotInstalled,
    #[error("nspawn directory {0} does not exist on this node")]
    NoDirectory(String),
    #[error("{0} is not a root tree for systemd-nspawn: it has no /usr")]
    NotATree(String),
    #[error("{0} has no /bin/sh to run commands with")]
    NoShell(String),
}

/// Why this node cannot run nspawn containers, if it cannot.
pub fn unavailable() -> Option<NspawnError> {
    if !cfg!(target_os = "linux") {
        return Some(NspawnError::NotLinux);
    }
    if !rustix::process::geteuid().is_root() {
        return Some(NspawnError::NotRoot);
    }
    let on_path =
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(NSPAWN).is_file()));
    if !on_path {
        return Some(NspawnError::NotInstalled);
    }
    None
}

/// Checks the tree before starting a container on it, so the error names the problem.
pub fn check_tree(dir: &str) -> Result<(), NspawnError> {
    let root = std::path::Path::new(dir);
    if !root.is_dir() {
        return Err(NspawnError::NoDirectory(dir.to_owned()));
    }
    if !root.join("usr").is_dir() {
        return Err(NspawnError::NotATree(dir.to_owned()));
    }
    if !root.join("bin/sh").exists() && !root.join("usr/bin/sh").exists() {
        return Err(NspawnError::NoShell(dir.to_owned()));
    }
    Ok(())
}

/// `systemd-nspawn … -- ARGV` for a container over `dir`. Its pid 1 is `argv`.
pub fn command(dir: &str, limits: &Limits, env: &[(&str, &str)], argv: &[&str]) -> Command {
    command_with(dir, limits, env, argv, "--pipe")
}

/// As [`command`], for a container started in a terminal: the container gets a terminal
/// of its own, which nspawn joins to its own (keys, output and window size).
pub fn command_in_terminal(dir: &str, limits: &Limits, env: &[(&str, &str)], argv: &[&str]) -> Command {
    command_with(dir, limits, env, argv, "--console=interactive")
}

fn command_with(dir: &str, limits: &Limits, env: &[(&str, &str)], argv: &[&str], console: &str) -> Command {
    let mut c = Command::new(NSPAWN);
    crate::hide_secrets(&mut c);
    c.args(["--quiet", "--register=no", "--keep-unit", console, "--volatile=overlay", "--directory", dir]);
    if limits.network == Some(Network::None) {
        c.arg("--private-network");
    }
    for m in &limits.mounts {
        let flag = if m.read_only { "--bind-ro" } else { "--bind" };
        c.arg(format!("{flag}={}:{}", m.src, m.dst));
    }
    for (k, v) in env {
        c.arg(format!("--setenv={k}={v}"));
    }
    c.arg("--").args(argv);
    c
}

/// The payload for a one-shot command: a shell as the container's pid 1 runs the command
/// in a shell of its own, so the command gets ordinary signal handling (pid 1 ignores
/// signals it has no handler for) and a signal death is reported as 128+N.
pub fn one_shot_argv(command: &str) -> [&str; 5] {
    ["/bin/sh", "-c", "/bin/sh -c \"$1\"; exit $?", "openbox", command]
}
