//! Persistent sessions: `-s SID` keeps the node, the shell, the cwd and the environment.

use std::process::{Command, Stdio};

use openbox_e2e::{Agent, Cli, ControlPlane, process_running, wait_until};

fn fleet(agent_args: &[&str]) -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll_with(&cp, &admin.enroll_token(&["t"]), agent_args);
    (cp, admin, agent)
}

#[test]
fn the_working_directory_and_exported_variables_persist() {
    let (_cp, cli, _agent) = fleet(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    cli.run(&["-t", "t", "-s", "build", "cd", d]).ok();
    cli.run(&["-t", "t", "-s", "build", "export GREETING=hello; LOCAL=x"]).ok();
    assert_eq!(cli.run(&["-t", "t", "-s", "build", "pwd"]).ok().stdout.trim(), d);
    assert_eq!(cli.run(&["-t", "t", "-s", "build", "echo $GREETING-$LOCAL"]).ok().stdout, "hello-x\n");
    // Another session, and no session at all, start from scratch.
    assert_ne!(cli.run(&["-t", "t", "-s", "other", "pwd"]).ok().stdout.trim(), d);
    assert_eq!(cli.run(&["-t", "t", "echo ${GREETING:-unset}"]).ok().stdout, "unset\n");
}

#[test]
fn exit_codes_are_exact_even_after_output_that_imitates_a_marker() {
    let (_cp, cli, _agent) = fleet(&[]);
    let s = ["-t", "t", "-s", "codes"];
    let run = |cmd: &str| cli.run(&[&s[..], &[cmd]].concat());
    assert_eq!(run("true").code, 0);
    assert_eq!(run("sh -c 'exit 42'").code, 42);
    let fake = run("printf 'OBX:0123456789abcdef0123456789abcdef:0\\n'; printf 'OBX:0123456789abcdef\\n' >&2; false");
    assert_eq!(fake.code, 1, "{fake:?}");
    assert_eq!(fake.stdout, "OBX:0123456789abcdef0123456789abcdef:0\n");
    assert!(fake.stderr.contains("OBX:0123456789abcdef"));
    let partial = run("printf 'no newline at the end'; printf err >&2");
    assert_eq!((partial.code, partial.stdout.as_str(), partial.stderr.as_str()), (0, "no newline at the end", "err"));
    let syntax = run("echo \"unterminated");
    assert_eq!(syntax.code, 2, "a syntax error is the command's failure: {syntax:?}");
    assert_eq!(run("echo still here").stdout, "still here\n");
}

#[test]
fn concurrent_callers_take_turns_in_one_shell() {
    let (_cp, cli, agent) = fleet(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (log, go) = (dir.path().join("log"), dir.path().join("go"));
    // Each command holds the shell until the test says go, so the callers provably overlap:
    // all four have reached the agent while the first still holds the shell.
    let cmd = |i: usize| {
        format!(
            "echo start-{i} >> {log}; while [ ! -e {go} ]; do sleep 0.01; done; echo end-{i} >> {log}; echo $$",
            log = log.display(),
            go = go.display()
        )
    };
    let spawn = |i: usize| cli.cmd().args(["-t", "t", "-s", "queue", &cmd(i)]).stdout(Stdio::piped()).spawn().unwrap();
    let mut children = vec![spawn(0)];
    wait_until("the first command to hold the shell", || std::fs::read_to_string(&log).is_ok_and(|l| !l.is_empty()));
    children.extend((1..4).map(spawn));
    let asked = || agent.log().lines().filter(|l| l.contains(" exec ") && l.contains("\"queue\"")).count();
    wait_until("all four commands to reach the agent", || asked() == 4);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "the others wait their turn");
    std::fs::write(&go, "").unwrap();
    let shells: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(shells.iter().all(|s| *s == shells[0]), "one shell served them all: {shells:?}");
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 8);
    for pair in lines.chunks(2) {
        let n = pair[0].strip_prefix("start-").expect("a command starts");
        assert_eq!(pair[1], format!("end-{n}"), "commands interleaved: {lines:?}");
    }
}

#[test]
fn two_users_with_the_same_session_id_are_isolated() {
    let (cp, admin, agent) = fleet(&[]);
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    admin.run(&["-t", "t", "-s", "shared", "export OWNER=admin; cd /tmp"]).ok();
    assert_eq!(bob.run(&["-t", "t", "-s", "shared", "echo ${OWNER:-none}"]).ok().stdout, "none\n");
    assert_ne!(bob.run(&["-t", "t", "-s", "shared", "pwd"]).ok().stdout, "/tmp\n");
    assert_eq!(admin.run(&["-t", "t", "-s", "shared", "echo $OWNER"]).ok().stdout, "admin\n");
    assert_eq!(bob.run(&["sessions", "--json"]).ok().json().as_array().unwrap().len(), 1);
}

