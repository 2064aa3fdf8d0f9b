//! The test harness: start the real `openbox`, `openbox-control` and `openbox-agent`
//! binaries on 127.0.0.1 with temporary `OPENBOX_HOME`s, and wait on their readiness lines.
//!
//! The binaries come from the same target directory as the test executable; build them
//! first (`cargo build --workspace`, which the test command does).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

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
struct Proc {
    child: Child,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
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
    fn wait_line(&mut self, needle: &str) -> String {
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

    fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // A frozen process (SIGSTOP) hears SIGTERM only once it runs again.
        self.signal(Signal::CONT);
        self.signal(Signal::TERM);
        self.wait_exit()
    }

    /// Stops a process that runs under a wrapper (strace): it is the wrapper's child, so it
    /// is signalled there, and the wrapper ends with it.
    fn stop_wrapped(&mut self) -> std::process::ExitStatus {
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
fn stop(proc: &mut Option<Proc>) {
    if let Some(mut p) = proc.take() {
        p.stop();
    }
}

/// A raw HTTP POST of `body` to the control plane at `addr` (with `bearer` as the
/// credential, if any), and the whole answer as text: for requests no client would send.
pub fn post_raw(addr: &str, path: &str, bearer: Option<&str>, body: &str) -> String {
    let auth: Vec<String> = bearer.map(|b| format!("Authorization: Bearer {b}")).into_iter().collect();
    http_raw(addr, "POST", path, &auth, body)
}

/// One raw HTTP/1.1 request to `addr` with these extra header lines, and the whole answer
/// as text.
pub fn http_raw(addr: &str, method: &str, path: &str, headers: &[String], body: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the control plane");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    resp
}

/// The word after `flag` in a printed command line, if the flag is there.
pub fn flag_value(line: &str, flag: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next().map(str::to_owned)
}

/// Sends `sig` to a process, if it runs.
fn signal(proc: &Option<Proc>, sig: Signal) {
    if let Some(p) = proc {
        p.signal(sig);
    }
}

/// Kills a process outright (SIGKILL).
fn kill(proc: &mut Option<Proc>) {
    if let Some(p) = proc.take() {
        p.signal(Signal::KILL);
    }
}

/// A control plane on 127.0.0.1 with its own home.
pub struct ControlPlane {
    proc: Option<Proc>,
    pub home: TempDir,
    pub url: String,
    pub addr: String,
    /// Its TLS key's fingerprint, when it serves HTTPS (as its login command shows it).
    pub fingerprint: Option<String>,
    /// The admin's one-time login token from the first start.
    pub admin_token: String,
    extra: Vec<String>,
    /// Environment for the control plane (kept for restarts).
    env: Vec<(String, String)>,
    /// Whether it runs under a wrapper (strace).
    wrapped: bool,
}

impl ControlPlane {
    /// Starts a control plane that shows nodes offline 2s after their last heartbeat.
    pub fn start() -> ControlPlane {
        ControlPlane::start_with(&[])
    }

    /// Starts one with extra `openbox-control` arguments (kept for restarts).
    pub fn start_with(extra: &[&str]) -> ControlPlane {
        ControlPlane::start_wrapped(&[], extra)
    }

    /// Like [`ControlPlane::start_with`], under strace writing what it sends to `trace`
    /// (see [`beyond_loopback`]); restarts are not traced.
    pub fn start_traced(extra: &[&str], trace: &Path) -> ControlPlane {
        let trace = trace.display().to_string();
        let wrapper: Vec<&str> =
            std::iter::once("strace").chain(STRACE_NETWORK).chain(["-o", trace.as_str()]).collect();
        ControlPlane::start_wrapped(&wrapper, extra)
    }

    /// Starts another control plane on a database that already holds a fleet (a replica):
    /// it makes no admin, so it has no token to show.
    pub fn start_replica(extra: &[&str]) -> ControlPlane {
        ControlPlane::start_full(&[], extra, &[], false)
    }

    /// Like [`ControlPlane::start_replica`], with extra environment.
    pub fn start_replica_env(extra: &[&str], env: &[(&str, &str)]) -> ControlPlane {
        ControlPlane::start_full(&[], extra, env, false)
    }

    fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> ControlPlane {
        ControlPlane::start_full(wrapper, extra, &[], true)
    }

    fn start_full(wrapper: &[&str], extra: &[&str], env: &[(&str, &str)], first: bool) -> ControlPlane {
        let home = tempfile::tempdir().expect("tempdir");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // The same tests with the registry on PostgreSQL (the test command runs a second
        // pass of the control plane's tests so).
        if std::env::var("OPENBOX_TEST_DB").as_deref() == Ok("postgres") && !extra.iter().any(|a| a == "--db") {
            extra.extend(["--db".to_owned(), postgres_database(postgres_server())]);
        }
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut proc = Self::spawn_wrapped(wrapper, home.path(), "127.0.0.1:0", &extra, &env);
        let listening = proc.wait_line("listening on ");
        let url = listening
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .expect("URL in the listening line")
            .to_owned();
        let (admin_token, fingerprint) = if first {
            // Not on a terminal: the token is in a private file the login line names.
            let login = proc.wait_line("openbox login --server");
            let file = flag_value(&login, "--token-file").expect("the token file in the login line");
            let token = std::fs::read_to_string(&file).expect("the admin's token file").trim().to_owned();
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).expect("token file").permissions());
            assert_eq!(mode & 0o777, 0o600, "{file}");
            (token, flag_value(&login, "--fingerprint"))
        } else {
            (String::new(), None)
        };
        let addr = url.split_once("://").expect("a URL").1.to_owned();
        ControlPlane {
            proc: Some(proc),
            home,
            url,
            addr,
            fingerprint,
            admin_token,
            extra,
            env,
            wrapped: !wrapper.is_empty(),
        }
    }

    fn spawn(&self) -> Proc {
        ControlPlane::spawn_wrapped(&[], self.home.path(), &self.addr, &self.extra, &self.env)
    }

