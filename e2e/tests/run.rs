//! `openbox -t TAG cmd` and `-n NODE cmd`: ssh-like command words, separate live streams,
//! stdin, exit codes, and a byte path that does not touch the control plane.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use openbox_e2e::{Agent, Cli, ControlPlane};

fn fleet(tags: &[&str]) -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, tags);
    (cp, admin, agent)
}

#[test]
fn command_words_are_joined_and_run_by_the_nodes_shell() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    assert_eq!(cli.run(&["-t", "t", "cd /tmp && pwd"]).ok().stdout, "/tmp\n");
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.txt", "b.txt", "c.log"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let d = dir.path().to_str().unwrap();
    assert_eq!(cli.run(&["-t", "t", "cd", d, "&&", "ls", "*.txt"]).ok().stdout, "a.txt\nb.txt\n");
    assert_eq!(cli.run(&["-t", "t", "echo", "-n", "x"]).ok().stdout, "x", "flags after the command belong to it");
}

#[test]
fn stdout_and_stderr_stay_separate_and_the_exit_code_is_the_remote_one() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    let out = cli.run(&["-t", "t", "echo to-out; echo to-err >&2; exit 7"]);
    assert_eq!(out.code, 7);
    assert_eq!(out.stdout, "to-out\n");
    assert_eq!(out.stderr, "to-err\n");
    assert_eq!(cli.run(&["-t", "t", "false"]).code, 1);
}

#[test]
fn a_remote_signal_exits_128_plus_its_number() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    let out = cli.run(&["-t", "t", "kill -TERM $$"]);
    assert_eq!(out.code, 128 + 15, "{out:?}");
    assert!(out.stderr.contains("signal TERM"), "{out:?}");
    assert_eq!(cli.run(&["-t", "t", "kill -KILL $$"]).code, 128 + 9);
}

#[test]
fn json_gives_one_object_with_the_streams_exit_code_signal_duration_and_cuts() {
    let (_cp, cli, agent) = fleet(&["t"]);
    let out = cli.run(&["--json", "-t", "t", "echo to-out; echo to-err >&2; exit 7"]);
    assert_eq!(out.code, 7, "the exit code is the remote one, as without --json");
    assert_eq!(out.stderr, "", "everything is in the object");
    let v = out.json();
    assert_eq!(v["node"], agent.name.as_str());
    assert_eq!((v["stdout"].as_str(), v["stderr"].as_str()), (Some("to-out\n"), Some("to-err\n")), "{v}");
    assert_eq!((v["exit_code"].as_u64(), v["signal"].is_null()), (Some(7), true), "{v}");
    assert!(v["duration_ms"].is_u64() && v["error"].is_null(), "{v}");
    assert_eq!(v["truncated"], serde_json::json!({"stdout": false, "stderr": false}));

    let killed = cli.run(&["-t", "t", "--json", "kill -TERM $$"]);
    assert_eq!((killed.code, &killed.json()["signal"]), (143, &serde_json::json!("TERM")), "{killed:?}");
    let cut = cli.run(&["--json", "--max-output", "100", "-t", "t", "seq 1 1000"]).ok().json();
    assert_eq!(cut["truncated"]["stdout"], true, "{cut}");
    // Bytes that are not text come exact, base64-encoded.
    let binary = cli.run(&["--json", "-t", "t", "printf '\\377\\000\\201'"]).ok().json();
    assert_eq!(binary["stdout_base64"], "/wCB", "{binary}");
    assert!(binary["stdout"].is_null(), "{binary}");
    // openbox's own failure: 255, and why in `error`, not in the command's stderr.
    let missing = cli.run(&["--json", "-n", "nosuchnode", "true"]);
    assert_eq!(missing.code, 255, "{missing:?}");
    let v = missing.json();
    assert!(v["error"].as_str().is_some_and(|e| e.contains("nosuchnode")) && v["stderr"] == "", "{v}");
}

#[test]
fn stdin_is_forwarded() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    assert_eq!(cli.run_stdin(&["-t", "t", "cat"], b"hi\n").ok().stdout, "hi\n");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = cli.run_stdin(&["-t", "t", "wc -c"], &big).ok();
    assert_eq!(out.stdout.trim(), "3000000");
}

/// Sends `len` bytes through `cat` on the node while reading them back, and checks that
/// all of them came back, in order.
fn echo_through_cat(cli: &Cli, len: u32, seed: u32) {
    let data: Vec<u8> = (0..len).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut child = cli.cmd().args(["-t", "t", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let feeder = std::thread::spawn(move || stdin.write_all(&sent));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout == data, "got {} bytes back of {}", out.stdout.len(), data.len());
}

#[test]
fn a_command_streaming_stdin_to_stdout_neither_hangs_nor_loses_bytes() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    // More than every pipe and window in between can hold, in both directions at once.
    echo_through_cat(&cli, 30_000_000, 0);
}

#[test]
fn commands_streaming_both_ways_at_once_on_one_connection_all_finish() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    cli.run(&["-t", "t", "true"]).ok(); // one pooled connection, which the calls below share
    // Their windows together hold far more than the sockets between openboxd and the
    // agent buffer: both ends have more to write than the other has yet read.
    std::thread::scope(|s| {
        for seed in 0..4 {
            let cli = &cli;
            s.spawn(move || echo_through_cat(cli, 20_000_000, seed));
        }
    });
}

