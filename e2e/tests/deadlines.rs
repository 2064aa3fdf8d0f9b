//! The contract of one call, through the real binaries: it ends within its deadline
//! whatever state the node is in, a dead node is noticed without one, and whatever the
//! caller gives up on stops on the node too.

use std::time::{Duration, Instant};

use openbox_e2e::{Agent, Call, Cli, ControlPlane, Link, Out, count_running, running, wait_until};
use rustix::process::{Pid, Signal, kill_process};

/// A control plane that keeps a frozen node listed online for the length of a test, as
/// one with the default `--offline-after` would for its first half minute.
fn control_plane() -> ControlPlane {
    ControlPlane::start_with(&["--offline-after", "60s"])
}

/// `cli ARGS`, timed.
fn timed(cli: &Cli, args: &[&str]) -> (Out, Duration) {
    let t0 = Instant::now();
    let out = cli.run(args);
    (out, t0.elapsed())
}

/// How much later than its deadline a call may end here (the contract says a second;
/// this machine is shared and loaded).
const SLACK: Duration = Duration::from_millis(2500);

#[test]
fn a_frozen_node_holds_no_call_past_its_deadline_warm_cold_or_fanned_out() {
    let cp = control_plane();
    let admin = Cli::admin(&cp);
    let frozen = Agent::enroll(&cp, &admin, &["t", "all"]);
    let _healthy = Agent::enroll(&cp, &admin, &["all"]);
    admin.run(&["-t", "t", "true"]).ok(); // a warm connection to it
    let cold = Cli::admin(&cp); // no connection, no certificate
    frozen.pause();

    for (who, cli) in [("warm", &admin), ("cold", &cold)] {
        let (out, took) = timed(cli, &["-t", "t", "--timeout", "3s", "echo hi"]);
        assert_eq!(out.code, 124, "{who}: {out:?}");
        assert!(out.stderr.contains("timed out after 3s"), "{who}: {out:?}");
        assert!(took < Duration::from_secs(3) + SLACK, "{who}: it took {took:?}");
    }

    // Fanned out: the healthy node's result and the summary come, the frozen node counts
    // as timed out, and the call ends with 124 on time.
    let (out, took) = timed(&admin, &["-t", "all", "--all", "--timeout", "3s", "echo hi"]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stdout.contains(": hi"), "{out:?}");
    assert!(out.stderr.contains("timed out") && out.stderr.contains(&frozen.name), "{out:?}");
    assert!(took < Duration::from_secs(3) + SLACK, "it took {took:?}");

    frozen.resume();
    assert_eq!(admin.run(&["-t", "t", "echo back"]).ok().stdout, "back\n");
}

#[test]
fn a_node_that_freezes_under_a_command_is_noticed_without_a_deadline() {
    let cp = control_plane();
    let admin = Cli::with_env(&[
        ("OPENBOX_SERVER_ALIVE_INTERVAL", "1s"),
        ("OPENBOX_SERVER_ALIVE_COUNT_MAX", "2"),
        ("OPENBOX_CONNECT_TIMEOUT", "2s"),
    ])
    .log_in(&cp, &cp.admin_token);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    let call = Call::start(&admin, &["-t", "t", "echo started; sleep 60"]);
    agent.pause();
    let t0 = Instant::now();
    let out = call.end();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains(&format!("node {} ", agent.name)) && out.stderr.contains("stopped answering"),
        "{out:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3) + SLACK, "noticed after {:?}", t0.elapsed());

    // A new call does not wait on the dead connection: it dials afresh and says the node
    // does not answer.
    let (out, took) = timed(&admin, &["-t", "t", "true"]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("no answer within 2s"), "{out:?}");
    assert!(took < Duration::from_secs(10), "it took {took:?}");
    agent.resume();
    wait_until("the node to serve again", || admin.run(&["-t", "t", "true"]).code == 0);
}