    fn spawn_wrapped(wrapper: &[&str], home: &Path, addr: &str, extra: &[String], env: &[(String, String)]) -> Proc {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("openbox-control"));
                c
            }
            None => Command::new(bin("openbox-control")),
        };
        // Should it join a tailnet, it must not reach out on the machine's own address.
        cmd.env("OPENBOX_HOME", home).env(MESH_TEST_ENV.0, MESH_TEST_ENV.1).envs(env.iter().map(|(k, v)| (k, v)));
        // On `addr` unless the test gives its own.
        if !extra.iter().any(|a| a == "--addr") {
            cmd.args(["--addr", addr]);
        }
        // Nodes show offline 2s after their last heartbeat, unless the test says otherwise.
        if !extra.iter().any(|a| a == "--offline-after") {
            cmd.args(["--offline-after", "2s"]);
        }
        cmd.args(extra);
        Proc::spawn(cmd, home.join("control.log"))
    }

    /// Waits for a line of the control plane's output that contains `needle`.
    pub fn wait_line(&mut self, needle: &str) -> String {
        self.proc.as_mut().expect("running").wait_line(needle)
    }

    /// Stops the control plane (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        match self.proc.take() {
            Some(mut p) if self.wrapped => {
                p.stop_wrapped();
            }
            proc => {
                self.proc = proc;
                stop(&mut self.proc);
            }
        }
    }

    /// Kills the control plane outright (SIGKILL).
    pub fn kill(&mut self) {
        kill(&mut self.proc);
    }

    /// Freezes the control plane (SIGSTOP): anything that asks it now hangs.
    pub fn pause(&self) {
        signal(&self.proc, Signal::STOP);
    }

    /// Lets a paused control plane run again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.proc, Signal::CONT);
    }

    /// Starts it again on the same address with the same files.
    pub fn restart(&mut self) {
        self.stop();
        let mut proc = self.spawn();
        proc.wait_line("listening on ");
        self.proc = Some(proc);
    }

    /// Starts it again on the same address with the same files and these arguments from now
    /// on; its URL and fingerprint are as it prints them now.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        let mut proc = self.spawn();
        let listening = proc.wait_line("listening on ");
        self.url = listening.split_whitespace().find(|w| w.contains("://")).expect("URL").to_owned();
        self.fingerprint = None;
        if self.url.starts_with("https://") {
            let line = proc.wait_line("TLS certificate key ");
            self.fingerprint = line.split_whitespace().find(|w| w.starts_with("SHA256:")).map(str::to_owned);
        }
        self.proc = Some(proc);
    }

    /// POSTs `body` to `path` over a plain HTTP/1.1 connection with the admin's token, as
    /// a script might, and returns the whole raw response.
    pub fn post_raw(&self, path: &str, body: &str) -> String {
        post_raw(&self.addr, path, Some(&self.admin_token), body)
    }

    /// The real CA, loaded from the control plane's key file.
    pub fn ca(&self) -> trust::Ca {
        let text = std::fs::read_to_string(self.ca_path()).expect("CA key file");
        trust::Ca::from_openssh(&text).expect("CA key")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.home.path().join("control/ca_key")
    }

    /// The control plane's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("control.log")).unwrap_or_default()
    }

    pub fn db_path(&self) -> PathBuf {
        self.home.path().join("control/openbox.db")
    }

    /// Everything its registry holds, as bytes: the SQLite file and its write-ahead log, or
    /// a dump of its PostgreSQL database.
    pub fn stored_bytes(&self) -> Vec<u8> {
        let db = self.extra.iter().skip_while(|a| *a != "--db").nth(1);
        match db.filter(|d| d.starts_with("postgres")) {
            Some(url) => {
                let out = Command::new("pg_dump").args(["--data-only", url]).output().expect("pg_dump");
                assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
                out.stdout
            }
            None => {
                let mut bytes = std::fs::read(self.db_path()).expect("the database file");
                bytes.extend(std::fs::read(self.db_path().with_extension("db-wal")).unwrap_or_default());
                bytes
            }
        }
    }
}

/// One person's CLI identity: an `OPENBOX_HOME` of its own.
pub struct Cli {
    pub home: TempDir,
    /// Environment for every call (and so for the openboxd a call starts).
    env: Vec<(String, String)>,
}

impl Drop for Cli {
    /// Stops this identity's openboxds (one per context), if calls started them.
    fn drop(&mut self) {
        let contexts = std::fs::read_dir(self.home.path().join("contexts")).into_iter().flatten().flatten();
        let names = std::iter::once("default".to_owned())
            .chain(contexts.filter_map(|e| e.file_name().to_str().map(str::to_owned)));
        for name in names {
            let (socket, log) = match name.as_str() {
                "default" => ("run/openboxd.sock".to_owned(), "logs/openboxd.log".to_owned()),
                n => (format!("run/contexts/{n}/openboxd.sock"), format!("logs/contexts/{n}/openboxd.log")),
            };
            if std::thread::panicking() {
                let log = self.home.path().join(log);
                eprintln!("---- log {} ----\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
            }
            if self.home.path().join(socket).exists() {
                let _ = self.cmd().args(["--context", &name, "daemon", "stop"]).output();
            }
        }
    }
}

impl Default for Cli {
    fn default() -> Self {
        Cli::new()
    }
}

impl Cli {
    pub fn new() -> Cli {
        Cli { home: tempfile::tempdir().expect("tempdir"), env: Vec::new() }
    }

    /// A CLI whose calls (and the openboxd they start) have these variables set.
    pub fn with_env(env: &[(&str, &str)]) -> Cli {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Cli { home: tempfile::tempdir().expect("tempdir"), env }
    }

    /// As [`Cli::logged_in`], for a CLI made with [`Cli::with_env`].
    pub fn log_in(self, cp: &ControlPlane, token: &str) -> Cli {
        let mut args = vec!["login", "--server", &cp.url, "--token", token];
        if let Some(fp) = &cp.fingerprint {
            args.extend(["--fingerprint", fp]);
        }
        self.run(&args).ok();
        self
    }

    /// A CLI logged in to `cp` with `token` (its TLS key pinned, when it has one).
    pub fn logged_in(cp: &ControlPlane, token: &str) -> Cli {
        let cli = Cli::new();
        let mut args = vec!["login", "--server", &cp.url, "--token", token];
        if let Some(fp) = &cp.fingerprint {
            args.extend(["--fingerprint", fp]);
        }
        cli.run(&args).ok();
        cli
    }

    /// Adds a user (this CLI being an admin's) and returns theirs, logged in. They may run
    /// nothing until granted (`openbox user grant`).
    pub fn add_user(&self, cp: &ControlPlane, name: &str) -> Cli {
        let token =
            self.run(&["user", "add", name, "--json"]).ok().json()["token"].as_str().expect("a token").to_owned();
        Cli::logged_in(cp, &token)
    }

    /// The admin, logged in with the bootstrap token.
    pub fn admin(cp: &ControlPlane) -> Cli {
        Cli::logged_in(cp, &cp.admin_token)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("openbox"));
        c.env("OPENBOX_HOME", self.home.path()).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, b"")
    }

    /// `openbox ARGS`, started with its stdin, stdout and stderr piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openbox")
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let mut child = self.spawn(args);
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait openbox");
        let _ = feeder.join();
        Out::from(out)
    }

    /// Starts `openbox ARGS` and returns it once it has printed its first stdout line.
    pub fn start_until_line(&self, args: &[&str]) -> (Child, String) {
        let mut child = self.cmd().args(args).stdout(Stdio::piped()).spawn().expect("spawn openbox");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line).expect("read a line");
        (child, line)
    }

    /// Mints an enrollment token with these tags.
    pub fn enroll_token(&self, tags: &[&str]) -> String {
        let mut args = vec!["node", "token", "--json"];
        for t in tags {
            args.extend(["--tag", t]);
        }
        self.run(&args).ok().json()["token"].as_str().expect("token").to_owned()
    }

    /// `openbox daemon status --json`.
    pub fn daemon_status(&self) -> serde_json::Value {
        self.run(&["daemon", "status", "--json"]).ok().json()
    }

    /// The node list as JSON.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        self.run(&["nodes", "--json"]).ok().json().as_array().expect("array").clone()
    }

    /// The listed node with this id, if any.
    pub fn node(&self, id: &str) -> Option<serde_json::Value> {
        self.nodes().into_iter().find(|n| n["id"] == id)
    }
}

