//! `openbox up` / `openbox down`: a personal fleet on this machine in one command.

use std::path::Path;

use openbox_e2e::{Cli, ControlPlane, free_port, wait_until};

#[test]
fn up_brings_a_local_fleet_that_runs_commands_and_down_stops_it() {
    let me = Cli::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = me.run(&["up", "--addr", &addr]).ok();
    assert!(out.stdout.contains("openbox -t local uname -a"), "up says what to try next: {out:?}");

    let uname = me.run(&["-t", "local", "uname", "-s"]).ok();
    assert_eq!(uname.stdout.trim(), "Linux");
    let nodes = me.nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["tags"], serde_json::json!(["local"]));
    assert_eq!(me.run(&["whoami", "--json"]).ok().json()["admin"], true);
    for log in ["control.log", "agent.log"] {
        assert!(me.home.path().join("logs").join(log).exists(), "{log} in the state dir");
    }

    // Running up twice is harmless.
    let again = me.run(&["up", "--addr", &addr, "--json"]).ok().json();
    assert_eq!(again["control_started"], false);
    assert_eq!(again["agent_started"], false);
    me.run(&["-t", "local", "true"]).ok();

    let pids: Vec<String> = ["control", "agent"]
        .iter()
        .map(|r| std::fs::read_to_string(me.home.path().join(format!("logs/{r}.pid"))).unwrap().trim().to_owned())
        .collect();
    let down = me.run(&["down"]).ok();
    assert!(down.stdout.contains("agent") && down.stdout.contains("control"), "{down:?}");
    // openboxd started them, so it reaps them: no zombie is left behind.
    for pid in &pids {
        wait_until(&format!("process {pid} to be gone, not a zombie"), || !Path::new(&format!("/proc/{pid}")).exists());
    }
    me.run(&["-t", "local", "true"]).fails_with(255, "cannot reach the control plane");
    assert!(me.run(&["down"]).ok().stdout.contains("Nothing was running"));

    // Up after down comes back with the same node and login.
    me.run(&["up", "--addr", &addr]).ok();
    assert_eq!(me.nodes().len(), 1);
    me.run(&["-t", "local", "true"]).ok();
    me.run(&["down"]).ok();
}

#[test]
fn up_after_logout_logs_in_again() {
    let me = Cli::new();
    let addr = format!("127.0.0.1:{}", free_port());
    me.run(&["up", "--addr", &addr]).ok();
    me.run(&["down"]).ok();
    me.run(&["logout"]).ok();
    me.run(&["up", "--addr", &addr]).ok();
    me.run(&["-t", "local", "echo", "back"]).ok();
    me.run(&["down"]).ok();
}

#[test]
fn down_with_nothing_running_starts_no_daemon() {
    let me = Cli::new();
    let out = me.run(&["down"]).ok();
    assert!(out.stdout.contains("Nothing was running"), "{out:?}");
    assert!(!me.home.path().join("run/openboxd.sock").exists(), "no openboxd was started");
}

#[test]
fn up_after_an_upgrade_says_the_fleet_still_runs_the_old_binaries_until_down_and_up() {
    // An installation of its own, so that its binaries can be replaced as install.sh does.
    let prefix = tempfile::tempdir().unwrap();
    for b in ["openbox", "openboxd", "openbox-control", "openbox-agent"] {
        let (from, to) = (openbox_e2e::bin(b), prefix.path().join(b));
        std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(drop)).unwrap();
    }
    let me = Cli::new();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(prefix.path().join("openbox"))
            .args(args)
            .env("OPENBOX_HOME", me.home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        openbox_e2e::Out::from(out)
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let first = run(&["up", "--addr", &addr]).ok();
    assert!(!first.stderr.contains("before an upgrade"), "{first:?}");

    // The upgrade: a new file renamed over each old one, and openboxd stopped.
    for b in ["openbox-control", "openbox-agent"] {
        let new = prefix.path().join(format!(".{b}.new"));
        std::fs::copy(openbox_e2e::bin(b), &new).unwrap();
        std::fs::rename(&new, prefix.path().join(b)).unwrap();
    }
    run(&["daemon", "stop"]).ok();

    let again = run(&["up", "--addr", &addr]).ok();
    for role in ["control", "agent"] {
        assert!(again.stderr.contains(&format!("the {role} (pid ")), "{again:?}");
    }
    assert!(again.stderr.contains("`openbox down && openbox up` moves the fleet to this version"), "{again:?}");
    run(&["-t", "local", "true"]).ok();

    run(&["down"]).ok();
    let moved = run(&["up", "--addr", &addr]).ok();
    assert!(!moved.stderr.contains("before an upgrade"), "{moved:?}");
    run(&["-t", "local", "true"]).ok();
    run(&["down"]).ok();
}

