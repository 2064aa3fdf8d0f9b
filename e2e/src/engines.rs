//! The container engines the isolation tests use (podman's Docker API, systemd-nspawn) and
//! a fleet whose commands run under one of them.

use crate::*;

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

    /// A job in a terminal in a session's container: it sees the container's files, shows
    /// its screen, takes keys, and ends with its program.
    pub fn terminal_job_in_a_session(&self) {
        self.run(&["-s", "tty"], "echo from-the-session > /tmp/mark").ok();
        let started =
            self.run(&["-s", "tty", "--detach", "--terminal", "6x40"], "cat /tmp/mark; read x; echo got $x").ok();
        let id = started.stdout.trim().to_owned();
        let lines = || -> Vec<String> {
            let screen = self.cli.run(&["job", "screen", &id, "--json"]).ok().json();
            screen["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect()
        };
        wait_until("the program's first line on its screen", || lines()[0] == "from-the-session");
        self.cli.run_stdin(&["job", "send", &id], b"typed\r").ok();
        wait_until("what it printed for the keys", || lines()[..3] == ["from-the-session", "typed", "got typed"]);
        self.cli.run(&["job", "wait", &id, "--timeout", "30s"]).ok();
        // Stopped, everything it started goes: the shell's child holds the terminal too.
        let started = self.run(&["-s", "tty", "--detach", "--terminal", "6x40"], "sleep 300; echo never").ok();
        let id = started.stdout.trim().to_owned();
        let stopped = self.cli.run(&["job", "stop", &id, "--json"]).ok().json();
        assert_eq!(stopped["state"], "exited", "{stopped}");
        self.cli.run(&["session", "rm", "tty"]).ok();
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
