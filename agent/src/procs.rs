//! Process trees: what a command started, and the processes of an nspawn container (seen
//! from the host); signalling and ending them. What the kernel says about each process
//! comes from `procinfo` (/proc on Linux, libproc on macOS); a process's root and user
//! namespace, which only Linux has, from /proc here.

use std::os::fd::OwnedFd;

#[cfg(target_os = "linux")]
use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// A process known by its pid and its start time: once it has ended, another process that
/// is given the same pid is not it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// When it started (`procinfo::Info::started`).
    pub started: u64,
}

impl Proc {
    /// Process `pid` as it is now, if there is one.
    pub fn now(pid: u32) -> Option<Proc> {
        procinfo::started(pid).map(|started| Proc { pid, started })
    }

    /// Whether the process still runs (and is this one, not a later one with its pid). A
    /// zombie has ended: it only waits for a parent that may never come (the parent of a
    /// shell that outlived its agent is whatever adopted it).
    pub fn is_running(&self) -> bool {
        procinfo::of(self.pid).is_some_and(|p| p.started == self.started && !p.zombie)
    }

    /// The user and group it runs as, while it is this process.
    pub fn owner(&self) -> Option<(u32, u32)> {
        procinfo::of(self.pid).filter(|p| p.started == self.started).map(|p| (p.uid, p.gid))
    }

    /// Opens this process's root directory (`O_PATH`), making sure it is this process's:
    /// its /proc directory is opened first and its start time checked through it, and a
    /// /proc directory opened so stays the process's own, even after the pid is reused.
    #[cfg(target_os = "linux")]
    pub fn open_root(&self) -> std::io::Result<OwnedFd> {
        let dir = self.open_dir()?;
        Ok(rustix::fs::openat(&dir, "root", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
    }

    /// As [`Proc::open_root`], with the host user and group that are root inside the
    /// process's user namespace when it has one of its own (a confined container's).
    #[cfg(target_os = "linux")]
    pub fn open_root_and_owner(&self) -> std::io::Result<(OwnedFd, Option<(u32, u32)>)> {
        let dir = self.open_dir()?;
        let root = rustix::fs::openat(&dir, "root", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let theirs = rustix::fs::readlinkat(&dir, "ns/user", Vec::new())?;
        let ours = std::fs::read_link("/proc/self/ns/user")?;
        if theirs.as_bytes() == ours.as_os_str().as_encoded_bytes() {
            return Ok((root, None));
        }
        let outside_of_zero = |map: &str| -> std::io::Result<u32> {
            let text = read_at(&dir, map)?;
            text.lines()
                .filter_map(|l| {
                    let f: Vec<u32> = l.split_whitespace().filter_map(|n| n.parse().ok()).collect();
                    (f.len() == 3 && f[0] == 0 && f[2] > 0).then_some(f[1])
                })
                .next()
                .ok_or_else(|| std::io::Error::other(format!("process {}'s {map} does not map root", self.pid)))
        };
        Ok((root, Some((outside_of_zero("uid_map")?, outside_of_zero("gid_map")?))))
    }

    /// On macOS every process the agent starts shares the machine's root (there are no
    /// containers on the host to reach into: Docker's run in a virtual machine).
    #[cfg(not(target_os = "linux"))]
    pub fn open_root(&self) -> std::io::Result<OwnedFd> {
        if !self.is_running() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("process {} has ended", self.pid)));
        }
        Ok(std::fs::File::open("/")?.into())
    }

    /// Its /proc directory, once its start time has been checked through it.
    #[cfg(target_os = "linux")]
    fn open_dir(&self) -> std::io::Result<OwnedFd> {
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, format!("process {} has ended", self.pid));
        let dir = rustix::fs::open(format!("/proc/{}", self.pid), OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|_| gone())?;
        if start_time(&read_at(&dir, "stat")?) != Some(self.started) {
            return Err(gone());
        }
        Ok(dir)
    }
}

/// A small file under a /proc directory.
#[cfg(target_os = "linux")]
fn read_at(dir: &OwnedFd, name: &str) -> std::io::Result<String> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)?;
    Ok(text)
}

impl std::fmt::Display for Proc {
    /// `PID:STARTED`, as [`Proc`]'s `FromStr` reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.started)
    }
}

impl std::str::FromStr for Proc {
    type Err = String;
    fn from_str(s: &str) -> Result<Proc, String> {
        let bad = || format!("{s:?}: expected PID:STARTED");
        let (pid, started) = s.split_once(':').ok_or_else(bad)?;
        Ok(Proc { pid: pid.parse().map_err(|_| bad())?, started: started.parse().map_err(|_| bad())? })
    }
}

/// Field 22 of a `/proc/PID/stat` line (counted after the command name, which may hold
/// spaces and parentheses).
#[cfg(target_os = "linux")]
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every process below `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let parent_of: Vec<(u32, u32)> = procinfo::all().into_iter().map(|p| (p.pid, p.ppid)).collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// How many processes run with `uid` as their real user: what the kernel's process limit
/// (`RLIMIT_NPROC`) counts.
pub fn count_of_user(uid: u32) -> u64 {
    procinfo::all().into_iter().filter(|p| p.ruid == uid).count() as u64
}

pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process(p, sig);
    }
}

/// Kills every process below `pid`, leaving `pid` itself alone.
pub fn kill_descendants(pid: u32) {
    for child in descendants(pid) {
        signal(child, Signal::KILL);
    }
}

/// The pid a process has inside its own pid namespace (the last `NSpid` field), when it
/// is in a namespace below ours.
#[cfg(target_os = "linux")]
fn inner_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    if fields.len() < 2 {
        return None;
    }
    fields.last()?.parse().ok()
}

/// macOS has no pid namespaces: no process is inside a container seen from the host.
#[cfg(not(target_os = "linux"))]
fn inner_pid(_pid: u32) -> Option<u32> {
    None
}

/// The processes inside the container an nspawn process `nspawn` runs, as (host pid,
/// pid inside the container).
pub fn container_processes(nspawn: u32) -> Vec<(u32, u32)> {
    descendants(nspawn).into_iter().filter_map(|p| inner_pid(p).map(|inner| (p, inner))).collect()
}

/// The host pid of the container's first process (its pid 1).
pub fn container_init(nspawn: u32) -> Option<u32> {
    container_processes(nspawn).into_iter().find(|(_, inner)| *inner == 1).map(|(p, _)| p)
}

/// Where a command's processes live, for signalling them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// Natively: the command's own process group.
    Group,
    /// In an nspawn container: the processes inside it.
    Nspawn,
}

/// Passes the caller's signal to every process the command started (`pid` is the process
/// openbox spawned; its group outlives it while the command's processes do). In a
/// container that is what runs below its pid 1, so a SIGKILL'd command reads 128+9.
pub fn signal_tree(pid: u32, tree: Tree, sig: Signal) {
    match tree {
        Tree::Group => {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = kill_process_group(p, sig);
            }
        }
        Tree::Nspawn => {
            for (host, inner) in container_processes(pid) {
                if inner != 1 {
                    signal(host, sig);
                }
            }
        }
    }
}

/// Ends everything the command started (timeout, or the caller gone). A container goes
/// down with its pid 1.
pub fn tear_down(pid: u32, tree: Tree) {
    if tree == Tree::Nspawn {
        match container_init(pid) {
            Some(init) => signal(init, Signal::KILL),
            None => signal(pid, Signal::KILL), // not started yet: stop nspawn
        }
    }
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process_group(p, Signal::KILL);
    }
}