/// An agent on 127.0.0.1 with its own home.
pub struct Agent {
    proc: Option<Proc>,
    /// Environment for the agent process (kept for restarts).
    env: Vec<(String, String)>,
    /// A program the agent runs under (strace), with its arguments; usually none.
    wrapper: Vec<String>,
    /// A command that sets the scene and then execs the agent (so it keeps the pid).
    prefix: Vec<String>,
    pub home: TempDir,
    pub node_id: String,
    pub name: String,
    pub addr: String,
}

impl Agent {
    /// Enrolls a new node carrying `tags`, using a token the admin mints.
    pub fn enroll(cp: &ControlPlane, admin: &Cli, tags: &[&str]) -> Agent {
        let token = admin.enroll_token(tags);
        Agent::enroll_with(cp, &token, &[])
    }

    /// Enrolls with this token and extra agent arguments. The agent sees no Docker engine.
    pub fn enroll_with(cp: &ControlPlane, token: &str, extra: &[&str]) -> Agent {
        Agent::enroll_env(cp, token, extra, &[])
    }

    /// Enrolls with extra environment, e.g. `DOCKER_HOST` from [`engines`]. Without a
    /// `DOCKER_HOST` here the agent is pointed at a socket that does not exist, so tests
    /// never depend on an engine the machine happens to run.
    pub fn enroll_env(cp: &ControlPlane, token: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut extra = extra.to_vec();
        if let Some(fp) = &cp.fingerprint {
            extra.extend(["--fingerprint", fp]);
        }
        Agent::enroll_at(&cp.url, token, &extra, env)
    }

    /// Like [`Agent::enroll_env`], with the agent started by `prefix` (a program that sets
    /// the scene and then runs the rest of its arguments, such as `prlimit …`).
    pub fn enroll_under(cp: &ControlPlane, token: &str, prefix: &[&str], extra: &[&str]) -> Agent {
        let mut extra = extra.to_vec();
        if let Some(fp) = &cp.fingerprint {
            extra.extend(["--fingerprint", fp]);
        }
        Agent::enroll_with_prefix(&cp.url, token, &extra, &[], prefix)
    }

    /// Like [`Agent::enroll_env`], with the control plane at `server`.
    pub fn enroll_at(server: &str, token: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::enroll_with_prefix(server, token, extra, env, &[])
    }

    fn enroll_with_prefix(server: &str, token: &str, extra: &[&str], env: &[(&str, &str)], prefix: &[&str]) -> Agent {
        let home = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["--server", server];
        args.extend(extra);
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // The token as the printed command passes it: in the environment.
        env.push(("OPENBOX_ENROLL_TOKEN".into(), token.into()));
        if !env.iter().any(|(k, _)| k == "DOCKER_HOST") {
            env.push(("DOCKER_HOST".into(), format!("unix://{}/no-engine.sock", home.path().display())));
        }
        let mut agent = Agent {
            proc: None,
            env,
            wrapper: Vec::new(),
            prefix: prefix.iter().map(|p| p.to_string()).collect(),
            home,
            node_id: String::new(),
            name: String::new(),
            addr: String::new(),
        };
        agent.start(&args);
        agent
    }

    /// Enrolls a node that is on `hs`'s tailnet only (no TCP listener at all).
    pub fn enroll_mesh(cp: &ControlPlane, token: &str, hs: &Headscale, auth_key: &str, extra: &[&str]) -> Agent {
        let mut args = vec!["--mesh-control", hs.url.as_str()];
        args.extend(extra);
        Agent::enroll_env(cp, token, &args, &[("OPENBOX_MESH_AUTHKEY", auth_key), MESH_TEST_ENV])
    }

    /// Like [`Agent::enroll_mesh`], with the agent running under strace, which writes
    /// what it sends to `trace` (see [`beyond_loopback`]).
    pub fn enroll_mesh_traced(cp: &ControlPlane, token: &str, hs: &Headscale, auth_key: &str, trace: &Path) -> Agent {
        let home = tempfile::tempdir().expect("tempdir");
        let env = vec![
            ("OPENBOX_MESH_AUTHKEY".to_owned(), auth_key.to_owned()),
            (MESH_TEST_ENV.0.to_owned(), MESH_TEST_ENV.1.to_owned()),
            ("DOCKER_HOST".to_owned(), format!("unix://{}/no-engine.sock", home.path().display())),
            ("OPENBOX_ENROLL_TOKEN".to_owned(), token.to_owned()),
        ];
        let wrapper: Vec<String> = std::iter::once("strace".to_owned())
            .chain(STRACE_NETWORK.iter().map(|a| a.to_string()))
            .chain(["-o".to_owned(), trace.display().to_string()])
            .collect();
        let mut agent = Agent {
            proc: None,
            env,
            wrapper,
            prefix: Vec::new(),
            home,
            node_id: String::new(),
            name: String::new(),
            addr: String::new(),
        };
        agent.start(&["--server", &cp.url, "--mesh-control", &hs.url]);
        agent
    }

    /// Enrolls a node that looks to the control plane like another machine: its agent (root,
    /// like the others) runs in a mount namespace of its own where /etc/machine-id differs.
    pub fn enroll_elsewhere(cp: &ControlPlane, admin: &Cli, tags: &[&str]) -> Agent {
        let home = tempfile::tempdir().expect("tempdir");
        let machine_id = home.path().join("machine-id");
        std::fs::write(&machine_id, format!("{}\n", trust::token::random_id())).unwrap();
        let env = vec![
            ("OPENBOX_ENROLL_TOKEN".to_owned(), admin.enroll_token(tags)),
            ("DOCKER_HOST".to_owned(), format!("unix://{}/no-engine.sock", home.path().display())),
        ];
        let prefix = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
            .iter()
            .map(|a| a.to_string())
            .chain(["mount --bind \"$0\" /etc/machine-id && exec \"$@\"".to_owned(), machine_id.display().to_string()])
            .collect();
        let mut agent = Agent {
            proc: None,
            env,
            wrapper: Vec::new(),
            prefix,
            home,
            node_id: String::new(),
            name: String::new(),
            addr: String::new(),
        };
        agent.start(&["--server", &cp.url]);
        agent
    }

