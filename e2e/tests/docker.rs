//! `--docker IMAGE`: commands in containers on a real Docker-API engine (podman's
//! compatible service, started by `scripts/test-engines`), through the real binaries.

use openbox_e2e::{Agent, Cli, ControlPlane, IsolatedFleet, engines, wait_until};

fn fleet(agent_args: &[&str]) -> IsolatedFleet {
    IsolatedFleet::docker(agent_args)
}

/// The containers this fleet's agent has on the engine.
fn containers(f: &IsolatedFleet) -> Vec<serde_json::Value> {
    f.e.containers(&format!("dev.openbox.node={}", f.agent.node_id))
}

fn assert_no_containers_left(f: &IsolatedFleet) {
    wait_until("the node's containers to be removed", || containers(f).is_empty());
}

#[test]
fn a_one_shot_command_runs_in_a_fresh_container_that_is_removed_afterwards() {
    let f = fleet(&[]);
    let out = f.run(&[], "echo out; echo err >&2; cat /etc/passwd; echo $OPENBOX_NODE; exit 3");
    assert_eq!(out.code, 3, "{out:?}");
    // The image's own /etc/passwd, not the host's.
    assert_eq!(out.stdout, format!("out\nroot:x:0:0:root:/root:/bin/sh\n{}\n", f.agent.node_id));
    assert_eq!(out.stderr, "err\n");
    assert_no_containers_left(&f);

    // Each run starts from the image: a file written by one is not seen by the next.
    f.run(&[], "echo x > /root/left-behind").ok();
    let out = f.run(&[], "cat /root/left-behind 2>&1 || echo absent");
    assert!(out.stdout.ends_with("absent\n"), "{out:?}");
    assert_no_containers_left(&f);
}

#[test]
fn stdin_streams_through_and_signals_and_timeouts_end_the_container() {
    let f = fleet(&[]);
    let input: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = f.cli.run_stdin(&["-t", "t", "--docker", &f.e.image, "wc", "-c"], &input);
    assert_eq!(out.ok().stdout.trim(), "2000000");
    let out = f.run_stdin(&[], "cat; echo done", b"line one\nline two\n");
    assert_eq!(out.ok().stdout, "line one\nline two\ndone\n");

    // A command killed by a signal exits 128+N, as natively.
    assert_eq!(f.run(&[], "kill -TERM $$").code, 143);
    let out = f.run(&["--timeout", "1s"], "echo started; sleep 60");
    assert_eq!(out.code, 124, "{out:?}");
    assert_eq!(out.stdout, "started\n");
    assert!(out.stderr.contains("timed out after 1s"), "{out:?}");
    assert_no_containers_left(&f);
}

#[test]
fn a_session_keeps_one_container_across_commands_and_removes_it_when_it_ends() {
    let f = fleet(&[]);
    let s = ["-s", "box"];
    f.run(&s, "cd /tmp && export COUNT=1 && echo state > /tmp/file").ok();
    let out = f.run(&s, "pwd; echo $COUNT; cat file; hostname").ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[..3], ["/tmp", "1", "state"]);
    let containers = containers(&f);
    assert_eq!(containers.len(), 1, "{containers:?}");
    // A timeout stops the command, not the session's container.
    assert_eq!(f.run(&["-s", "box", "--timeout", "1s"], "sleep 60").code, 124);
    assert_eq!(f.run(&s, "echo $COUNT; hostname").ok().stdout, format!("1\n{}\n", lines[3]));
    assert_eq!(f.run(&s, "exit 7").code, 7);
    assert_no_containers_left(&f);
    // Its next use is told the shell is gone, and runs nothing; the one after starts anew.
    f.run(&s, "true").fails_with(254, "its shell exited (status 7)");
    let out = f.run(&s, "cat /tmp/file 2>/dev/null || echo fresh").ok();
    assert_eq!(out.stdout, "fresh\n");

    f.cli.run(&["session", "rm", "box"]).ok();
    assert_no_containers_left(&f);
    let listed = f.cli.run(&["sessions", "--json"]).ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