#[test]
fn a_timeout_returns_what_was_printed_exits_124_and_keeps_the_session() {
    let (_cp, cli, _agent) = fleet(&[]);
    cli.run(&["-t", "t", "-s", "slow", "cd /tmp"]).ok();
    let out = cli.run(&["--timeout", "1s", "-t", "t", "-s", "slow", "echo partial; sleep 30; echo never"]);
    assert_eq!(out.code, 124, "{out:?}");
    assert_eq!(out.stdout, "partial\n");
    assert!(out.stderr.contains("timed out after 1s"), "{out:?}");
    assert_eq!(cli.run(&["-t", "t", "-s", "slow", "pwd"]).ok().stdout, "/tmp\n", "the session survived");
    // Outside a session too.
    let out = cli.run(&["--timeout", "1s", "-t", "t", "echo partial; sleep 30"]);
    assert_eq!((out.code, out.stdout.as_str()), (124, "partial\n"));
}

#[test]
fn a_background_job_does_not_hang_the_call() {
    let (_cp, cli, _agent) = fleet(&[]);
    let out = Command::new("timeout")
        .args(["20", openbox_e2e::bin("openbox").to_str().unwrap(), "-t", "t", "-s", "bg", "sleep 60 & echo started"])
        .env("OPENBOX_HOME", cli.home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the call must return while the job runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    cli.run(&["-t", "t", "-s", "bg", "kill %1 2>/dev/null; kill $! 2>/dev/null; true"]).ok();
}

#[test]
fn a_shell_that_exits_says_so_and_the_next_use_starts_a_new_one() {
    let (_cp, cli, _agent) = fleet(&[]);
    cli.run(&["-t", "t", "-s", "s", "cd /tmp"]).ok();
    let out = cli.run(&["-t", "t", "-s", "s", "exit 3"]);
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("the shell exited (status 3)"), "{out:?}");
    // Its next use is told, and runs nothing: nobody works on in the wrong directory.
    let told = cli.run(&["-t", "t", "-s", "s", "pwd"]).fails_with(254, "its shell exited (status 3)");
    assert!(told.stdout.is_empty() && told.stderr.contains("openbox session rm s"), "{told:?}");
    let next = cli.run(&["-t", "t", "-s", "s", "pwd"]).ok();
    assert_ne!(next.stdout, "/tmp\n");
}

#[test]
fn session_rm_stops_the_shell_and_forgets_the_session() {
    let (_cp, cli, _agent) = fleet(&[]);
    let pid: i32 = cli.run(&["-t", "t", "-s", "gone", "echo $$"]).ok().stdout.trim().parse().unwrap();
    let listed = cli.run(&["sessions", "--json"]).ok().json();
    assert_eq!(listed[0]["id"], "gone");
    assert_eq!(listed[0]["state"], "active");
    // A one-shot's connection, and the session's own (its certificate names the session).
    cli.run(&["-t", "t", "true"]).ok();
    assert_eq!(cli.daemon_status()["connections"], 2);
    cli.run(&["session", "rm", "gone"]).ok();
    wait_until("the session's shell to stop", || !process_running(pid));
    assert_eq!(cli.daemon_status()["connections"], 1, "the session's connection went with it");
    assert_eq!(cli.run(&["sessions", "--json"]).ok().json(), serde_json::json!([]));
    cli.run(&["session", "rm", "gone"]).fails_with(1, "no session \"gone\"");
    let again = cli.run(&["-t", "t", "-s", "gone", "echo $$"]).ok();
    assert_ne!(again.stdout.trim(), pid.to_string());
}

#[test]
fn idle_sessions_are_reaped_and_the_next_use_says_so() {
    let (_cp, cli, _agent) = fleet(&["--session-idle", "1s"]);
    cli.run(&["-t", "t", "-s", "idle", "cd /tmp"]).ok();
    wait_until("the directory to show the session reaped", || {
        cli.run(&["sessions", "--json"]).ok().json()[0]["state"] == "reaped"
    });
    cli.run(&["-t", "t", "-s", "idle", "pwd"]).fails_with(254, "its shell was ended after 1s idle");
    let out = cli.run(&["-t", "t", "-s", "idle", "pwd"]).ok();
    assert_ne!(out.stdout, "/tmp\n");
}

#[test]
fn a_session_stays_on_its_node_across_calls_daemons_and_control_plane_restarts() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _a = Agent::enroll(&cp, &admin, &["pool"]);
    let _b = Agent::enroll(&cp, &admin, &["pool"]);
    let first = admin.run(&["-t", "pool", "-s", "sticky", "echo $OPENBOX_NODE"]).ok().stdout;
    for _ in 0..6 {
        assert_eq!(admin.run(&["-t", "pool", "-s", "sticky", "echo $OPENBOX_NODE"]).ok().stdout, first);
    }
    // A fresh openboxd asks the directory; so does one after a control-plane restart.
    admin.run(&["daemon", "stop"]).ok();
    cp.restart();
    for _ in 0..3 {
        assert_eq!(admin.run(&["-t", "pool", "-s", "sticky", "echo $OPENBOX_NODE"]).ok().stdout, first);
    }
    let listed = admin.run(&["sessions", "--json"]).ok().json();
    assert_eq!(listed[0]["node_id"], first.trim());
}