    /// The agent's process id (under a wrapper, the wrapper's).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running agent").child.id()
    }

    /// Runs the agent binary in a fresh home until it exits (for refusals).
    pub fn run_to_end(args: &[&str]) -> Out {
        let home = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin("openbox-agent"))
            .env("OPENBOX_HOME", home.path())
            .args(["--addr", "127.0.0.1:0", "--heartbeat", "1s"])
            .args(args)
            .output()
            .expect("run agent");
        Out::from(out)
    }

    fn start(&mut self, args: &[&str]) {
        let mut cmd = match self.wrapper.split_first().or(self.prefix.split_first()) {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("openbox-agent"));
                c
            }
            None => Command::new(bin("openbox-agent")),
        };
        cmd.env("OPENBOX_HOME", self.home.path()).args(["--heartbeat", "1s"]).args(args);
        // A TCP listener on a free port, unless this node is meant for a tailnet (then it
        // has a TCP listener only when the test asks for one).
        if !self.env.iter().any(|(k, _)| k == MESH_TEST_ENV.0) && !args.contains(&"--addr") {
            cmd.args(["--addr", "127.0.0.1:0"]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::spawn(cmd, self.home.path().join("agent.log"));
        // "openbox agent: node NAME (ID) serving on ADDR"
        let line = proc.wait_line("serving on ");
        let words: Vec<&str> = line.split_whitespace().collect();
        self.name = words[3].to_owned();
        self.node_id = words[4].trim_matches(|c| c == '(' || c == ')').to_owned();
        self.addr = words.last().expect("addr").to_string();
        self.proc = Some(proc);
    }

    /// Stops the agent (SIGTERM, so it says goodbye) and starts it again without a token.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Like [`Agent::restart`], with these arguments.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.stop();
        self.start(args);
    }

    pub fn stop(&mut self) {
        if self.wrapper.is_empty() {
            return stop(&mut self.proc);
        }
        if let Some(mut p) = self.proc.take() {
            p.stop_wrapped();
        }
    }

    /// Freezes the agent (SIGSTOP): its port still accepts connections, and nothing
    /// answers — a frozen node. It runs again on [`Agent::resume`], or when stopped.
    pub fn pause(&self) {
        signal(&self.proc, Signal::STOP);
    }

    /// Lets a frozen agent run again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.proc, Signal::CONT);
    }

    /// Sends `sig` and waits for the agent to exit; how it exited.
    pub fn signal_and_wait(&mut self, sig: Signal) -> std::process::ExitStatus {
        let mut p = self.proc.take().expect("running agent");
        p.signal(sig);
        p.wait_exit()
    }

    /// Kills the agent outright (SIGKILL): no goodbye.
    pub fn kill(&mut self) {
        kill(&mut self.proc);
    }

    /// Waits for the agent to exit by itself; returns its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.as_mut().expect("running agent").wait_exit()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("agent.log")).unwrap_or_default()
    }

    pub fn identity_file(&self) -> PathBuf {
        self.home.path().join("agent/identity.json")
    }

    pub fn host_key_file(&self) -> PathBuf {
        self.home.path().join("agent/host_key")
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
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

/// Feeds up to `total` bytes of zeros into `openbox ARGS` (run by `cli`) and returns how
/// many it took before it stopped taking more — all of them, or what it held when its
/// input made no progress for two seconds (the command it runs does not read) — with the
/// running call, for the caller to end.
pub fn feed_until_held_back(cli: &Cli, args: &[&str], total: u64) -> (u64, Child) {
    let mut child = cli.spawn(args);
    let mut stdin = child.stdin.take().expect("piped");
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            while written.load(std::sync::atomic::Ordering::Relaxed) < total {
                if stdin.write_all(&chunk).is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut last = (0, std::time::Instant::now());
    loop {
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if writer.is_finished() || now >= total {
            break;
        }
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break; // held back
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (written.load(std::sync::atomic::Ordering::Relaxed), child)
}

/// The real container engines the isolation tests run against, started once per test
/// process by `scripts/test-engines` (podman's Docker-API service, a local image, an
/// nspawn root tree). A machine without them fails these tests; it does not skip them.
pub struct Engines {
    /// `unix://…` for `DOCKER_HOST`.
    pub docker_host: String,
    /// A small local image with busybox.
    pub image: String,
    /// The same with an `ENTRYPOINT` that openbox must not run.
    pub entrypoint_image: String,
    /// The same with `/usr/local/bin/euid`, setuid root, which prints its effective uid.
    pub suid_image: String,
    /// A root tree for systemd-nspawn.
    pub tree: String,
    /// The podman settings those engines run with (`CONTAINERS_CONF` for podman commands).
    pub containers_conf: String,
}

impl Engines {
    /// Containers the engine holds with this label (`key=value`), as the engine lists them.
    pub fn containers(&self, label: &str) -> Vec<serde_json::Value> {
        let sock = self.docker_host.strip_prefix("unix://").expect("unix socket");
        let filters = format!("{{\"label\":[\"{label}\"]}}");
        let out = Command::new("curl")
            .args(["-fsS", "--unix-socket", sock, "-G", "http://d/v1.41/containers/json", "-d", "all=1"])
            .arg("--data-urlencode")
            .arg(format!("filters={filters}"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "listing containers failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("container list")
    }
}

/// podman with the test engines' settings (`CONTAINERS_CONF`), run to its end.
pub fn podman(args: &[&str]) -> Out {
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &engines().containers_conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podman");
    Out::from(out)
}

pub fn engines() -> &'static Engines {
    static ENGINES: std::sync::OnceLock<Engines> = std::sync::OnceLock::new();
    ENGINES.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-engines");
        let out = Command::new(&script).output().expect("run scripts/test-engines");
        assert!(
            out.status.success(),
            "scripts/test-engines failed (the isolation tests need podman, runc, systemd-nspawn and busybox; \
             scripts/setup-test-env installs them):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("scripts/test-engines printed no {k}:\n{text}"))
                .to_owned()
        };
        Engines {
            docker_host: get("DOCKER_HOST"),
            image: get("OPENBOX_TEST_IMAGE"),
            entrypoint_image: get("OPENBOX_TEST_ENTRYPOINT_IMAGE"),
            suid_image: get("OPENBOX_TEST_SUID_IMAGE"),
            tree: get("OPENBOX_TEST_TREE"),
            containers_conf: get("CONTAINERS_CONF"),
        }
    })
}

/// A load balancer in front of several servers, as small as one can be: each connection
/// goes to the first backend that accepts it, so a stopped one is passed over.
pub struct TcpBalancer {
    pub addr: String,
}

impl TcpBalancer {
    pub fn start(backends: &[&str]) -> TcpBalancer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the balancer");
        let addr = listener.local_addr().unwrap().to_string();
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let backends = backends.clone();
                std::thread::spawn(move || {
                    let Some(server) = backends.iter().find_map(|b| std::net::TcpStream::connect(b).ok()) else {
                        return; // none up: the client sees the connection close
                    };
                    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_read, &mut s_write);
                        let _ = s_write.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut s_read, mut c_write) = (server, client);
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        TcpBalancer { addr }
    }
}

/// One server-sent event: its name, its id (if it has one) and its data.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// A `GET` server-sent event stream read over a plain connection, as a script would.
pub struct SseStream {
    reader: std::io::BufReader<std::net::TcpStream>,
    /// The last `id:` the stream sent, with or without data.
    last_id: Option<String>,
}

impl SseStream {
    /// Opens `path` on `addr` with a bearer token; panics unless the answer is 200.
    pub fn open(addr: &str, path: &str, token: &str) -> SseStream {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the control plane");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("write request");
        let mut reader = std::io::BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            if line.trim().is_empty() {
                break;
            }
        }
        SseStream { reader, last_id: None }
    }

    /// The last id the stream sent (an event's, or one sent alone).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The next event (keep-alive comments skipped), waiting at most `within`.
    pub fn next(&mut self, within: Duration) -> Option<SseEvent> {
        use std::io::BufRead;
        self.reader.get_ref().set_read_timeout(Some(within)).expect("read timeout");
        let (mut name, mut id, mut data) = (String::from("message"), None, Vec::new());
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("reading the event stream: {e}"),
            }
            let line = line.trim_end_matches(['\r', '\n']);
            // The body is chunked: a chunk's size line is neither a field nor blank.
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
                self.last_id.clone_from(&id);
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            } else if line.is_empty() && !data.is_empty() {
                return Some(SseEvent { name, id, data: data.join("\n") });
            }
        }
    }

    /// Reads events until one satisfies `want`, for at most `within` in all; that one.
    pub fn wait_for(&mut self, what: &str, within: Duration, mut want: impl FnMut(&SseEvent) -> bool) -> SseEvent {
        let end = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.next(left) {
                Some(e) if want(&e) => return e,
                Some(e) => seen.push(format!("{} {}", e.name, e.data)),
                None => break,
            }
        }
        panic!("no event: {what}; saw {seen:#?}");
    }
}

