//! Jobs (`openbox --detach`, `openbox jobs`, `openbox job …`): commands that run on a node
//! whether or not anyone is connected, their output kept by openboxd — across its own restarts.

use openbox_e2e::{Agent, Cli, ControlPlane, process_running, wait_until};

fn fleet() -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    (cp, admin, agent)
}

/// `openbox --detach ARGS…`: the job's id.
fn detach(cli: &Cli, args: &[&str]) -> String {
    let mut all = vec!["-t", "t", "--detach"];
    all.extend(args);
    let out = cli.run(&all).ok();
    let id = out.stdout.trim().to_owned();
    assert_eq!(id.len(), 10, "{out:?}");
    assert!(out.stderr.contains(&format!("openbox job logs -f {id}")), "how to go on: {out:?}");
    id
}

fn job(cli: &Cli, id: &str) -> serde_json::Value {
    let all = cli.run(&["jobs", "--json"]).ok().json();
    all.as_array().unwrap().iter().find(|j| j["id"] == id).cloned().unwrap_or_else(|| panic!("no job {id}: {all}"))
}

fn daemon_pid(cli: &Cli) -> i32 {
    cli.daemon_status()["pid"].as_i64().unwrap() as i32
}

#[test]
fn a_detached_job_is_listed_waited_for_and_its_output_kept_apart_per_stream() {
    let (_cp, cli, agent) = fleet();
    let id = detach(&cli, &["echo start; sleep 1; echo done >&2; exit 3"]);
    assert_eq!(job(&cli, &id)["state"], "running");
    let waited = cli.run(&["job", "wait", &id]);
    assert_eq!(waited.code, 3, "the job's exit code: {waited:?}");
    let logs = cli.run(&["job", "logs", &id]).ok();
    assert_eq!((logs.stdout.as_str(), logs.stderr.as_str()), ("start\n", "done\n"));
    let j = job(&cli, &id);
    assert_eq!((&j["state"], &j["exit_code"]), (&serde_json::json!("exited"), &serde_json::json!(3)), "{j}");
    let text = cli.run(&["jobs"]).ok().stdout;
    assert!(text.contains(&id) && text.contains("exit 3"), "{text}");
    // Its session of its own goes once it ended and was read.
    let session = j["session"].as_str().unwrap().to_owned();
    wait_until("the job's session to go", || !cli.run(&["sessions"]).ok().stdout.contains(&session));
    // And the node kept its output only until it was read.
    let on_node = agent.home.path().join("agent/jobs/admin").join(&session);
    assert!(on_node.is_dir() && !on_node.join(&id).exists(), "{} still holds the job", on_node.display());
    cli.run(&["job", "rm", &id]).ok();
    cli.run(&["job", "logs", &id]).fails_with(1, "no job");
}

#[test]
fn a_job_runs_on_while_openboxd_is_gone_and_what_it_printed_meanwhile_is_collected() {
    let (_cp, cli, _agent) = fleet();
    let marker = tempfile::tempdir().unwrap();
    let done = marker.path().join("done");
    let script =
        format!("for i in $(seq 1 40); do echo line $i; sleep 0.05; done; touch {}; echo end >&2", done.display());
    let id = detach(&cli, &[&script]);
    let pid = daemon_pid(&cli);
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL).unwrap();
    wait_until("openboxd to be gone", || !process_running(pid));
    // The node ran it to its end with nobody connected.
    wait_until("the job to finish on the node", || done.exists());
    // A new openboxd (the next call starts one) follows it from where the spool stopped.
    let waited = cli.run(&["job", "wait", &id]);
    assert_eq!(waited.code, 0, "{waited:?}");
    assert_ne!(daemon_pid(&cli), pid);
    let logs = cli.run(&["job", "logs", &id]).ok();
    let expected: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(logs.stdout, expected, "every line, none twice");
    assert_eq!(logs.stderr, "end\n");
}

#[test]
fn a_job_takes_input_is_stopped_on_its_node_and_says_what_it_cannot_do() {
    let (_cp, cli, _agent) = fleet();
    let id = detach(&cli, &["--stdin", "read a; read b; echo got $a $b"]);
    cli.run_stdin(&["job", "send", &id], b"one\n").ok();
    cli.run_stdin(&["job", "send", "--close", &id], b"two\n").ok();
    assert_eq!(cli.run(&["job", "wait", &id]).code, 0);
    assert_eq!(cli.run(&["job", "logs", &id]).ok().stdout, "got one two\n");

    let sleeper = detach(&cli, &["sleep 313"]);
    cli.run(&["job", "send", &sleeper]).fails_with(1, "started without stdin");
    cli.run(&["job", "rm", &sleeper]).fails_with(1, "still running: stop it first");
    let stopped = cli.run(&["job", "stop", "--json", &sleeper]).ok().json();
    assert_eq!(stopped["state"], "exited", "{stopped}");
    wait_until("the stopped job's command to end on the node", || {
        std::process::Command::new("pgrep").args(["-f", "sleep 313"]).status().is_ok_and(|s| !s.success())
    });
    // Followed to its end: exits with its code.
    let followed = cli.run(&["job", "logs", "-f", &sleeper]);
    assert_eq!(Some(followed.code), stopped["exit_code"].as_u64().map(|c| c as i32), "{followed:?}");

    // In a named session: one job at a time, each with its own output.
    let first = detach(&cli, &["-s", "named", "echo first; sleep 1"]);
    cli.run(&["-t", "t", "--detach", "-s", "named", "true"]).fails_with(1, "session named is busy");
    assert_eq!(cli.run(&["job", "wait", &first]).code, 0);
    let second = detach(&cli, &["-s", "named", "echo second"]);
    assert_eq!(cli.run(&["job", "wait", &second]).code, 0);
    assert_eq!(cli.run(&["job", "logs", &first]).ok().stdout, "first\n");
    assert_eq!(cli.run(&["job", "logs", &second]).ok().stdout, "second\n");
    assert!(cli.run(&["sessions"]).ok().stdout.contains("named"), "a named session stays");

    let waited = cli.run(&["job", "wait", "--timeout", "1s", &detach(&cli, &["sleep 2"])]);
    assert_eq!(waited.code, 124, "still running at the timeout: {waited:?}");
    cli.run(&["job", "wait", "nosuchjob"]).fails_with(1, "no job \"nosuchjob\"");
    cli.run(&["-t", "t", "--detach", "-i", "true"]).fails_with(2, "cannot be used with");
    cli.run(&["--no-daemon", "-t", "t", "--detach", "true"]).fails_with(1, "leave out --no-daemon");
}

