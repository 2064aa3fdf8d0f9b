//! systemd-nspawn containers over a root tree on this node. Every container runs with a
//! throw-away overlay over the tree (`--volatile=overlay`), so runs on one tree never
//! clash and never change it; a session keeps its container, and so its changes, until it
//! ends. No system bus is needed (`--register=no --keep-unit`).

use proto::isolation::{Limits, Network};

use crate::confine::Confinement;
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
    #[error("{0} is this node's own root directory, not a container tree")]
    HostRoot(String),
    #[error("{0} is reached through /proc, where any process's root can be named: give the tree's own path")]
    ThroughProc(String),
    #[error("{tree} holds {inner}, which is this node's {what}: a container there would reach the host")]
    HoldsHost { tree: String, inner: String, what: &'static str },
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

/// The tree `dir` names, judged by what it is rather than how it is spelled: resolved
/// through every link to the directory itself, which must not be the host's root (by
/// device and inode, whatever path, link or bind mount names it), must not be reached
/// through /proc, and must hold no mount of the host's root or of a /proc. Then checked
/// as [`check_tree`] does. The container is started on the path this returns.
pub fn resolve_tree(dir: &str) -> Result<String, NspawnError> {
    use std::path::Path;
    if crate::confine::through_proc(Path::new(dir)) {
        return Err(NspawnError::ThroughProc(dir.to_owned()));
    }
    let resolved = std::fs::canonicalize(dir).map_err(|_| NspawnError::NoDirectory(dir.to_owned()))?;
    if crate::confine::through_proc(&resolved) {
        return Err(NspawnError::ThroughProc(dir.to_owned()));
    }
    let host_root = file_id(Path::new("/")).ok_or_else(|| NspawnError::NoDirectory("/".to_owned()))?;
    if file_id(&resolved) == Some(host_root) {
        return Err(NspawnError::HostRoot(dir.to_owned()));
    }
    // What is mounted below the tree: the host's root bound there, or a /proc (whose
    // `1/root` is the host's root), would be in the container.
    for (point, fstype) in mounts_below(&resolved) {
        let what = if fstype == "proc" {
            Some("process filesystem (/proc)")
        } else if file_id(&point) == Some(host_root) {
            Some("root directory")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(NspawnError::HoldsHost { tree: dir.to_owned(), inner: point.display().to_string(), what });
        }
    }
    let resolved = resolved.to_string_lossy().into_owned();
    check_tree(&resolved)?;
    Ok(resolved)
}

/// A file's device and inode: what it is, whatever names it.
fn file_id(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The mount points strictly below `dir` and their filesystem types, from this process's
/// mount table (`/proc/self/mountinfo`).
fn mounts_below(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    parse_mountinfo(&table).into_iter().filter(|(point, _)| point != dir && point.starts_with(dir)).collect()
}

/// Each line's mount point (field 5, octal escapes undone) and filesystem type (the first
/// field after the ` - ` separator).
fn parse_mountinfo(table: &str) -> Vec<(std::path::PathBuf, String)> {
    table
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let point = fields.split(' ').nth(4)?;
            let fstype = rest.split(' ').next()?;
            Some((unescape_octal(point).into(), fstype.to_owned()))
        })
        .collect()
}

/// `\040` and the like, as the kernel escapes spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// `systemd-nspawn … -- ARGV` for a container over `dir` (a tree from [`resolve_tree`]).
/// Its pid 1 is `argv`.
pub fn command(dir: &str, limits: &Limits, hold: Confinement, env: &[(&str, &str)], argv: &[&str]) -> Command {
    command_with(dir, limits, hold, env, argv, "--pipe")
}

/// As [`command`], for a container started in a terminal: the container gets a terminal
/// of its own, which nspawn joins to its own (keys, output and window size).
pub fn command_in_terminal(
    dir: &str,
    limits: &Limits,
    hold: Confinement,
    env: &[(&str, &str)],
    argv: &[&str],
) -> Command {
    command_with(dir, limits, hold, env, argv, "--console=interactive")
}

