//! What the kernel says about a process — its parent, its users, whether it has ended and
//! when it started — read from `/proc` on Linux and from libproc on macOS, so that the
//! agent can follow the processes a command started on either without `unsafe` of its own.
//!
//! A start time is only compared with another of the same machine: clock ticks after boot
//! on Linux, microseconds since the epoch on macOS.

#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod macos;

/// One process, as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub pid: u32,
    pub ppid: u32,
    /// The real user: the one the per-user process limit counts.
    pub ruid: u32,
    /// The effective user and group: whose files it may touch.
    pub uid: u32,
    pub gid: u32,
    /// When it started, in this machine's own units (see the crate's documentation).
    pub started: u64,
    /// It has ended and waits for its parent to collect its status.
    pub zombie: bool,
}

/// Process `pid` as it is now, if there is one.
pub fn of(pid: u32) -> Option<Info> {
    #[cfg(target_os = "linux")]
    return linux::of(pid);
    #[cfg(target_os = "macos")]
    return macos::of(pid);
}

/// When process `pid` started, if there is one: what tells it from a later process given
/// the same pid. Cheaper than [`of`] (on Linux one small file, not two).
pub fn started(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    return linux::started(pid);
    #[cfg(target_os = "macos")]
    return macos::of(pid).map(|p| p.started);
}

/// The CPU time process `pid` has used so far, user and system, in clock ticks (USER_HZ:
/// 100 a second). (Linux only; elsewhere none.)
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    return linux::cpu_ticks(pid);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Every process on the machine that this one may see.
pub fn all() -> Vec<Info> {
    #[cfg(target_os = "linux")]
    return linux::all();
    #[cfg(target_os = "macos")]
    return macos::all();
}

/// The process listening on TCP `port` of this machine, when this process may see it:
/// its pid and command name. (Linux only; elsewhere none is named.)
pub fn tcp_listener(port: u16) -> Option<(u32, String)> {
    #[cfg(target_os = "linux")]
    return linux::tcp_listener(port);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Info;

    pub fn tcp_listener(port: u16) -> Option<(u32, String)> {
        let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(|f| std::fs::read_to_string(f).unwrap_or_default());
        let inode = tables.iter().find_map(|t| listening_inode(t, port))?;
        let wanted = format!("socket:[{inode}]");
        let dir = std::fs::read_dir("/proc").ok()?;
        dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).find_map(|pid| {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())).then(
                || {
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    (pid, comm.trim().to_owned())
                },
            )
        })
    }

    /// The inode of the socket listening on `port` in a `/proc/net/tcp` table.
    pub(crate) fn listening_inode(table: &str, port: u16) -> Option<u64> {
        const LISTEN: &str = "0A";
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *f.get(3)? == LISTEN).then(|| f.get(9)?.parse().ok()).flatten()
        })
    }

    pub fn of(pid: u32) -> Option<Info> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        parse(pid, &stat, &status)
    }

    pub fn started(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat_fields(&stat)?.get(19)?.parse().ok()
    }

    pub fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields = stat_fields(&stat)?;
        // utime and stime: fields 14 and 15 of the line.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    pub fn all() -> Vec<Info> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter_map(of).collect()
    }

    /// The fields of a `stat` line after the command name (which may hold spaces and
    /// parentheses; they start after its last ')'): state, ppid, …, start time (field 22
    /// of the line, 19 here).
    fn stat_fields(stat: &str) -> Option<Vec<&str>> {
        Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
    }

    /// A process from its `stat` line and `status` file.
    pub(crate) fn parse(pid: u32, stat: &str, status: &str) -> Option<Info> {
        let fields = stat_fields(stat)?;
        let ids = |key: &str| -> Option<Vec<u32>> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            Some(line.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect())
        };
        let (uids, gids) = (ids("Uid:")?, ids("Gid:")?);
        Some(Info {
            pid,
            ppid: fields.get(1)?.parse().ok()?,
            ruid: *uids.first()?,
            uid: *uids.get(1)?,
            gid: *gids.get(1)?,
            started: fields.get(19)?.parse().ok()?,
            zombie: matches!(*fields.first()?, "Z" | "X"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) Z 17 4242 4242 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t50\t50\t50\n";
        let info = linux::parse(4242, stat, status).unwrap();
        assert_eq!(info, Info { pid: 4242, ppid: 17, ruid: 1000, uid: 0, gid: 50, started: 987654, zombie: true });
    }

    #[test]
    fn a_start_time_alone_is_the_one_the_whole_description_gives() {
        let me = std::process::id();
        assert_eq!(started(me), of(me).map(|p| p.started));
        assert!(started(me).is_some());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_time_grows_while_this_process_works() {
        let me = std::process::id();
        let before = cpu_ticks(me).expect("this process's CPU time");
        // Spin for 100 ms of wall time: the kernel counts some ticks of it (10 ms each).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_ticks(me).unwrap() > before, "100 ms of spinning counted");
        assert_eq!(cpu_ticks(u32::MAX), None, "no such process");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_listening_on_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, _) = tcp_listener(port).expect("the listener's process");
        assert_eq!(pid, std::process::id());
        // A connected socket on a port is no listener.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E07 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 111 1
   1: 0100007F:1E07 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1";
        assert_eq!(linux::listening_inode(table, 0x1E07), Some(222));
        assert_eq!(linux::listening_inode(table, 0x1E08), None);
        drop(listener);
    }

    // The tests below are the same on Linux and macOS: they check each one's half.

    #[test]
    fn this_process_is_found_with_its_parent_and_users_and_stays_the_same() {
        let me = of(std::process::id()).expect("this process");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(me.ruid, rustix::process::getuid().as_raw());
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
        assert_eq!(me.gid, rustix::process::getegid().as_raw());
        assert!(!me.zombie);
        assert_eq!(of(me.pid).unwrap().started, me.started, "a start time does not move");
        assert!(all().iter().any(|p| p.pid == me.pid));
    }

    #[test]
    fn a_child_is_seen_under_its_parent_then_as_a_zombie_then_not_at_all() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let seen = of(pid).expect("the child");
        assert_eq!((seen.ppid, seen.zombie), (std::process::id(), false));
        assert!(seen.started >= of(std::process::id()).unwrap().started, "it started after its parent");
        assert!(all().iter().any(|p| p.pid == pid && p.ppid == std::process::id()));
        drop(child.stdin.take()); // `read` ends: the child exits, and nobody has waited for it yet
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !of(pid).is_some_and(|p| p.zombie) {
            assert!(std::time::Instant::now() < deadline, "the child became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert_eq!(of(pid), None, "reaped: gone");
    }
}