#[test]
fn a_long_output_keeps_its_head_and_tail_and_says_what_it_dropped() {
    let (_cp, cli, _agent) = fleet();
    // 200 numbered lines of 1 MiB each: more than the head (8 MiB) and two tail segments.
    let line = "x".repeat((1 << 20) - 6);
    let id = detach(
        &cli,
        &["for i in $(seq 1000 1199); do printf '%s ' $i; head -c 1048570 /dev/zero | tr '\\0' x; echo; done"],
    );
    assert_eq!(cli.run(&["job", "wait", &id]).code, 0);
    let j = job(&cli, &id);
    assert_eq!(j["stdout_bytes"], 200u64 << 20, "{j}");
    let dropped = j["stdout_dropped"].as_u64().unwrap();
    assert!(dropped > 0 && dropped < 200 << 20, "{j}");
    let logs = cli.run(&["job", "logs", &id]).ok();
    assert!(logs.stdout.starts_with("1000 xxx"), "the head");
    assert!(logs.stdout.ends_with(&format!("1199 {line}\n")), "the tail, to the last byte");
    assert!(logs.stdout.contains(&format!("[… {dropped} bytes dropped …]")), "the gap is said");
    assert_eq!(
        logs.stdout.len() as u64,
        (200 << 20) - dropped + format!("\n[… {dropped} bytes dropped …]\n").len() as u64
    );
}

#[test]
fn ended_jobs_go_after_their_retention() {
    let cp = ControlPlane::start();
    let cli = Cli::with_env(&[("OPENBOX_JOB_RETENTION", "1s")]).log_in(&cp, &cp.admin_token);
    let _agent = Agent::enroll(&cp, &cli, &["t"]);
    let id = detach(&cli, &["true"]);
    assert_eq!(cli.run(&["job", "wait", &id]).code, 0);
    wait_until("the ended job to be removed", || !cli.run(&["jobs"]).ok().stdout.contains(&id));
}

#[test]
fn a_job_in_a_terminal_shows_its_screen_and_takes_keys_for_an_interactive_program() {
    let (_cp, cli, _agent) = fleet();
    let dir = tempfile::tempdir().unwrap();
    let note = dir.path().join("note.txt");
    let id = detach(&cli, &["--terminal", "12x50", &format!("vi {}", note.display())]);
    assert_eq!(job(&cli, &id)["terminal"], serde_json::json!({"rows": 12, "cols": 50}));
    let screen = |cli: &Cli| cli.run(&["job", "screen", &id, "--json"]).ok().json();
    // vi draws an empty file: its rows of `~`, the file's name on the last line.
    wait_until("vi to draw its screen", || {
        let s = screen(&cli);
        let lines: Vec<&str> = s["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        lines.len() == 12 && lines[1..10].iter().all(|l| *l == "~") && lines[11].contains("note.txt")
    });
    assert_eq!(screen(&cli)["cursor"], serde_json::json!([0, 0]));

    // Keys: insert a line, then write and quit.
    cli.run_stdin(&["job", "send", &id], b"ihello from keys").ok();
    wait_until("the typed text to show", || screen(&cli)["lines"][0] == "hello from keys");
    // Its input is its keyboard: it is never closed.
    cli.run_stdin(&["job", "send", "--close", &id], b"").fails_with(1, "stays open");
    cli.run_stdin(&["job", "send", &id], b"\x1b:wq\r").ok();
    cli.run(&["job", "wait", &id, "--timeout", "30s"]).ok();
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "hello from keys\n");
    // Its last screen is kept past its end: vi has left its own (the alternate screen), as
    // a terminal shows it once vi quit.
    let last = screen(&cli);
    assert_eq!((last["rows"].as_u64(), last["cols"].as_u64()), (Some(12), Some(50)), "{last}");
    assert!(!last["lines"].as_array().unwrap().iter().any(|l| l == "~"), "{last}");

    // A job without a terminal has no screen, and says how to get one.
    let plain = detach(&cli, &["true"]);
    cli.run(&["job", "screen", &plain]).fails_with(1, "runs without a terminal");
    cli.run(&["-t", "t", "--detach", "--terminal", "0x80", "true"]).fails_with(2, "rows must be 1 to 500");
    // Through the socket, past the CLI's check, openboxd refuses it too.
    let huge =
        serde_json::json!({"target": {"tag": "t"}, "command": ["true"], "terminal": {"rows": 60000, "cols": 60000}});
    let refused = cli.rpc("job_start", huge);
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("1 to 500 rows")), "{refused}");
}
