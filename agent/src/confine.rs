//! What a command may reach beyond its isolation. The certificate says who asks and under
//! which isolation; this agent's policy says what users who are not admins may have on
//! this node. Admins (`admin@openbox` in the certificate) keep what the isolation text
//! gives them; everyone else is confined:
//!
//! - host directories are mounted into a container only from the directories the agent
//!   allows (`--mount-allow DIR[:rw]`), read-only unless the allowance says `rw`;
//! - nspawn containers get a private user namespace, so root inside is not root outside;
//! - Docker containers run with `no-new-privileges` and only [`DOCKER_CAPABILITIES`];
//! - at most `--max-processes` processes per command tree, where the kernel can count them.
//!
//! Every host path a command names is judged by what it resolves to on this node, never by
//! its spelling.

use std::path::{Path, PathBuf};

use proto::isolation::{Limits, Mount};

/// Sessions one user may keep open on this node at once, unless `--max-sessions` says
/// otherwise.
pub const DEFAULT_MAX_SESSIONS: u16 = 32;
/// Processes one confined command tree may have at once, unless `--max-processes` says
/// otherwise.
pub const DEFAULT_MAX_PROCESSES: u64 = 4096;

/// The capabilities a confined Docker container keeps (everything else is dropped): what
/// installing packages and running ordinary services inside a container needs. Docker's
/// own default set without `NET_RAW`, `MKNOD`, `AUDIT_WRITE`, `SETFCAP` and `SETPCAP`.
pub const DOCKER_CAPABILITIES: [&str; 9] =
    ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE", "SYS_CHROOT"];

/// The agent's rules for users who are not admins.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Host directories such users may mount into containers.
    pub mount_allow: Vec<MountAllow>,
    /// Sessions per user on this node (everyone, admins too).
    pub max_sessions: u16,
    /// Processes per confined command tree.
    pub max_processes: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { mount_allow: Vec::new(), max_sessions: DEFAULT_MAX_SESSIONS, max_processes: DEFAULT_MAX_PROCESSES }
    }
}

/// A host directory users who are not admins may mount from (with what is below it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountAllow {
    /// What the directory resolved to when the agent started.
    pub dir: PathBuf,
    /// Whether they may mount it writable.
    pub writable: bool,
}

impl std::str::FromStr for MountAllow {
    type Err = String;

    /// `DIR`, `DIR:ro` or `DIR:rw`: an existing directory, kept as what it resolves to.
    fn from_str(s: &str) -> Result<MountAllow, String> {
        let (dir, writable) = match s.rsplit_once(':') {
            Some((dir, "rw")) => (dir, true),
            Some((dir, "ro")) => (dir, false),
            _ => (s, false),
        };
        if !dir.starts_with('/') {
            return Err(format!("--mount-allow {s:?}: give an absolute directory, as in /srv/data or /srv/data:rw"));
        }
        let resolved = std::fs::canonicalize(dir).map_err(|e| format!("--mount-allow {dir}: {e}"))?;
        if !resolved.is_dir() {
            return Err(format!("--mount-allow {dir}: not a directory"));
        }
        if resolved == Path::new("/") || through_proc(&resolved) {
            return Err(format!("--mount-allow {dir}: the host's root and /proc cannot be offered to users"));
        }
        Ok(MountAllow { dir: resolved, writable })
    }
}

/// How tightly one command is held, beside its isolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// Not an admin: private user namespace, hardened container, process limit.
    pub confined: bool,
    /// The process limit for a confined command tree.
    pub max_processes: u64,
}

impl Confinement {
    /// The process limit of a container tree, when one applies: a confined user's (an
    /// admin's container runs as the host's root, which no such limit holds).
    pub fn process_limit(&self) -> Option<u64> {
        self.confined.then_some(self.max_processes)
    }
}

/// Holds every account but root that the agent starts commands as (the accounts of
/// `--run-as`, and the users of confined nspawn containers) to `max` processes: the
/// limit is the agent's own, which children inherit, and the kernel does not apply it to
/// root. A no-op for an agent that does not run as root, whose commands run as its own
/// account (the agent's threads would count too).
pub fn limit_processes(max: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    setrlimit(Resource::Nproc, Rlimit { current: Some(max), maximum: Some(max) }).map_err(std::io::Error::from)
}

/// The line a command gets when its tree reached the process limit (a fork beyond it
/// failed): the limit, and the flag that sets it.
pub fn process_limit_hint(max: u64) -> String {
    format!(
        "openbox: this command reached the node's limit of {max} processes (openbox agent --max-processes N); starting more failed"
    )
}

/// Why a command's host paths are refused, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("mount source {0} does not exist on this node")]
    MountSource(String),
    #[error(
        "mount source {src} is not one this node lets users mount{allowed}; an admin may allow it (openbox agent --mount-allow DIR)"
    )]
    MountNotAllowed { src: String, allowed: String },
    #[error("mount source {src} may only be mounted read-only here: add :ro (as in --mount {src}:/dst:ro)")]
    MountReadOnly { src: String },
    #[error(
        "this node's Docker engine runs elsewhere ({host}), where its paths cannot be checked: only an admin may mount there"
    )]
    RemoteEngine { host: String },
}

/// Whether `p` lies in /proc, where every process's root and files can be named.
pub fn through_proc(p: &Path) -> bool {
    p.starts_with("/proc")
}