/// The test PostgreSQL server (`scripts/test-postgres`, started once per test process; a
/// machine without PostgreSQL fails these tests): `postgres://USER@HOST:PORT`.
pub fn postgres_server() -> &'static str {
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| postgres_cluster(&[]))
}

/// Starts (or finds) a PostgreSQL cluster with `scripts/test-postgres` and these variables
/// (`OPENBOX_TEST_POSTGRES_DIR`, `…_PORT` for one of a test's own); its server URL.
pub fn postgres_cluster(env: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres");
    let out = Command::new(&script).envs(env.iter().copied()).output().expect("run scripts/test-postgres");
    assert!(
        out.status.success(),
        "scripts/test-postgres failed (these tests need PostgreSQL; scripts/setup-test-env installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix("OPENBOX_TEST_POSTGRES="))
        .unwrap_or_else(|| panic!("scripts/test-postgres printed no OPENBOX_TEST_POSTGRES:\n{text}"))
        .to_owned()
}

/// Runs SQL on a PostgreSQL database with psql; its output, one row a line.
pub fn psql(url: &str, sql: &str) -> String {
    let out =
        Command::new("psql").args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).output().expect("psql");
    assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A new, empty database on `server`: its URL.
pub fn postgres_database(server: &str) -> String {
    let name = format!("e2e_{}", &trust::token::random_id()[..12]);
    psql(&format!("{server}/postgres"), &format!("CREATE DATABASE {name}"));
    format!("{server}/{name}")
}

/// A control plane, its admin logged in, and one agent tagged `t`; `run` adds the flags
/// that choose an isolation (`--docker IMAGE`, `--nspawn DIR`) to every command.
pub struct IsolatedFleet {
    pub cp: ControlPlane,
    pub cli: Cli,
    pub agent: Agent,
    pub e: &'static Engines,
    mode: Vec<String>,
}

impl IsolatedFleet {
    /// Commands run with `--docker IMAGE`; the agent reaches the test engine.
    pub fn docker(agent_args: &[&str]) -> IsolatedFleet {
        let e = engines();
        IsolatedFleet::start(e, &["--docker", &e.image], agent_args, &[("DOCKER_HOST", &e.docker_host)])
    }

    /// Commands run with `--nspawn TREE`.
    pub fn nspawn(agent_args: &[&str]) -> IsolatedFleet {
        let e = engines();
        IsolatedFleet::start(e, &["--nspawn", &e.tree], agent_args, &[])
    }

    fn start(e: &'static Engines, mode: &[&str], agent_args: &[&str], env: &[(&str, &str)]) -> IsolatedFleet {
        let cp = ControlPlane::start();
        let cli = Cli::admin(&cp);
        let agent = Agent::enroll_env(&cp, &cli.enroll_token(&["t"]), agent_args, env);
        IsolatedFleet { cp, cli, agent, e, mode: mode.iter().map(|m| m.to_string()).collect() }
    }

    /// `openbox -t t MODE [extra…] CMD`
    pub fn run(&self, extra: &[&str], cmd: &str) -> Out {
        self.run_stdin(extra, cmd, b"")
    }

    pub fn run_stdin(&self, extra: &[&str], cmd: &str, input: &[u8]) -> Out {
        self.run_by(&self.cli, extra, cmd, input)
    }

    /// As [`IsolatedFleet::run_stdin`], by another user (see [`IsolatedFleet::user`]).
    pub fn run_by(&self, who: &Cli, extra: &[&str], cmd: &str, input: &[u8]) -> Out {
        let mut args = vec!["-t", "t"];
        args.extend(self.mode.iter().map(String::as_str));
        args.extend(extra);
        args.push(cmd);
        who.run_stdin(&args, input)
    }

    /// A user who is not an admin, granted this fleet's node by name (it shares the
    /// control plane's machine) with this fleet's isolation kind and `more` kinds.
    pub fn user(&self, name: &str, more: &[&str]) -> Cli {
        let user = self.cli.add_user(&self.cp, name);
        let kind = self.mode[0].trim_start_matches("--");
        let mut args = vec!["user", "grant", name, "--node", &self.agent.name, "--isolation", kind];
        for k in more {
            args.extend(["--isolation", k]);
        }
        self.cli.run(&args).ok();
        wait_until("the granted node to reach the user's node list", || !user.nodes().is_empty());
        user
    }

    /// Checks that `--mount DIR:/data:ro --network none` gives the command that directory,
    /// read only, and no network but loopback. Returns the directory.
    pub fn check_read_only_mount_without_network(&self) -> TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("in.txt"), "from the host\n").expect("write");
        let ro = format!("{}:/data:ro", dir.path().display());
        let out =
            self.run(&["--mount", &ro, "--network", "none"], "cat /data/in.txt; ls /sys/class/net; touch /data/x");
        assert_ne!(out.code, 0, "a read-only mount must refuse writes: {out:?}");
        assert_eq!(out.stdout, "from the host\nlo\n");
        assert!(!dir.path().join("x").exists());
        dir
    }

    /// Checks that input a command does not read stays with the caller: `openbox -t t MODE
    /// 'sleep 60'` takes less than 64 MiB of a 3 GiB stream, and the agent stays under 100
    /// MiB. The call is then killed (its container should go with it).
    pub fn check_unread_input_is_held_back(&self) {
        let mut args = vec!["-t", "t"];
        args.extend(self.mode.iter().map(String::as_str));
        args.push("sleep 60");
        let (taken, mut child) = feed_until_held_back(&self.cli, &args, 3 << 30);
        assert!(taken < 64 << 20, "the caller was held back at the window, but it took {} MiB", taken >> 20);
        let peak = peak_memory(self.agent.pid());
        assert!(peak < 100 << 20, "the agent peaked at {} MiB", peak >> 20);
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// Starts `openbox -t t MODE CMD` and returns it once it printed its first line.
    pub fn start_until_line(&self, cmd: &str) -> (Child, String) {
        let mut args = vec!["-t", "t"];
        args.extend(self.mode.iter().map(String::as_str));
        args.push(cmd);
        self.cli.start_until_line(&args)
    }
}

