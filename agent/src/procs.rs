//! Process trees from /proc: what a command started, and the processes of an nspawn
//! container (seen from the host).

use rustix::process::{Pid, Signal, kill_process};

/// Every process below `root`, from /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The fields after the command name (which may hold spaces) start after ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
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
fn inner_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    if fields.len() < 2 {
        return None;
    }
    fields.last()?.parse().ok()
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
