//! Processes the tests start and wait on: the binaries' paths, a started process and its
//! log, waiting for readiness, a call's output, and what runs on this machine.

use crate::*;

/// How long anything may take to become ready before a test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary of this workspace, from the target directory the tests were built into.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` before the tests", path.display());
    path
}

/// What a finished process printed and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// What a finished process printed, and how it ended.
    pub fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns self, showing everything on failure.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    /// Asserts this exit code and a message on stderr containing `needle`.
    #[track_caller]
    pub fn fails_with(self, code: i32, needle: &str) -> Out {
        assert_eq!(self.code, code, "wrong exit code: {self:#?}");
        assert!(self.stderr.contains(needle), "stderr should mention {needle:?}: {self:#?}");
        self
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Polls `check` until it holds; panics naming `what` after [`READY_TIMEOUT`].
#[track_caller]
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A running child whose stdout lines arrive on a channel and whose stderr goes to a log
/// file (printed if the test fails).
pub(crate) struct Proc {
    pub(crate) child: Child,
    lines: Receiver<String>,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines, log }
    }

    /// The first stdout line containing `needle`, waiting for it.
    pub(crate) fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "process did not print {needle:?} (exit: {:?}); its log:\n{}",
                    self.child.try_wait(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    pub(crate) fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn stop(&mut self) -> std::process::ExitStatus {
        // A frozen process (SIGSTOP) hears SIGTERM only once it runs again.
        self.signal(Signal::CONT);
        self.signal(Signal::TERM);
        self.wait_exit()
    }

    /// Stops a process that runs under a wrapper (strace): it is the wrapper's child, so it
    /// is signalled there, and the wrapper ends with it.
    pub(crate) fn stop_wrapped(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            if let Some(child) = Pid::from_raw(child) {
                let _ = kill_process(child, Signal::TERM);
            }
        }
        self.wait_exit()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- log {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Stops a process (SIGTERM) and waits for it to exit.
pub(crate) fn stop(proc: &mut Option<Proc>) {
    if let Some(mut p) = proc.take() {
        p.stop();
    }
}

/// The word after `flag` in a printed command line, if the flag is there.
pub fn flag_value(line: &str, flag: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next().map(str::to_owned)
}

/// Sends `sig` to a process, if it runs.
pub(crate) fn signal(proc: &Option<Proc>, sig: Signal) {
    if let Some(p) = proc {
        p.signal(sig);
    }
}

/// Kills a process outright (SIGKILL).
pub(crate) fn kill(proc: &mut Option<Proc>) {
    if let Some(p) = proc.take() {
        p.signal(Signal::KILL);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The release directory packaging/build wrote (tarballs, .debs, SHA256SUMS, install.sh):
/// `OPENBOX_TEST_PACKAGES`, else target/packages, where scripts/test builds it.
pub fn release_dir() -> PathBuf {
    let dir = std::env::var_os("OPENBOX_TEST_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/packages"));
    assert!(
        dir.join("SHA256SUMS").exists(),
        "no release in {}: run packaging/build first (scripts/test does)",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

/// Whether process `pid` still runs (a zombie its parent has not reaped has ended).
pub fn process_running(pid: impl std::fmt::Display) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !matches!(stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), Some("Z")))
}

/// A process's peak resident memory in bytes (`VmHWM`).
pub fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is running");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// A fresh tokio runtime for tests that speak SSH directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

pub use proto::time::now;

/// How many processes whose command line is `needle` run on this machine.
pub fn count_running(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let words: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            words.join(" ") == needle
        })
        .count()
}

pub fn running(needle: &str) -> bool {
    count_running(needle) > 0
}

/// `openbox ARGS` running, once it has printed its first line.
pub struct Call {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: tempfile::NamedTempFile,
}

impl Call {
    pub fn start(cli: &Cli, args: &[&str]) -> Call {
        use std::io::BufRead as _;
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = cli
            .cmd()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "no first line: {}", std::fs::read_to_string(stderr.path()).unwrap_or_default());
        Call { child, stdout, stderr }
    }

    pub fn signal(&self, sig: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), sig).unwrap();
    }

    pub fn end(mut self) -> Out {
        use std::io::Read as _;
        let mut stdout = String::new();
        self.stdout.read_to_string(&mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap();
        Out { code: status.code().unwrap_or(-1), stdout, stderr }
    }
}

/// The local `ADDR:PORT` of each established TCP connection process `pid` holds to `remote`
/// (`127.0.0.1:PORT`), from its descriptors and the kernel's IPv4 table.
pub fn tcp_connections_to(pid: u32, remote: &str) -> Vec<String> {
    let hex = |addr: std::net::SocketAddrV4| format!("{:08X}:{:04X}", u32::from(*addr.ip()).swap_bytes(), addr.port());
    let remote = hex(remote.parse().expect("an IPv4 ADDR:PORT"));
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let established = fields.get(3) == Some(&"01");
            (established && fields.get(2) == Some(&remote.as_str()) && inodes.contains(*fields.get(9)?))
                .then(|| fields[1].to_owned())
        })
        .collect()
}