/// A fresh tokio runtime for tests that speak SSH directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

pub use proto::time::now;

/// What tailnet processes in tests need in their environment from the start: their
/// nodes would otherwise offer each other the machine's own interface addresses.
pub const MESH_TEST_ENV: (&str, &str) = ("TS_DEBUG_OMIT_LOCAL_ADDRS", "true");

/// A Headscale control server on 127.0.0.1 (plain http, its embedded DERP relay), in a
/// temporary directory of its own, stopped when dropped. The binary comes from
/// `scripts/test-headscale` (built once, cached).
pub struct Headscale {
    proc: Option<Proc>,
    bin: PathBuf,
    dir: TempDir,
    /// `http://127.0.0.1:PORT`: the control URL nodes use.
    pub url: String,
}

impl Headscale {
    pub fn start() -> Headscale {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-headscale");
        let out = Command::new(&script).output().expect("run scripts/test-headscale");
        assert!(
            out.status.success(),
            "scripts/test-headscale failed (the mesh tests need Go >= 1.25 and the Go module proxy):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, grpc, stun) = (free_port(), free_port(), free_port());
        let d = dir.path().display();
        let url = format!("http://127.0.0.1:{http}");
        let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/headscale.yaml"))
            .expect("scripts/headscale.yaml");
        let config = [
            ("{url}", url.clone()),
            ("{http}", http.to_string()),
            ("{grpc}", grpc.to_string()),
            ("{stun}", stun.to_string()),
            ("{d}", d.to_string()),
        ]
        .iter()
        .fold(template, |text, (key, value)| text.replace(key, value));
        std::fs::write(dir.path().join("config.yaml"), config).expect("write config");
        let mut hs = Headscale { proc: None, bin, dir, url };
        hs.spawn();
        hs
    }

    /// Freezes Headscale (SIGSTOP): connections to it hang, as to a server that is away.
    pub fn pause(&self) {
        signal(&self.proc, Signal::STOP);
    }

    /// Lets a paused Headscale run again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.proc, Signal::CONT);
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(self.dir.path().join("config.yaml")).arg("serve");
        self.proc = Some(Proc::spawn(cmd, self.dir.path().join("headscale.log")));
        let health = format!("{}/health", self.url);
        wait_until("Headscale to answer", || {
            Command::new("curl").args(["-fs", "-o", "/dev/null", &health]).status().is_ok_and(|s| s.success())
        });
    }

    /// Stops it and starts it again on the same address with the same state.
    pub fn restart(&mut self) {
        stop(&mut self.proc);
        self.spawn();
    }

    /// Runs a `headscale` command against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .args(args)
            .output()
            .expect("run headscale");
        assert!(out.status.success(), "headscale {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// A reusable pre-authorized key for `user` (created if need be), valid for an hour.
    pub fn auth_key(&self, user: &str) -> String {
        self.new_key(user)["key"].as_str().expect("key").to_owned()
    }

    /// A key for `user` that has been expired.
    pub fn expired_auth_key(&self, user: &str) -> String {
        let key = self.new_key(user);
        let id = key["id"].as_u64().expect("key id").to_string();
        self.cli(&["preauthkeys", "expire", "-i", &id, "--force"]);
        key["key"].as_str().expect("key").to_owned()
    }

    fn new_key(&self, user: &str) -> serde_json::Value {
        let users: serde_json::Value = serde_json::from_str(&self.cli(&["users", "list", "-o", "json"])).expect("json");
        let known = users.as_array().into_iter().flatten().find(|u| u["name"] == user).and_then(|u| u["id"].as_u64());
        let id = match known {
            Some(id) => id,
            None => {
                let made: serde_json::Value =
                    serde_json::from_str(&self.cli(&["users", "create", user, "-o", "json"])).expect("json");
                made["id"].as_u64().expect("user id")
            }
        };
        let key: serde_json::Value = serde_json::from_str(&self.cli(&[
            "preauthkeys",
            "create",
            "-u",
            &id.to_string(),
            "--reusable",
            "-e",
            "1h",
            "-o",
            "json",
        ]))
        .expect("json");
        key
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("headscale.log")).unwrap_or_default()
    }
}

/// What `strace` traces in meshed processes: every way they could send a packet.
pub const STRACE_NETWORK: [&str; 5] = ["-f", "-qq", "-yy", "-e", "trace=connect,sendto,sendmsg,sendmmsg,write,writev"];

/// Lines of an `strace -yy` log that send to (or open TCP to) an address outside
/// loopback. Only addresses strace itself prints are read — socket annotations such as
/// `<UDP:[a:p->b:q]>` and `inet_addr("…")` / `inet_pton(AF_INET6, "…")` — never the bytes
/// written. A UDP `connect` sends nothing (Go uses one to learn the default route); a
/// later write on that socket carries its peer in the annotation and is caught.
pub fn beyond_loopback(trace: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in trace.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        let sends = call.starts_with("send") || call.starts_with("write");
        let tcp_connect = call.starts_with("connect(") && line.contains("<TCP");
        if (sends || tcp_connect) && addresses(line).iter().any(|ip| !is_loopback(ip)) {
            bad.push(line.to_owned());
        }
    }
    bad
}

fn is_loopback(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The socket addresses strace names in one line.
fn addresses(line: &str) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    // Annotations: <UDP:[10.0.0.2:5000->8.8.8.8:53]>, <TCPv6:[[::1]:1->[::1]:2]>.
    for start in ["<TCP", "<UDP"] {
        for part in line.split(start).skip(1) {
            let Some(inner) = part.split_once(":[").and_then(|(_, rest)| rest.split_once("]>")).map(|(i, _)| i) else {
                continue;
            };
            for end in inner.split("->") {
                let host = match end.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(""),
                    None => end.rsplit_once(':').map_or(end, |(h, _)| h),
                };
                if let Ok(ip) = host.parse() {
                    found.push(ip);
                }
            }
        }
    }
    // Explicit destinations: inet_addr("8.8.8.8"), inet_pton(AF_INET6, "2001:db8::1", …).
    for marker in ["inet_addr(\"", "inet_pton(AF_INET6, \""] {
        for part in line.split(marker).skip(1) {
            if let Some(ip) = part.split('"').next().and_then(|a| a.parse().ok()) {
                found.push(ip);
            }
        }
    }
    found
}

/// Headless Chromium (Debian's), driven through `web/tests/browser.mjs` with playwright-core:
/// one JSON request per call. Every step waits for what it needs (up to 15 s); a step that
/// fails panics with the browser's own message.
pub struct Browser {
    child: Child,
    stdin: std::process::ChildStdin,
    answers: BufReader<std::process::ChildStdout>,
}