#[test]
fn a_reaped_session_leaves_no_container_behind() {
    let f = fleet(&["--session-idle", "1s"]);
    f.run(&["-s", "idle"], "echo hello > /tmp/x").ok();
    wait_until("the idle session to be reaped", || {
        f.cli.run(&["sessions", "--json"]).ok().json()[0]["state"] == "reaped"
    });
    assert_no_containers_left(&f);
}

#[test]
fn resource_options_reach_the_container() {
    let f = fleet(&[]);
    let dir = f.check_read_only_mount_without_network();
    let rw = format!("{}:/data", dir.path().display());
    f.run(&["--mount", &rw], "echo written > /data/out.txt").ok();
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "written\n");

    // Limits are applied by the engine: seen on the session's container.
    f.run(&["-s", "limited", "--cpus", "0.5", "--memory", "64m"], "true").ok();
    let c = &containers(&f)[0];
    let id = c["Id"].as_str().unwrap();
    let sock = f.e.docker_host.strip_prefix("unix://").unwrap();
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--unix-socket", sock, &format!("http://d/v1.41/containers/{id}/json")])
        .output()
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["HostConfig"]["Memory"], 64 << 20, "{inspect}");
    assert_eq!(inspect["HostConfig"]["NanoCpus"], 500_000_000i64, "{inspect}");
    // The session runs under exactly what it was created with.
    f.run(&["-s", "limited"], "true").fails_with(255, "end it first with `openbox session rm limited`");
}

#[test]
fn engine_problems_get_clear_messages_and_run_nothing() {
    let f = fleet(&[]);
    let out = f.cli.run(&["-t", "t", "--docker", "localhost/no-such-image:1", "true"]);
    out.fails_with(255, "image localhost/no-such-image:1 is not on this node's Docker engine");
    assert_no_containers_left(&f);

    // A mount whose source is missing is the engine's error, named; nothing is created.
    let missing = tempfile::tempdir().unwrap().path().join("missing");
    let out = f.run(&["--mount", &format!("{}:/data", missing.display())], "true");
    out.fails_with(255, &format!("mount source {} does not exist on this node; nothing was run", missing.display()));
    assert!(!missing.exists(), "the mount source must not be created");
    assert_no_containers_left(&f);
}

#[test]
fn the_image_entrypoint_does_not_replace_the_command() {
    let f = fleet(&[]);
    let image = &f.e.entrypoint_image;
    let out = f.cli.run(&["-t", "t", "--docker", image, "echo mine; exit 4"]);
    assert_eq!((out.code, out.stdout.as_str()), (4, "mine\n"), "{out:?}");
    f.cli.run(&["-t", "t", "-s", "ep", "--docker", image, "cd /tmp"]).ok();
    assert_eq!(f.cli.run(&["-t", "t", "-s", "ep", "--docker", image, "pwd"]).ok().stdout, "/tmp\n");
}

#[test]
fn nodes_report_their_isolation_and_docker_runs_go_only_to_nodes_that_can() {
    let e = engines();
    let cp = ControlPlane::start();
    let cli = Cli::admin(&cp);
    let plain = Agent::enroll(&cp, &cli, &["t"]);
    let docker = Agent::enroll_env(&cp, &cli.enroll_token(&["t"]), &[], &[("DOCKER_HOST", &e.docker_host)]);

    let caps = |id: &str| cli.node(id).unwrap()["capabilities"].clone();
    assert_eq!(caps(&plain.node_id), serde_json::json!(["native", "nspawn"]));
    assert_eq!(caps(&docker.node_id), serde_json::json!(["native", "docker", "nspawn"]));
    let table = cli.run(&["nodes"]).ok().stdout;
    assert!(table.contains("ISOLATION") && table.contains("native,docker,nspawn"), "{table}");

    for _ in 0..6 {
        let out = cli.run(&["-t", "t", "--docker", &e.image, "echo $OPENBOX_NODE"]).ok();
        assert_eq!(out.stdout.trim(), docker.node_id);
    }
    let out = cli.run(&["-n", &plain.name, "--docker", &e.image, "true"]);
    out.fails_with(255, &format!("no node can run docker isolation ({} offers native, nspawn)", plain.name));

    let alone = Agent::enroll(&cp, &cli, &["plain-only"]);
    let out = cli.run(&["-t", "plain-only", "--docker", &e.image, "true"]);
    out.fails_with(
        255,
        &format!("no online node tagged \"plain-only\" can run docker isolation ({} offers", alone.name),
    );
}