#[test]
fn signals_to_the_cli_reach_the_command_on_the_node_before_it_exits() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _a = Agent::enroll(&cp, &admin, &["t"]);
    let _b = Agent::enroll(&cp, &admin, &["t"]);
    for (sig, code) in [(Signal::INT, 130), (Signal::TERM, 143), (Signal::HUP, 129)] {
        // One node.
        let marker = format!("sleep 313{code}");
        let call = Call::start(&admin, &["-t", "t", &format!("echo go; {marker}")]);
        wait_until("the remote sleep to run", || running(&marker));
        call.signal(sig);
        let out = call.end();
        assert_eq!(out.code, code, "{sig:?}: {out:?}");
        assert!(!running(&marker), "{sig:?}: the remote command outlived the call");

        // Every node of a fan-out, and the summary still comes.
        let marker = format!("sleep 314{code}");
        let call = Call::start(&admin, &["-t", "t", "--all", &format!("echo go; {marker}")]);
        wait_until("both remote sleeps to run", || count_running(&marker) == 2);
        call.signal(sig);
        let out = call.end();
        assert_eq!(out.code, code, "{sig:?}: {out:?}");
        assert!(out.stderr.contains("2 nodes"), "{sig:?}: {out:?}");
        assert!(!running(&marker), "{sig:?}: a node's command outlived the fan-out");
    }

    // Killed outright, the CLI cannot pass anything on: openboxd notices and stops it.
    let call = Call::start(&admin, &["-t", "t", "--all", "echo go; sleep 3150"]);
    wait_until("the remote sleeps to run", || count_running("sleep 3150") == 2);
    call.signal(Signal::KILL);
    call.end();
    wait_until("the remote sleeps to stop", || !running("sleep 3150"));

    // Without a daemon the call's own process passes the signal on.
    let call = Call::start(&admin, &["--no-daemon", "-t", "t", "echo go; sleep 3151"]);
    wait_until("the remote sleep to run", || running("sleep 3151"));
    call.signal(Signal::INT);
    let out = call.end();
    assert_eq!(out.code, 130, "{out:?}");
    assert!(!running("sleep 3151"));
}

/// Whether process `pid` has a file open at `path`.
fn holds_open(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

#[test]
fn a_copy_ends_by_its_deadline_or_a_signal_and_stops_on_the_node() {
    let cp = control_plane();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"x").unwrap();
    let to = |name: &str| format!("{}:{}", agent.name, dir.path().join(name).display());
    admin.run(&["cp", small.to_str().unwrap(), &to("warm")]).ok(); // a warm connection

    // A frozen node: the copy ends at its deadline, 124.
    agent.pause();
    let (out, took) = timed(&admin, &["cp", "--timeout", "2s", small.to_str().unwrap(), &to("frozen")]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed out after 2s; the copy was stopped"), "{out:?}");
    assert!(took < Duration::from_secs(2) + SLACK, "it took {took:?}");
    agent.resume();

    // Signalled mid-copy (its source a pipe that has given part of the file), the CLI exits
    // 128+N, and the node stops writing the file.
    for (sig, code) in [(Signal::INT, 130), (Signal::TERM, 143)] {
        let fifo = dir.path().join(format!("source-{code}"));
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0).unwrap();
        let dst = dir.path().join(format!("copied-{code}"));
        let call = admin
            .cmd()
            .args(["cp", fifo.to_str().unwrap(), &to(&format!("copied-{code}"))])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut source = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        std::io::Write::write_all(&mut source, &[7u8; 100_000]).unwrap();
        wait_until("the node to write the file", || std::fs::metadata(&dst).is_ok_and(|m| m.len() == 100_000));
        assert!(holds_open(agent.pid(), &dst));
        kill_process(Pid::from_raw(call.id() as i32).unwrap(), sig).unwrap();
        let t0 = Instant::now();
        let out = call.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("the copy was stopped"));
        assert!(t0.elapsed() < SLACK, "it took {:?}", t0.elapsed());
        wait_until("the node to let go of the file", || !holds_open(agent.pid(), &dst));
        drop(source);
    }
}