/// The mounts of `limits`, each source replaced by what it resolves to here, and held to
/// the policy for a user who is not an admin. `local` says whether the engine sees this
/// machine's paths (a Docker engine elsewhere does not: nothing can be checked there).
pub fn mounts(
    limits: &Limits,
    confinement: Confinement,
    policy: &Policy,
    local: Result<(), &str>,
) -> Result<Limits, ConfineError> {
    if limits.mounts.is_empty() {
        return Ok(limits.clone());
    }
    if let Err(host) = local {
        if confinement.confined {
            return Err(ConfineError::RemoteEngine { host: host.to_owned() });
        }
        return Ok(limits.clone());
    }
    let mut resolved = Vec::with_capacity(limits.mounts.len());
    for m in &limits.mounts {
        let src = std::fs::canonicalize(&m.src).map_err(|_| ConfineError::MountSource(m.src.clone()))?;
        if confinement.confined {
            allowed(m, &src, &policy.mount_allow)?;
        }
        resolved.push(Mount { src: src.to_string_lossy().into_owned(), ..m.clone() });
    }
    Ok(Limits { mounts: resolved, ..limits.clone() })
}

/// Whether a user who is not an admin may mount `m` (resolved to `src`), or why not.
fn allowed(m: &Mount, src: &Path, allow: &[MountAllow]) -> Result<(), ConfineError> {
    let not_allowed = || {
        let dirs: Vec<String> = allow.iter().map(|a| a.dir.display().to_string()).collect();
        let allowed = match dirs.is_empty() {
            true => " (it lets users mount none)".to_owned(),
            false => format!(" (users may mount from {})", dirs.join(", ")),
        };
        ConfineError::MountNotAllowed { src: m.src.clone(), allowed }
    };
    // The most generous allowance that holds the resolved source: a link below an allowed
    // directory is judged by where it leads, and the engine is given that place.
    let found = allow.iter().filter(|a| src.starts_with(&a.dir)).max_by_key(|a| a.writable).ok_or_else(not_allowed)?;
    if !m.read_only && !found.writable {
        return Err(ConfineError::MountReadOnly { src: m.src.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFINED: Confinement = Confinement { confined: true, max_processes: 100 };
    const ADMIN: Confinement = Confinement { confined: false, max_processes: 100 };

    fn limits(mounts: &[&str]) -> Limits {
        Limits { mounts: mounts.iter().map(|m| m.parse().unwrap()).collect(), ..Limits::default() }
    }

    #[test]
    fn a_user_who_is_not_an_admin_mounts_only_from_allowed_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let policy = Policy { mount_allow: vec![data.to_str().unwrap().parse().unwrap()], ..Policy::default() };
        let d = data.display();
        let ro = limits(&[&format!("{d}/sub:/x:ro")]);
        assert_eq!(
            mounts(&ro, CONFINED, &policy, Ok(())).unwrap().mounts[0].src,
            format!("{}/sub", data.canonicalize().unwrap().display())
        );
        let rw = limits(&[&format!("{d}:/x")]);
        assert!(matches!(mounts(&rw, CONFINED, &policy, Ok(())), Err(ConfineError::MountReadOnly { .. })));
        let elsewhere = limits(&[&format!("{}:/x:ro", other.display())]);
        assert!(matches!(mounts(&elsewhere, CONFINED, &policy, Ok(())), Err(ConfineError::MountNotAllowed { .. })));
        let root = limits(&["/:/host:ro"]);
        assert!(matches!(mounts(&root, CONFINED, &policy, Ok(())), Err(ConfineError::MountNotAllowed { .. })));
        // An admin keeps today's freedom; a missing source is refused for everyone.
        assert!(mounts(&root, ADMIN, &policy, Ok(())).is_ok());
        let missing = limits(&[&format!("{d}/nope:/x:ro")]);
        assert!(matches!(mounts(&missing, ADMIN, &policy, Ok(())), Err(ConfineError::MountSource(_))));
        // With no allowance at all, nothing.
        assert!(matches!(mounts(&ro, CONFINED, &Policy::default(), Ok(())), Err(ConfineError::MountNotAllowed { .. })));
    }

    #[test]
    fn a_link_inside_an_allowed_directory_cannot_lead_out_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink("/", data.join("root")).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("etc")).unwrap();
        std::fs::create_dir(data.join("real")).unwrap();
        let policy =
            Policy { mount_allow: vec![format!("{}:rw", data.display()).parse().unwrap()], ..Policy::default() };
        for link in ["root", "etc"] {
            let l = limits(&[&format!("{}/{link}:/x:ro", data.display())]);
            assert!(
                matches!(mounts(&l, CONFINED, &policy, Ok(())), Err(ConfineError::MountNotAllowed { .. })),
                "{link}"
            );
        }
        let real = limits(&[&format!("{}/real:/x", data.display())]);
        assert!(mounts(&real, CONFINED, &policy, Ok(())).is_ok());
    }

    #[test]
    fn a_remote_engine_takes_no_mounts_from_users_who_are_not_admins() {
        let l = limits(&["/srv:/x:ro"]);
        assert!(matches!(
            mounts(&l, CONFINED, &Policy::default(), Err("tcp://e:2375")),
            Err(ConfineError::RemoteEngine { .. })
        ));
        assert_eq!(mounts(&l, ADMIN, &Policy::default(), Err("tcp://e:2375")).unwrap(), l);
    }

    #[test]
    fn an_allowance_must_be_a_real_directory_other_than_the_root_or_proc() {
        let tmp = tempfile::tempdir().unwrap();
        let a: MountAllow = format!("{}:rw", tmp.path().display()).parse().unwrap();
        assert!(a.writable);
        for bad in ["/", "relative", "/proc/self/root", "/proc", "/no/such/dir"] {
            assert!(bad.parse::<MountAllow>().is_err(), "{bad}");
        }
    }
}