#[test]
fn up_on_a_taken_port_says_by_what_and_remembers_the_address_it_is_given_instead() {
    let other = ControlPlane::start(); // someone else's control plane, on the port asked for
    let me = Cli::new();
    let out = me
        .run(&["up", "--addr", &other.addr])
        .fails_with(1, &format!("{} is taken by openbox-control (pid", other.addr));
    assert!(out.stderr.contains("openbox up --addr 127.0.0.1:"), "{out:?}");
    assert!(me.run(&["whoami"]).code != 0, "up logged in nowhere");

    let addr = format!("127.0.0.1:{}", free_port());
    me.run(&["up", "--addr", &addr]).ok();
    // Later `up`s without --addr act on that fleet; another address is refused while it runs.
    let again = me.run(&["up", "--json"]).ok().json();
    assert_eq!(
        (again["server"].as_str(), again["control_started"].as_bool()),
        (Some(&*format!("http://{addr}")), Some(false))
    );
    me.run(&["up", "--addr", &other.addr]).fails_with(1, &format!("already runs with its control plane on {addr}"));
    me.run(&["down"]).ok();
    let back = me.run(&["up", "--json"]).ok().json();
    assert_eq!(
        (back["server"].as_str(), back["control_started"].as_bool()),
        (Some(&*format!("http://{addr}")), Some(true))
    );
    me.run(&["-t", "local", "true"]).ok();
    me.run(&["down"]).ok();
    // Moved to another address, the fleet keeps its node: the agent heartbeats there.
    let moved = format!("127.0.0.1:{}", free_port());
    me.run(&["up", "--addr", &moved]).ok();
    assert_eq!(me.nodes().len(), 1);
    me.run(&["-t", "local", "true"]).ok();
    me.run(&["down"]).ok();
}

#[test]
fn without_openbox_home_files_go_where_xdg_says_and_earlier_logs_move_there() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(openbox_e2e::bin("openbox"));
        cmd.args(args).env("HOME", home.path());
        for var in
            ["OPENBOX_HOME", "OPENBOX_CONTEXT", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"]
        {
            cmd.env_remove(var);
        }
        openbox_e2e::Out::from(cmd.output().unwrap())
    };
    // What an earlier release left: logs in the data directory.
    let (data, state) = (home.path().join(".local/share/openbox"), home.path().join(".local/state/openbox"));
    std::fs::create_dir_all(data.join("logs")).unwrap();
    std::fs::write(data.join("logs/earlier.log"), "kept").unwrap();

    run(&["up", "--addr", &format!("127.0.0.1:{}", free_port())]).ok();
    run(&["-t", "local", "true"]).ok();
    // Logs and pid files in the state directory, the earlier ones with them.
    for f in ["logs/control.log", "logs/agent.log", "logs/control.pid", "logs/agent.pid", "logs/openboxd.log"] {
        assert!(state.join(f).is_file(), "{f} under {}", state.display());
    }
    assert_eq!(std::fs::read_to_string(state.join("logs/earlier.log")).unwrap(), "kept");
    assert!(!data.join("logs").exists(), "the earlier logs moved");
    // Identities in the data directory, the login in the config directory.
    for f in ["agent/identity.json", "control/openbox.db", "control/ca_key"] {
        assert!(data.join(f).is_file(), "{f} under {}", data.display());
    }
    assert!(home.path().join(".config/openbox/login.json").is_file());
    run(&["down"]).ok();
    run(&["daemon", "stop"]).ok();
}