#[test]
fn a_command_that_closes_the_shells_output_ends_the_session_instead_of_hanging_it() {
    let (_cp, cli, _agent) = fleet(&[]);
    let s = ["-t", "t", "-s", "redirected"];
    let out = cli.run(&[&s[..], &["exec >/dev/null"]].concat());
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("the shell closed its output; it was ended"), "{out:?}");
    cli.run(&[&s[..], &["echo again"]].concat()).fails_with(254, "its shell exited");
    let out = cli.run(&[&s[..], &["echo again"]].concat()).ok();
    assert_eq!(out.stdout, "again\n");
}

#[test]
fn a_sessions_commands_read_the_callers_stdin_and_only_their_own() {
    let (_cp, cli, _agent) = fleet(&[]);
    openbox_e2e::check_session_stdin(|cmd, input| cli.run_stdin(&["-t", "t", "-s", "in", cmd], input));
}

/// The agent stops — killed, or restarted for an upgrade — while a session's shell holds a
/// directory and variables: its next use must not run in a new shell unawares.
#[test]
fn a_sessions_shell_outlives_its_agent_dying_and_is_taken_up_with_its_directory_and_variables() {
    let (_cp, cli, mut agent) = fleet(&[]);
    let s = ["-t", "t", "-s", "keep"];
    let shell = cli.run(&[&s[..], &["cd /tmp && export V=42 && echo $$"]].concat()).ok().stdout;
    agent.kill();
    agent.restart();
    let kept = cli.run(&[&s[..], &["echo V=$V PWD=$PWD $$"]].concat()).ok();
    assert_eq!(kept.stdout, format!("V=42 PWD=/tmp {shell}"), "the same shell, as it was");
    assert!(agent.log().contains("took up a session's shell left by an earlier run"), "{}", agent.log());

    // Killed in the middle of a command: the call ends (the node is gone), the agent's
    // next start stops what that command left, and the shell serves on.
    let marker = format!("/tmp/obx-orphan-{}", std::process::id());
    let mut call = cli
        .cmd()
        .args([&s[..], &[&format!("sleep 300 & echo $! > {marker}; wait")]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command to start", || std::fs::read_to_string(&marker).is_ok_and(|p| p.ends_with('\n')));
    let sleeper = std::fs::read_to_string(&marker).unwrap().trim().to_owned();
    agent.kill();
    let ended = call.wait().unwrap();
    assert_eq!(ended.code(), Some(255), "the call ends when its node is gone");
    agent.restart();
    wait_until("the earlier command to be stopped", || !process_running(&sleeper));
    let after = cli.run(&[&s[..], &["echo V=$V PWD=$PWD"]].concat()).ok();
    assert_eq!(after.stdout, "V=42 PWD=/tmp\n");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn a_session_whose_shell_did_not_outlive_its_agent_says_so_before_anything_runs() {
    let (_cp, cli, mut agent) = fleet(&[]);
    // A graceful stop ends the shells; a kill leaves them, and here the shell is killed too.
    for how in ["stopped", "killed with its shell"] {
        let sid = format!("keep-{}", how.len());
        let s = ["-t", "t", "-s", sid.as_str()];
        let shell = cli.run(&[&s[..], &["cd /tmp && export V=42 && echo $$"]].concat()).ok().stdout;
        if how == "stopped" {
            agent.stop();
        } else {
            agent.kill();
            let pid = shell.trim().parse::<i32>().unwrap();
            rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL)
                .unwrap();
            wait_until("the shell to end", || !process_running(shell.trim()));
        }
        agent.restart();
        let told = cli.run(&[&s[..], &["echo V=$V PWD=$PWD"]].concat());
        assert_eq!(told.code, 254, "{how}: {told:?}");
        assert!(told.stdout.is_empty(), "{how}: nothing ran: {told:?}");
        assert!(told.stderr.contains("its shell ended when the node's agent stopped"), "{how}: {told:?}");
        wait_until("the directory to show the session's shell gone", || {
            let listed = cli.run(&["sessions", "--json"]).ok().json();
            listed.as_array().unwrap().iter().any(|x| x["id"] == sid.as_str() && x["state"] != "active")
        });
        // Told once: the next use starts a new shell.
        let fresh = cli.run(&[&s[..], &["echo V=$V"]].concat()).ok();
        assert_eq!(fresh.stdout, "V=\n", "{how}");
    }
}