#[test]
fn large_output_arrives_complete() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    let out = cli.cmd().args(["-t", "t", "head -c 20000000 /dev/zero"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 20_000_000);
    assert!(out.stdout.iter().all(|b| *b == 0));
}

#[test]
fn output_streams_while_the_command_runs() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    let mut child = cli
        .cmd()
        .args(["-t", "t", "echo first; read reply; echo \"got $reply\""])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The command is blocked on stdin, so this line can only have arrived live.
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got go");
    assert!(child.wait().unwrap().success());
}

#[test]
fn command_bytes_do_not_pass_through_the_control_plane() {
    let (mut cp, cli, _agent) = fleet(&["t"]);
    let mut child = cli
        .cmd()
        .args(["-t", "t", "echo started; read reply; echo \"got $reply\""])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    cp.kill(); // the command keeps talking to the node without it
    writeln!(child.stdin.take().unwrap(), "direct").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got direct");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_node_is_picked_by_id_or_name_and_a_tag_prefers_online_nodes() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let a = Agent::enroll_with(&cp, &admin.enroll_token(&["pool"]), &["--name", "alpha"]);
    let mut b = Agent::enroll_with(&cp, &admin.enroll_token(&["pool"]), &["--name", "beta"]);
    assert_eq!(admin.run(&["-n", &a.node_id, "echo $OPENBOX_NODE"]).ok().stdout.trim(), a.node_id);
    assert_eq!(admin.run(&["-n", "beta", "echo $OPENBOX_NODE"]).ok().stdout.trim(), b.node_id);
    b.stop();
    for _ in 0..5 {
        assert_eq!(admin.run(&["-t", "pool", "echo $OPENBOX_NODE"]).ok().stdout.trim(), a.node_id);
    }
}

#[test]
fn two_users_run_side_by_side_each_as_themselves() {
    let (cp, admin, agent) = fleet(&["t"]);
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    assert_eq!(admin.run(&["-t", "t", "echo $OPENBOX_USER"]).ok().stdout, "admin\n");
    assert_eq!(bob.run(&["-t", "t", "echo $OPENBOX_USER"]).ok().stdout, "bob\n");
    assert_ne!(
        std::fs::read(admin.home.path().join("id_ed25519")).unwrap(),
        std::fs::read(bob.home.path().join("id_ed25519")).unwrap(),
        "each identity has its own key"
    );
}

#[test]
fn a_timeout_stops_what_a_command_left_running_after_its_shell_exited() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    // The shell exits at once; the background `sleep` keeps the output open.
    let out = cli.run(&["--timeout", "1s", "-t", "t", "sleep 300 & echo started"]);
    assert_eq!((out.code, out.stdout.as_str()), (124, "started\n"), "{out:?}");
    assert!(out.stderr.contains("timed out after 1s"), "{out:?}");
}

#[test]
fn durations_take_the_forms_people_write_and_a_bad_one_says_which_forms() {
    let (_cp, cli, _agent) = fleet(&["t"]);
    // Half a second: the command is stopped well before it would end.
    let out = cli.run(&["--timeout", "500ms", "-t", "t", "echo started; sleep 30"]);
    assert_eq!((out.code, out.stdout.as_str()), (124, "started\n"), "{out:?}");
    assert!(out.stderr.contains("timed out after 500ms"), "{out:?}");
    cli.run(&["--timeout", "1m30s", "-t", "t", "true"]).ok();
    let token = cli.run(&["node", "token", "--tag", "t", "--ttl", "1h30m", "--json"]).ok().json();
    let left = token["expires_at"].as_u64().expect("expires_at") - proto_now();
    assert!((5300..=5400).contains(&left), "a token for 1h30m expires in {left}s");
    let out = cli.run(&["--timeout", "5 fortnights", "-t", "t", "true"]).fails_with(2, "write it as 90s, 1m30s, 500ms");
    assert!(out.stderr.contains("--timeout"), "{out:?}");
    // Where whole seconds are kept, a fraction is refused rather than rounded.
    cli.run(&["node", "token", "--tag", "t", "--ttl", "1500ms"]).fails_with(2, "whole seconds");
}

fn proto_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn verbose_says_how_the_call_went_and_quiet_and_verbose_do_not_mix() {
    let (_cp, cli, agent) = fleet(&["t"]);
    // The first call: the control plane picks the node; openbox dials it.
    let first = cli.run(&["-v", "-t", "t", "echo", "hi"]).ok();
    assert_eq!(first.stdout, "hi\n", "the answer is as without -v");
    assert!(first.stderr.contains("the control plane chose the node and signed a certificate"), "{first:?}");
    assert!(
        first.stderr.contains(&format!("connected and authenticated node={} addr={}", agent.name, agent.addr)),
        "{first:?}"
    );
    assert!(
        first.stderr.lines().all(|l| l.starts_with("openbox: [debug] openbox")),
        "openbox's own lines only: {first:?}"
    );
    // The next reuses what the first made.
    let next = cli.run(&["--verbose", "-t", "t", "true"]).ok();
    assert!(next.stderr.contains("an open connection to it is used"), "{next:?}");
    // Without it, nothing but the answer.
    assert_eq!(cli.run(&["-t", "t", "echo", "hi"]).ok().stderr, "");
    cli.run(&["-q", "-v", "-t", "t", "true"]).fails_with(2, "cannot be used with");
}
