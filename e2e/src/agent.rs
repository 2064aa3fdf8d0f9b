//! Agents: `openbox-agent` enrolled with a control plane, stopped, frozen, killed and
//! started again.

use crate::*;

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
