//! The CLI: `openbox` with a home of its own (and so an openboxd of its own), logged in.

use crate::*;

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
        Cli::logged_in(cp, &self.new_user_token(name))
    }

    /// `openbox user add NAME` (as this admin): the new user's login token.
    pub fn new_user_token(&self, name: &str) -> String {
        self.run(&["user", "add", name, "--json"]).ok().json()["token"].as_str().expect("a token").to_owned()
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

    /// One request straight to openboxd's socket (after `hello`), as a script would send
    /// it: its answer (`result` or `error`), notifications before it skipped.
    pub fn rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::{BufRead as _, Write as _};
        let socket = self.daemon_status()["socket"].as_str().expect("the socket").to_owned();
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).expect("openboxd's socket");
        let hello = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "hello",
            "params": {"protocol": proto::rpc::PROTOCOL, "client": "e2e"}});
        let call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        writeln!(conn, "{hello}\n{call}").expect("write to openboxd");
        for line in std::io::BufReader::new(conn).lines() {
            let message: serde_json::Value = serde_json::from_str(&line.expect("read")).expect("JSON");
            if message["id"] == 1 {
                return message;
            }
        }
        panic!("openboxd closed the connection without answering {method}")
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