fn command_with(
    dir: &str,
    limits: &Limits,
    hold: Confinement,
    env: &[(&str, &str)],
    argv: &[&str],
    console: &str,
) -> Command {
    let mut c = Command::new(NSPAWN);
    crate::hide_secrets(&mut c);
    c.args(["--quiet", "--register=no", "--keep-unit", console, "--volatile=overlay", "--directory", dir]);
    if let Some(max) = hold.process_limit() {
        // Root inside is an unprivileged user outside, in a range of its own (the tree's
        // owners are mapped into it, or copied so into the throw-away overlay: the tree
        // itself never changes). That user's processes are what the limit counts.
        c.args(["--private-users=pick", "--private-users-ownership=auto"]);
        c.arg(format!("--rlimit=RLIMIT_NPROC={max}"));
    }
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
/// signals it has no handler for) and a signal death is reported as 128+N. Under a
/// process limit, pid 1 then counts what runs in the container (its own /proc) and says
/// when the count reached the limit, which is why a fork failed.
pub fn one_shot_argv(command: &str, limit: Option<u64>) -> Vec<String> {
    match limit {
        None => ["/bin/sh", "-c", "/bin/sh -c \"$1\"; exit $?", "openbox", command].map(str::to_owned).to_vec(),
        Some(max) => {
            let script = format!(
                "h=$2; /bin/sh -c \"$1\"; s=$?; set -- /proc/[0-9]*; if [ $s -ne 0 ] && [ $# -ge {near} ]; then echo \"$h\" >&2; fi; exit $s",
                near = max.saturating_sub(1).max(1),
            );
            let hint = crate::confine::process_limit_hint(max);
            vec!["/bin/sh".into(), "-c".into(), script, "openbox".into(), command.into(), hint]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_hosts_root_is_refused_as_a_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("root-link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        let via_proc_link = tmp.path().join("proc-link");
        std::os::unix::fs::symlink("/proc/self/root", &via_proc_link).unwrap();
        let pid = std::process::id();
        for dir in [
            "/proc/self/root".to_owned(),
            "/proc/thread-self/root".to_owned(),
            format!("/proc/{pid}/root"),
            "/proc/1/root".to_owned(),
            "/proc/self/cwd".to_owned(),
            "/dev/fd/0".to_owned(),
            link.display().to_string(),
            via_proc_link.display().to_string(),
        ] {
            let refused = resolve_tree(&dir);
            assert!(
                matches!(
                    refused,
                    Err(NspawnError::HostRoot(_) | NspawnError::ThroughProc(_) | NspawnError::NoDirectory(_))
                ),
                "{dir}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_real_tree_resolves_to_itself_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/sh"), "").unwrap();
        let link = tmp.path().join("alias");
        std::os::unix::fs::symlink(&tree, &link).unwrap();
        let resolved = resolve_tree(link.to_str().unwrap()).unwrap();
        assert_eq!(resolved, tree.canonicalize().unwrap().to_str().unwrap());
    }

    #[test]
    fn the_mount_table_is_read_with_its_escapes() {
        let table = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                     37 35 0:5 / /srv/tree/proc rw - proc proc rw\n";
        let mounts = parse_mountinfo(table);
        assert_eq!(mounts[0], ("/mnt/a b".into(), "ext3".to_owned()));
        assert_eq!(mounts[1], ("/srv/tree/proc".into(), "proc".to_owned()));
    }

    #[test]
    fn a_confined_one_shot_says_when_it_reached_the_process_limit() {
        assert_eq!(one_shot_argv("true", None)[2], "/bin/sh -c \"$1\"; exit $?");
        let limited = one_shot_argv("true", Some(100));
        assert!(limited[2].contains("-ge 99"), "{}", limited[2]);
        assert_eq!(limited[4], "true");
        assert!(limited[5].contains("limit of 100 processes") && limited[5].contains("--max-processes"));
    }
}
