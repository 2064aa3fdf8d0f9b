//! `--nspawn DIR`: commands in systemd-nspawn containers over a root tree, through the
//! real binaries (the tree is built by `scripts/test-engines`).

use openbox_e2e::{IsolatedFleet, wait_until};

fn fleet(agent_args: &[&str]) -> IsolatedFleet {
    IsolatedFleet::nspawn(agent_args)
}

/// The nspawn containers this fleet's agent runs, from /proc (each carries the node id).
fn containers(f: &IsolatedFleet) -> usize {
    let node = format!("--setenv=OPENBOX_NODE={}", f.agent.node_id);
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nspawn = words.first().is_some_and(|w| w.ends_with(b"systemd-nspawn"));
        if is_nspawn && words.contains(&node.as_bytes()) {
            n += 1;
        }
    }
    n
}

#[test]
fn a_one_shot_command_runs_inside_the_tree_and_leaves_it_unchanged() {
    let f = fleet(&[]);
    let marker = format!("openbox-nspawn-{}", std::process::id());
    let out = f.run(&[], &format!("echo out; echo err >&2; echo $$; touch /{marker}; ls /{marker}; exit 3"));
    assert_eq!(out.code, 3, "{out:?}");
    // pid 1 is the container's; the command's shell runs below it, inside the container.
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "out");
    assert!(lines[1].parse::<u32>().unwrap() < 100, "the command should see the container's pids: {out:?}");
    assert_eq!(lines[2], format!("/{marker}"));
    assert_eq!(out.stderr, "err\n");
    assert!(!std::path::Path::new(&f.e.tree).join(&marker).exists(), "the tree must not change");
    assert!(!std::path::Path::new("/").join(&marker).exists(), "nothing may be written on the host");
}

#[test]
fn stdin_exit_codes_signals_and_timeouts_behave_as_natively() {
    let f = fleet(&[]);
    let input: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = f.run_stdin(&[], "wc -c", &input);
    assert_eq!(out.ok().stdout.trim(), "2000000");
    assert_eq!(f.run(&[], "exit 42").code, 42);
    assert_eq!(f.run(&[], "kill -TERM $$").code, 143);
    let out = f.run(&["--timeout", "1s"], "echo started; sleep 60");
    assert_eq!(out.code, 124, "{out:?}");
    assert_eq!(out.stdout, "started\n");
    wait_until("the timed-out container to be gone", || containers(&f) == 0);
}

#[test]
fn concurrent_runs_on_one_tree_do_not_clash() {
    let f = fleet(&[]);
    // Each run writes its own file in the tree, then waits until all four are running
    // (they check in through a shared mount) before reading it back: they provably overlap.
    let shared = tempfile::tempdir().unwrap();
    let mount = format!("{}:/shared", shared.path().display());
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let script = format!(
                "echo {i} > /root/f; touch /shared/{i}; n=0; \
                 while [ $(ls /shared | wc -l) -lt 4 ]; do n=$((n+1)); [ $n -gt 1000 ] && exit 9; sleep 0.02; done; \
                 cat /root/f"
            );
            let args: Vec<String> =
                ["-t", "t", "--nspawn", &f.e.tree, "--mount", &mount, &script].iter().map(|s| s.to_string()).collect();
            let mut cmd = f.cli.cmd();
            cmd.args(&args);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.join().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
}

#[test]
fn a_session_keeps_its_container_and_ends_it_when_removed_or_reaped() {
    let f = fleet(&["--session-idle", "2s"]);
    let s = ["-s", "tree"];
    f.run(&s, "cd /tmp && export N=5 && echo kept > /tmp/file").ok();
    assert_eq!(f.run(&s, "pwd; echo $N; cat file").ok().stdout, "/tmp\n5\nkept\n");
    assert_eq!(containers(&f), 1);
    assert_eq!(f.run(&["-s", "tree", "--timeout", "1s"], "sleep 60").code, 124);
    assert_eq!(f.run(&s, "echo $N").ok().stdout, "5\n");
    assert!(!std::path::Path::new(&f.e.tree).join("tmp/file").exists(), "the tree must not change");

    f.cli.run(&["session", "rm", "tree"]).ok();
    wait_until("the session's container to stop", || containers(&f) == 0);

    f.run(&["-s", "idle"], "true").ok();
    wait_until("the idle session to be reaped", || {
        f.cli.run(&["sessions", "--json"]).ok().json()[0]["state"] == "reaped"
    });
    wait_until("the reaped session's container to stop", || containers(&f) == 0);
}

#[test]
fn mounts_and_a_private_network_reach_the_container() {
    let f = fleet(&[]);
    f.check_read_only_mount_without_network();
}

#[test]
fn a_directory_that_is_not_a_root_tree_is_refused_before_anything_runs() {
    let f = fleet(&[]);
    let empty = tempfile::tempdir().unwrap();
    let marker = empty.path().join("marker");
    let out =
        f.cli.run(&["-t", "t", "--nspawn", empty.path().to_str().unwrap(), &format!("touch {}", marker.display())]);
    out.fails_with(255, "is not a root tree for systemd-nspawn: it has no /usr");
    let out = f.cli.run(&["-t", "t", "--nspawn", "/nonexistent/tree", "true"]);
    out.fails_with(255, "nspawn directory /nonexistent/tree does not exist on this node");
    assert!(!marker.exists());
}

#[test]
fn a_caller_that_goes_away_takes_its_container_with_it() {
    let f = fleet(&[]);
    let (mut child, line) = f.start_until_line("echo started; sleep 300");
    assert_eq!(line, "started\n");
    assert_eq!(containers(&f), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the container to stop", || containers(&f) == 0);
}

#[test]
fn an_agent_that_stops_ends_its_containers_and_one_that_dies_takes_them_up_again() {
    let mut f = fleet(&[]);
    f.run(&["-s", "a"], "true").ok();
    assert_eq!(containers(&f), 1);
    f.agent.stop();
    assert_eq!(containers(&f), 0, "a stopped agent ends its sessions' containers");

    // Killed outright, the session's container lives on, and the next start takes it up
    // with its shell's directory and variables.
    f.agent.restart();
    f.run(&["-s", "b"], "cd /tmp && export V=7").ok();
    assert_eq!(containers(&f), 1);
    f.agent.kill();
    f.agent.restart();
    assert_eq!(f.run(&["-s", "b"], "echo $V $PWD").ok().stdout, "7 /tmp\n");
    assert_eq!(containers(&f), 1, "the same container");
    f.agent.stop();
    assert_eq!(containers(&f), 0);
}

#[test]
fn a_user_mapped_to_an_account_other_than_root_is_not_given_an_nspawn_container() {
    let f = fleet(&["--run-as", "*=nobody"]);
    f.run(&[], "true").fails_with(255, "an nspawn container would run them as root");
    assert_eq!(containers(&f), 0);
}

#[test]
fn input_the_container_does_not_read_stays_with_the_caller() {
    let f = fleet(&[]);
    f.check_unread_input_is_held_back();
    wait_until("the container to end", || containers(&f) == 0);
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
    wait_until("the session's container to end", || containers(&f) == 0);
}