impl Browser {
    /// Starts a browser; the test fails (it does not skip) when node, the npm packages
    /// (`scripts/setup-test-env` installs them) or Chromium are missing.
    pub fn start() -> Browser {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/tests");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "web/tests/node_modules is missing: run scripts/setup-test-env (it runs `npm ci` there)"
        );
        let mut child = Command::new("node")
            .arg("browser.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js 20) runs the browser driver");
        let stdin = child.stdin.take().expect("piped");
        let answers = BufReader::new(child.stdout.take().expect("piped"));
        Browser { child, stdin, answers }
    }

    /// Runs one step: `op` with `args` (a JSON object); its answer, or its error message.
    pub fn try_call(&mut self, op: &str, args: serde_json::Value) -> Result<serde_json::Value, String> {
        let mut request = args;
        request["op"] = op.into();
        writeln!(self.stdin, "{request}").expect("the browser driver is running");
        let mut line = String::new();
        self.answers.read_line(&mut line).expect("an answer from the browser driver");
        assert!(!line.is_empty(), "the browser driver exited (see its output above)");
        let answer: serde_json::Value = serde_json::from_str(&line).expect("a JSON answer");
        match answer["ok"].as_bool() {
            Some(true) => Ok(answer["value"].clone()),
            _ => Err(answer["error"].as_str().unwrap_or("?").to_owned()),
        }
    }

    pub fn call(&mut self, op: &str, args: serde_json::Value) -> serde_json::Value {
        self.try_call(op, args.clone()).unwrap_or_else(|e| panic!("browser step {op} {args} failed: {e}"))
    }

    /// A new browser context (no cookies) with this window size and colour scheme.
    pub fn fresh(&mut self, width: u32, height: u32, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.call("fresh", serde_json::json!({"width": width, "height": height, "colorScheme": scheme}));
    }

    pub fn goto(&mut self, url: &str) {
        self.call("goto", serde_json::json!({ "url": url }));
    }

    pub fn fill(&mut self, selector: &str, value: &str) {
        self.call("fill", serde_json::json!({ "selector": selector, "value": value }));
    }

    pub fn click(&mut self, selector: &str) {
        self.call("click", serde_json::json!({ "selector": selector }));
    }

    pub fn select(&mut self, selector: &str, value: &str) {
        self.call("select", serde_json::json!({ "selector": selector, "value": value }));
    }

    pub fn wait(&mut self, selector: &str) {
        self.call("wait", serde_json::json!({ "selector": selector }));
    }

    pub fn press(&mut self, selector: &str, key: &str) {
        self.call("press", serde_json::json!({ "selector": selector, "key": key }));
    }

    pub fn wait_gone(&mut self, selector: &str) {
        self.call("wait", serde_json::json!({ "selector": selector, "state": "detached" }));
    }

    /// Waits until `selector`'s text contains `text`, and returns that text.
    pub fn wait_text(&mut self, selector: &str, text: &str) -> String {
        let v = self.call("waitText", serde_json::json!({ "selector": selector, "text": text }));
        v.as_str().unwrap_or_default().to_owned()
    }

    pub fn text(&mut self, selector: &str) -> String {
        self.call("text", serde_json::json!({ "selector": selector })).as_str().unwrap_or_default().to_owned()
    }

    pub fn count(&mut self, selector: &str) -> u64 {
        self.call("count", serde_json::json!({ "selector": selector })).as_u64().unwrap_or_default()
    }

    /// Evaluates a JavaScript expression in the page (a promise is awaited).
    pub fn eval(&mut self, js: &str) -> serde_json::Value {
        self.call("eval", serde_json::json!({ "js": js }))
    }

    pub fn cookies(&mut self) -> Vec<serde_json::Value> {
        self.call("cookies", serde_json::json!({})).as_array().cloned().unwrap_or_default()
    }

    /// Every URL the page has asked for since the last [`Browser::fresh`].
    pub fn requests(&mut self) -> Vec<String> {
        let v = self.call("requests", serde_json::json!({}));
        v.as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_owned)).collect()
    }

    pub fn screenshot(&mut self, path: &Path) {
        self.call("screenshot", serde_json::json!({ "path": path }));
    }

    /// Logs in through the login form with `token` and waits for the fleet page.
    pub fn log_in(&mut self, url: &str, token: &str) {
        self.goto(url);
        self.fill("#token", token);
        self.click("form button[type=submit]");
        self.wait("#counts");
    }
}

impl Drop for Browser {
    /// Ends the driver by closing its input, so that it closes the browser and removes its
    /// profile directory; kills it if it does not end within a few seconds.
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"quit\"}\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A link to a network namespace this fixture makes: a veth pair, the namespace at `.2`,
/// this side at `.1`, and a blackhole route so nothing aimed at the subnet leaves the
/// machine. It can be cut (its far end set down: packets vanish, as behind a partition)
/// and healed. The namespace, and everything still running in it, goes when it is dropped.
pub struct Link {
    netns: String,
    veth: String,
    subnet: String,
}

impl Link {
    pub fn new(kind: &str) -> Link {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = std::process::id() % 100;
        let (netns, veth) = (format!("ob{kind}{tag}_{n}"), format!("obv{kind}{tag}_{n}"));
        // Subnets apart for each test process (and for SSH hosts, as before).
        let subnet = if kind == "ssh" { format!("10.{}.{n}", 100 + tag) } else { format!("10.{tag}.{}", 100 + n) };
        sh(&format!(
            "ip netns add {netns} && ip link add {veth} type veth peer name {veth}p && ip link set {veth}p netns {netns} \
             && ip addr add {subnet}.1/24 dev {veth} && ip link set {veth} up \
             && ip -n {netns} addr add {subnet}.2/24 dev {veth}p && ip -n {netns} link set {veth}p up \
             && ip -n {netns} link set lo up && ip route add blackhole {subnet}.0/24 metric 4000"
        ));
        Link { netns, veth, subnet }
    }

    /// The command prefix that runs a program in the namespace.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.netns]
    }

    /// The namespace's address.
    pub fn addr(&self) -> String {
        format!("{}.2", self.subnet)
    }

    /// This machine's address on the link (where what runs in the namespace reaches it).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// An address on the link where nothing answers.
    pub fn unused_addr(&self) -> String {
        format!("{}.3", self.subnet)
    }

    /// Cuts the link: from now on every packet either way is lost, and nobody is told.
    pub fn cut(&self) {
        sh(&format!("ip -n {} link set {}p down", self.netns, self.veth));
    }

    /// Heals a cut link.
    pub fn heal(&self) {
        sh(&format!("ip -n {} link set {}p up", self.netns, self.veth));
    }

    /// The pids of the processes running in the namespace.
    pub fn pids(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.netns]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let (netns, veth, subnet) = (&self.netns, &self.veth, &self.subnet);
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns pids {netns} | xargs -r kill -9; ip netns del {netns}; ip link del {veth} 2>/dev/null; \
                     ip route del blackhole {subnet}.0/24 metric 4000"
                ),
            ])
            .status();
    }
}