#[test]
fn a_caller_that_goes_away_takes_its_container_with_it() {
    let f = fleet(&[]);
    let (mut child, line) = f.start_until_line("echo started; sleep 300");
    assert_eq!(line, "started\n");
    assert_eq!(containers(&f).len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_containers_left(&f);
}

#[test]
fn an_agent_that_stops_or_crashes_leaves_no_containers() {
    let mut f = fleet(&[]);
    f.run(&["-s", "a"], "true").ok();
    assert_eq!(containers(&f).len(), 1);
    f.agent.stop();
    assert_no_containers_left(&f);

    // Killed outright, it cannot clean up; its next start removes what it left.
    f.agent.restart();
    f.run(&["-s", "b"], "true").ok();
    assert_eq!(containers(&f).len(), 1);
    f.agent.kill();
    assert_eq!(containers(&f).len(), 1);
    f.agent.restart();
    assert_no_containers_left(&f);
}

#[test]
fn a_session_whose_shell_stops_answering_is_ended_after_a_timeout_instead_of_hanging() {
    let f = fleet(&[]);
    // The engine's stream stays open, but the shell's output now goes nowhere.
    // The call ends on time; the session's next use says what became of the shell.
    let out = f.run(&["-s", "mute", "--timeout", "1s"], "exec >/dev/null 2>&1; sleep 60");
    assert_eq!(out.code, 124, "{out:?}");
    wait_until("the unanswering shell's container to go", || containers(&f).is_empty());
    f.run(&["-s", "mute"], "echo back").fails_with(254, "did not answer after a command was stopped");
    let out = f.run(&["-s", "mute"], "echo back").ok();
    assert_eq!(out.stdout, "back\n");
}

#[test]
fn a_mapped_user_runs_in_containers_as_their_local_account() {
    let f = fleet(&["--run-as", "*=nobody"]);
    assert_eq!(f.run(&[], "id -u; id -g").ok().stdout, "65534\n65534\n");
    assert_eq!(f.run(&["-s", "mapped"], "id -u").ok().stdout, "65534\n", "a session's container too");
    // What the container mounts from the host is reached as that account, not as root.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "root only\n").unwrap();
    std::fs::set_permissions(dir.path().join("secret"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mount = format!("{}:/host", dir.path().display());
    let out = f.run(&["--mount", &mount], "cat /host/secret");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("root only"), "{out:?}");
    f.cli.run(&["session", "rm", "mapped"]).ok();
    assert_no_containers_left(&f);
}

#[test]
fn input_the_container_does_not_read_stays_with_the_caller() {
    let f = fleet(&[]);
    f.check_unread_input_is_held_back();
    assert_no_containers_left(&f);
}

#[test]
fn a_sessions_commands_read_the_callers_stdin_and_only_their_own() {
    let f = fleet(&[]);
    openbox_e2e::check_session_stdin(|cmd, input| f.run_stdin(&["-s", "in"], cmd, input));
}

#[test]
fn a_job_in_a_terminal_runs_in_the_sessions_container() {
    let f = fleet(&[]);
    f.terminal_job_in_a_session();
    assert_no_containers_left(&f);
}
