//! A control plane: `openbox-control` on 127.0.0.1 (or an address given), on SQLite or
//! PostgreSQL, with its admin's token.

use crate::*;

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
    /// The login command the first start printed (empty for a replica).
    pub login_command: String,
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
        let (admin_token, fingerprint, login_command) = if first {
            // Not on a terminal: the token is in a private file the login line names.
            let login = proc.wait_line("openbox login --server");
            let file = flag_value(&login, "--token-file").expect("the token file in the login line");
            let token = std::fs::read_to_string(&file).expect("the admin's token file").trim().to_owned();
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).expect("token file").permissions());
            assert_eq!(mode & 0o777, 0o600, "{file}");
            (token, flag_value(&login, "--fingerprint"), login.trim().to_owned())
        } else {
            (String::new(), None, String::new())
        };
        let addr = url.split_once("://").expect("a URL").1.to_owned();
        ControlPlane {
            proc: Some(proc),
            home,
            url,
            addr,
            fingerprint,
            admin_token,
            login_command,
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