#[test]
fn a_partitioned_node_ends_calls_by_keepalives_or_deadlines_and_its_commands_stop_there() {
    let link = Link::new("part");
    let cp = ControlPlane::start_with(&["--addr", &format!("{}:0", link.gateway()), "--offline-after", "60s"]);
    let admin = Cli::with_env(&[
        ("OPENBOX_SERVER_ALIVE_INTERVAL", "1s"),
        ("OPENBOX_SERVER_ALIVE_COUNT_MAX", "2"),
        ("OPENBOX_CONNECT_TIMEOUT", "2s"),
    ])
    .log_in(&cp, &cp.admin_token);
    let far = Agent::enroll_under(
        &cp,
        &admin.enroll_token(&["far", "all"]),
        &link.prefix(),
        &["--addr", &format!("{}:0", link.addr()), "--client-alive-interval", "1s", "--client-alive-count-max", "2"],
    );
    let _near = Agent::enroll(&cp, &admin, &["all"]);
    admin.run(&["-t", "far", "true"]).ok();

    // Cut under a running command: the keepalives notice on this side, 255 and a line
    // naming the node; on the far side the agent notices its caller is gone and stops it.
    let call = Call::start(&admin, &["-t", "far", "echo started; sleep 3170"]);
    wait_until("the command to run on the far node", || running("sleep 3170"));
    link.cut();
    let t0 = Instant::now();
    let out = call.end();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains(&format!("node {} ", far.name)) && out.stderr.contains("stopped answering"), "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(3) + SLACK, "noticed after {:?}", t0.elapsed());
    wait_until("the far agent to stop the command of a caller it lost", || !running("sleep 3170"));

    // New calls: the deadline holds (124), and without one the dial gives up (255).
    let (out, took) = timed(&admin, &["-t", "far", "--timeout", "1s", "true"]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(took < Duration::from_secs(1) + SLACK, "it took {took:?}");
    let (out, took) = timed(&admin, &["-t", "far", "true"]);
    assert_eq!(out.code, 255, "{out:?}");
    // Silence, or the kernel's word that the link's far end is gone once its neighbour
    // entry has lapsed: either way the node is named.
    let why = ["no answer within 2s", "No route to host"];
    assert!(
        out.stderr.contains(&format!("node {} ", far.name)) && why.iter().any(|w| out.stderr.contains(w)),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(2) + SLACK, "it took {took:?}");

    // Fanned out: the near node's result and the summary come; the far one counts as dead.
    let (out, took) = timed(&admin, &["-t", "all", "--all", "--timeout", "20s", "echo hi"]);
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stdout.matches(": hi").count(), 1, "{out:?}");
    assert!(out.stderr.contains(&far.name) && out.stderr.contains("2 nodes"), "{out:?}");
    assert!(took < Duration::from_secs(2) + SLACK, "it took {took:?}");

    link.heal();
    wait_until("the far node to serve again", || admin.run(&["-t", "far", "true"]).code == 0);
}

/// `openbox mcp` over stdio, spoken to line by line (JSON-RPC).
struct Mcp {
    server: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    next_id: u64,
}

impl Mcp {
    fn start(cli: &Cli) -> Mcp {
        use std::io::BufRead as _;
        let mut server = cli
            .cmd()
            .arg("mcp")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
        let mut mcp = Mcp { server, lines, next_id: 1 };
        let init = serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
        mcp.call("initialize", init);
        mcp.send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        mcp
    }

    fn send(&mut self, message: serde_json::Value) {
        use std::io::Write as _;
        writeln!(self.server.stdin.as_mut().unwrap(), "{message}").unwrap();
    }

    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let line = self.lines.next().expect("an answer").unwrap();
            let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
            if reply["id"] == id {
                return reply["result"].clone();
            }
        }
    }

    /// A tool's structured result.
    fn tool(&mut self, name: &str, arguments: serde_json::Value) -> serde_json::Value {
        let result = self.call("tools/call", serde_json::json!({"name": name, "arguments": arguments}));
        result["structuredContent"].clone()
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn an_mcp_call_to_a_frozen_node_ends_by_its_timeout_alone_or_fanned_out() {
    let cp = control_plane();
    let admin = Cli::admin(&cp);
    let frozen = Agent::enroll(&cp, &admin, &["t", "all"]);
    let _healthy = Agent::enroll(&cp, &admin, &["all"]);
    let mut mcp = Mcp::start(&admin);
    assert_eq!(mcp.tool("run", serde_json::json!({"tag": "t", "command": "echo warm"}))["exit_code"], 0);
    frozen.pause();

    let t0 = Instant::now();
    let ran = mcp.tool("run", serde_json::json!({"tag": "t", "command": "echo hi", "timeout_secs": 3}));
    assert_eq!(ran["exit_code"], 124, "{ran}");
    assert!(t0.elapsed() < Duration::from_secs(3) + SLACK, "it took {:?}", t0.elapsed());

    let t0 = Instant::now();
    let all = mcp.tool("run_all", serde_json::json!({"tags": ["all"], "command": "echo hi", "timeout_secs": 3}));
    assert!(t0.elapsed() < Duration::from_secs(3) + SLACK, "it took {:?}", t0.elapsed());
    let results = all["result"].as_array().or(all["results"].as_array()).unwrap_or_else(|| panic!("{all}"));
    let codes: Vec<i64> = results.iter().map(|r| r["exit_code"].as_i64().unwrap_or(-1)).collect();
    assert!(codes.contains(&0) && codes.contains(&124), "{all}");
    frozen.resume();
}