/// A machine reachable only over SSH, for `openbox node add`: OpenSSH's sshd behind a
/// [`Link`] and in a mount namespace
/// where the account `obnode` exists (its own /etc/passwd, shadow and group, a home under
/// a temporary directory, another machine id). Everything it starts runs in those
/// namespaces and is killed, with the namespace, when it is dropped.
pub struct SshHost {
    link: Link,
    pub dir: TempDir,
    sshd: Option<Child>,
    /// The password of `obnode`.
    pub password: &'static str,
}

/// `correct horse`, as crypt(3) SHA-512 with a fixed salt.
const OBNODE_HASH: &str =
    "$6$obtestsalt$/RXWbCZ7QP.UM3EH9BXc8WF/izGQ30jLG8IaP8rPZ4YneHN6TwCarbHa3l4VyZ8A1v/OvGIE6tfUw4vYeykq21";
const OBNODE_UID: u32 = 4242;

fn sh(cmd: &str) {
    let status = Command::new("sh").args(["-c", cmd]).status().expect("sh");
    assert!(status.success(), "{cmd}: {status}");
}

impl SshHost {
    pub fn start() -> SshHost {
        let link = Link::new("ssh");
        let subnet = link.subnet.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let etc = |name: &str, extra: &str| {
            let text = std::fs::read_to_string(format!("/etc/{name}")).unwrap_or_default();
            std::fs::write(dir.path().join(name), format!("{text}{extra}\n")).expect("write");
        };
        etc("passwd", &format!("obnode:x:{OBNODE_UID}:{OBNODE_UID}:openbox test node:{d}/home:/bin/sh"));
        etc("shadow", &format!("obnode:{OBNODE_HASH}:19000:0:99999:7:::"));
        etc("group", &format!("obnode:x:{OBNODE_UID}:"));
        let n: u64 = subnet.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        std::fs::write(dir.path().join("machine-id"), format!("{:032x}\n", 0x0b55_0000u64 + n)).unwrap();
        std::fs::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        sh(&format!("chown -R {OBNODE_UID}:{OBNODE_UID} {d}/home && ssh-keygen -q -t ed25519 -N '' -f {d}/hostkey"));
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "ListenAddress {subnet}.2:22\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\nAuthorizedKeysFile %h/.ssh/authorized_keys\n\
                 UsePAM no\nStrictModes no\nUseDNS no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut host = SshHost { link, dir, sshd: None, password: "correct horse" };
        host.start_sshd();
        host
    }

    fn start_sshd(&mut self) {
        let d = self.dir.path().display().to_string();
        let log = self.dir.path().join("sshd.log");
        let _ = std::fs::remove_file(&log);
        let inner = format!(
            "for f in passwd shadow group machine-id; do mount --bind {d}/$f /etc/$f || exit 1; done; \
             exec /usr/sbin/sshd -D -f {d}/sshd_config -E {d}/sshd.log"
        );
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.link.netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &inner,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        self.sshd = Some(child);
        wait_until("sshd listening in its namespace", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Server listening"))
        });
    }

    /// `obnode@ADDR`.
    pub fn target(&self) -> String {
        format!("obnode@{}", self.addr())
    }

    /// The machine's address.
    pub fn addr(&self) -> String {
        self.link.addr()
    }

    /// An address on the link where nothing answers.
    pub fn unused_addr(&self) -> String {
        self.link.unused_addr()
    }

    /// This machine's address on the link to it (where a control plane it must reach listens).
    pub fn gateway(&self) -> String {
        self.link.gateway()
    }

    /// The host key's fingerprint, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen").arg("-lf").arg(self.dir.path().join("hostkey.pub")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).expect("a fingerprint").to_owned()
    }

    /// Lets `public_key` (OpenSSH format) log in.
    pub fn authorize(&self, public_key: &str) {
        let path = self.dir.path().join("home/.ssh/authorized_keys");
        std::fs::write(&path, format!("{}\n", public_key.trim())).unwrap();
        sh(&format!("chown -R {OBNODE_UID}:{OBNODE_UID} {}", self.dir.path().join("home").display()));
    }

    /// The machine gets a new host key (it was reinstalled, or someone is in the middle).
    pub fn swap_host_key(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let d = self.dir.path().display();
        sh(&format!(
            "pkill -F {d}/sshd.pid 2>/dev/null; rm -f {d}/hostkey {d}/hostkey.pub && ssh-keygen -q -t ed25519 -N '' -f {d}/hostkey"
        ));
        self.start_sshd();
    }

    /// A file under obnode's home, if it exists.
    pub fn home_file(&self, rel: &str) -> PathBuf {
        self.dir.path().join("home").join(rel)
    }

    /// The command lines of the processes running in the namespace besides sshd (an
    /// exited one waiting to be reaped does not count).
    pub fn processes(&self) -> Vec<String> {
        let pids = self.link.pids();
        let zombie = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
                .unwrap_or(true)
        };
        pids.iter()
            .filter(|pid| !zombie(pid))
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok())
            .map(|c| c.replace('\0', " ").trim().to_owned())
            // A process on its way out has let go of its memory, and its command line reads
            // empty before it shows as a zombie.
            .filter(|c| !c.is_empty() && !c.contains("sshd"))
            .collect()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.dir.path().join("sshd.log");
            eprintln!("---- {} ----\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
            let agent = self.dir.path().join("home/.local/state/openbox/agent.log");
            eprintln!("---- {} ----\n{}", agent.display(), std::fs::read_to_string(&agent).unwrap_or_default());
        }
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Checks that a session's commands get the caller's stdin, and only their own:
/// `run(cmd, input)` runs `cmd` in one session with `input` as stdin.
#[track_caller]
pub fn check_session_stdin(run: impl Fn(&str, &[u8]) -> Out) {
    assert_eq!(run("cat", b"a\nb\n").ok().stdout, "a\nb\n");
    assert_eq!(run("read v; echo $v", b"x\n").ok().stdout, "x\n");
    // What a command leaves unread is not the next one's.
    assert_eq!(run("read v; echo $v", b"first\nsecond\nthird\n").ok().stdout, "first\n");
    assert_eq!(run("cat", b"").ok().stdout, "");
    assert_eq!(run("cat", b"z\n").ok().stdout, "z\n");
    // Every byte, in order, of a stream larger than any buffer on the way.
    let data: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut local = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    local.stdin.take().expect("piped").write_all(&data).expect("write");
    let want = String::from_utf8(local.wait_with_output().expect("sha256sum").stdout).expect("utf-8");
    let got = run("sha256sum", &data).ok().stdout;
    assert_eq!(got.split_whitespace().next(), want.split_whitespace().next());
    // Input a command does not read ends with it, and the shell is none the worse.
    assert_eq!(run("echo done", &data[..8 << 20]).ok().stdout, "done\n");
    assert_eq!(run("cat", b"").ok().stdout, "");
}

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
