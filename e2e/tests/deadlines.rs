//! The contract of one call, through the real binaries: it ends within its deadline
//! whatever state the node is in, a dead node is noticed without one, and whatever the
//! caller gives up on stops on the node too.

use std::process::Child;
use std::time::{Duration, Instant};

use openbox_e2e::{Agent, Cli, ControlPlane, Out, wait_until};
use rustix::process::{Pid, Signal, kill_process};

/// How many processes whose command line is `needle` run on this machine.
fn count_running(needle: &str) -> usize {
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

fn running(needle: &str) -> bool {
    count_running(needle) > 0
}

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

/// `openbox ARGS` running, once it has printed its first line.
struct Call {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: tempfile::NamedTempFile,
}

impl Call {
    fn start(cli: &Cli, args: &[&str]) -> Call {
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

    fn signal(&self, sig: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), sig).unwrap();
    }

    fn end(mut self) -> Out {
        use std::io::Read as _;
        let mut stdout = String::new();
        self.stdout.read_to_string(&mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap();
        Out { code: status.code().unwrap_or(-1), stdout, stderr }
    }
}

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
    assert!(out.stderr.contains(&agent.node_id) && out.stderr.contains("stopped answering"), "{out:?}");
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
