//! Faults, through the real binaries: an agent killed in the middle of a command and of a
//! copy, a full disk on either side, openboxd killed in the middle of a call, the control
//! plane and its database restarted under load, and clocks minutes apart. For each, the
//! call ends when the docs say, with the exit code they say, and nothing reports success
//! with bytes missing. (Frozen and partitioned nodes: `deadlines.rs`.)

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openbox_e2e::{Agent, Call, Cli, ControlPlane, Out, running, wait_until};
use rustix::process::{Pid, Signal, kill_process};

/// How long after a fault a call may take to end here (the machine is shared and loaded).
const SLACK: Duration = Duration::from_millis(2500);

#[test]
fn an_agent_killed_mid_command_ends_the_call_with_255_and_its_next_start_stops_what_was_left() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["t"]);
    let call = Call::start(&admin, &["-t", "t", "echo started; sleep 3190 & wait"]);
    agent.kill();
    let t0 = Instant::now();
    let out = call.end();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains(&format!("node {} ", agent.name)) && out.stderr.contains("lost"), "{out:?}");
    assert!(t0.elapsed() < SLACK, "it took {:?}", t0.elapsed());
    // What the command started has nobody to stop it until the agent is back.
    wait_until("the command to run on the node", || running("sleep 3190"));
    agent.restart();
    wait_until("the agent's next start to stop what the command left", || !running("sleep 3190"));
    assert!(agent.log().contains("stopped commands an earlier run of the agent left running"), "{}", agent.log());
}

/// A file of `len` bytes, most of it a hole (fast to read, takes no room).
fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn an_agent_killed_mid_copy_fails_the_copy_either_way_and_never_reports_it_done() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["t"]);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    sparse(&big, 8 << 30);
    let on_node = |name: &str| format!("{}:{}", agent.name, dir.path().join(name).display());
    for (up, from, to, written) in [
        (true, big.display().to_string(), on_node("up"), dir.path().join("up")),
        (false, on_node("big"), dir.path().join("down").display().to_string(), dir.path().join("down")),
    ] {
        let call = admin.cmd().args(["cp", &from, &to]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        wait_until("the copy to be under way", || size(&written) > 0);
        agent.kill();
        let t0 = Instant::now();
        let out = Out::from(call.wait_with_output().unwrap());
        assert_eq!(out.code, 255, "up={up}: {out:?}");
        assert!(out.stderr.contains("lost") && out.stderr.contains("the copy did not finish"), "up={up}: {out:?}");
        assert!(out.stdout.is_empty(), "nothing said copied: {out:?}");
        assert!(t0.elapsed() < SLACK, "up={up}: it took {:?}", t0.elapsed());
        assert!(size(&written) < 8 << 30);
        agent.restart();
    }
}

/// A small tmpfs mounted for a test (a disk that fills at once), unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs");
        SmallDisk(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills what is left of it.
    fn fill(&self) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.path().join("filler").display()))
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_fails_a_copy_or_a_commands_output_with_a_clear_line_and_never_a_success() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    let disk = SmallDisk::new("1m");
    let dir = tempfile::tempdir().unwrap();
    let three_mb = dir.path().join("three-mb");
    std::fs::write(&three_mb, vec![7u8; 3 << 20]).unwrap();

    // Into a full disk on the node.
    let into = format!("{}:{}", agent.name, disk.path().join("up").display());
    let out = admin.run(&["cp", three_mb.to_str().unwrap(), &into]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("up"), "names the file: {out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // Out of the node into a full disk here.
    let from = format!("{}:{}", agent.name, three_mb.display());
    let out = admin.run(&["cp", &from, disk.path().join("down").to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");

    // A command's output into a full file here: the call fails, it does not say 0.
    disk.fill();
    let file = std::fs::File::create(disk.path().join("out"))
        .unwrap_or_else(|_| std::fs::OpenOptions::new().write(true).open(disk.path().join("filler")).unwrap());
    let out = admin.cmd().args(["-t", "t", "head -c 3000000 /dev/zero"]).stdout(file).output().unwrap();
    let out = Out::from(out);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
}

#[test]
fn a_node_whose_own_disk_is_full_still_runs_commands_exactly() {
    let disk = SmallDisk::new("8m");
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let home = [("OPENBOX_HOME", disk.path().to_str().unwrap())];
    let _agent = Agent::enroll_env(&cp, &admin.enroll_token(&["full"]), &[], &home);
    assert!(disk.path().join("agent/identity.json").exists(), "the agent keeps its files on the small disk");
    disk.fill();
    let out = admin.run(&["-t", "full", "seq 1 100000 | md5sum; exit 3"]);
    let expected = std::process::Command::new("sh").args(["-c", "seq 1 100000 | md5sum"]).output().unwrap().stdout;
    assert_eq!((out.code, out.stdout.as_bytes()), (3, &expected[..]), "{out:?}");
    let s = ["-t", "full", "-s", "on-full"];
    let first = admin.run(&[&s[..], &["cd /tmp && export V=1"]].concat());
    if first.code == 0 {
        assert_eq!(admin.run(&[&s[..], &["echo $V $PWD"]].concat()).ok().stdout, "1 /tmp\n");
    } else {
        assert!(first.stderr.contains("No space left on device"), "a refusal says why: {first:?}");
    }
}

#[test]
fn openboxd_killed_mid_call_ends_the_call_with_255_and_the_command_on_the_node() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["t"]);
    let pid = admin.daemon_status()["pid"].as_u64().unwrap() as i32;
    let call = Call::start(&admin, &["-t", "t", "echo started; sleep 3191"]);
    kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
    let t0 = Instant::now();
    let out = call.end();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("openboxd"), "{out:?}");
    assert!(t0.elapsed() < SLACK, "it took {:?}", t0.elapsed());
    wait_until("the node to stop the command nobody waits for", || !running("sleep 3191"));
    assert_eq!(admin.run(&["-t", "t", "echo again"]).ok().stdout, "again\n", "a new openboxd serves");
}

/// What calls made in a loop from a few threads saw while `fault` ran: warm one-shots, a
/// session, and cold calls (a new session each, so a new certificate). Checks each call
/// as it ends: never longer than a bound, and never success with output missing.
fn calls_during(cli: &Cli, tag: &str, fault: impl FnOnce(&dyn Fn() -> usize)) -> (usize, usize) {
    cli.run(&["-t", tag, "true"]).ok();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let kinds: [&[&str]; 3] = [&["-t", tag], &["-t", tag, "-s", "load"], &["-t", tag, "-s", "cold-N"]];
    std::thread::scope(|s| {
        for kind in kinds {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            s.spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let args: Vec<String> = kind.iter().map(|a| a.replace('N', &i.to_string())).collect();
                    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
                    let echo = format!("echo call-{i}");
                    all.push(&echo);
                    let t0 = Instant::now();
                    let out = cli.run(&all);
                    assert!(t0.elapsed() < Duration::from_secs(30), "{all:?} took {:?}", t0.elapsed());
                    if out.code == 0 {
                        assert_eq!(out.stdout, format!("call-{i}\n"), "{all:?}");
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(out.stdout.is_empty() && !out.stderr.trim().is_empty(), "{all:?}: {out:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // The calls stop however this ends: a fault or a wait that fails must not leave
        // them running for ever (the scope waits for them).
        let _stop = StopOnDrop(stop.clone());
        let calls = || ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        wait_until("calls under way", || calls() > 6);
        fault(&calls);
        let after = calls();
        wait_until("calls after the fault", || calls() > after + 6);
    });
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn calls_under_load_ride_out_a_control_plane_restart_and_warm_ones_do_not_even_notice() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["t"]);
    let warm_during_outage = Arc::new(AtomicUsize::new(0));
    let (ok, failed) = calls_during(&admin, "t", |calls| {
        cp.kill();
        // Down: warm calls go on without it (the pool and certificates are openboxd's).
        let before = calls();
        wait_until("calls while the control plane is down", || calls() > before + 6);
        let warm = admin.run(&["-t", "t", "echo warm"]);
        if warm.code == 0 {
            warm_during_outage.fetch_add(1, Ordering::Relaxed);
        }
        cp.restart();
    });
    assert!(ok > 0 && warm_during_outage.load(Ordering::Relaxed) == 1, "ok {ok}, failed {failed}");
    assert_eq!(admin.run(&["-t", "t", "-s", "after", "echo fine"]).ok().stdout, "fine\n");
}

#[test]
fn calls_under_load_ride_out_a_postgresql_restart() {
    let (dir, secrets) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let own = [("OPENBOX_TEST_POSTGRES_DIR", dir.path().to_str().unwrap()), ("OPENBOX_TEST_POSTGRES_PORT", "5497")];
    let db = openbox_e2e::postgres_database(&openbox_e2e::postgres_cluster(&own));
    let ca = secrets.path().join("ca_key").display().to_string();
    let cp = ControlPlane::start_with(&["--db", &db, "--ca", &ca]);
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["pg"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-postgres");
    let (ok, _failed) = calls_during(&admin, "pg", |calls| {
        assert!(std::process::Command::new(script).arg("stop").envs(own).status().unwrap().success());
        let before = calls();
        wait_until("calls while the database is down", || calls() > before + 6);
        openbox_e2e::postgres_cluster(&own);
    });
    assert!(ok > 0);
    wait_until("cold calls to work again by themselves", || {
        admin.run(&["-t", "pg", "-s", "after", "echo fine"]).code == 0
    });
    std::process::Command::new(script).arg("stop").envs(own).status().unwrap();
}

/// The environment that puts a process's clock `offset` off (libfaketime's syntax:
/// `+4m`), leaving its monotonic clock alone (timers and deadlines keep real time).
fn faked_clock(offset: &str) -> Vec<(&'static str, String)> {
    let lib = ["x86_64", "aarch64"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"))
        .find(|p| Path::new(p).exists())
        .expect("libfaketime (the faketime package; scripts/setup-test-env installs it)");
    vec![("LD_PRELOAD", lib), ("FAKETIME", offset.to_owned()), ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned())]
}

#[test]
fn a_laptop_and_a_node_minutes_apart_still_run_everything_by_the_control_planes_clock() {
    for (laptop, node) in [("-4m", "+4m"), ("+4m", "-4m")] {
        let cp = ControlPlane::start();
        let env = faked_clock(laptop);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let admin = Cli::with_env(&env).log_in(&cp, &cp.admin_token);
        let node_env = faked_clock(node);
        let prefix: Vec<String> =
            std::iter::once("env".to_owned()).chain(node_env.iter().map(|(k, v)| format!("{k}={v}"))).collect();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let agent = Agent::enroll_under(&cp, &admin.enroll_token(&["t"]), &prefix, &[]);

        let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let seen: i64 = admin.run(&["-t", "t", "date +%s"]).ok().stdout.trim().parse().unwrap();
        let want = if node.starts_with('+') { 240 } else { -240 };
        assert!((seen - real - want).abs() < 30, "the node's clock is {node} off: {seen} vs {real}");

        assert_eq!(admin.run(&["-t", "t", "-s", "skew", "cd /tmp"]).code, 0, "laptop {laptop}, node {node}");
        assert_eq!(admin.run(&["-t", "t", "-s", "skew", "pwd"]).ok().stdout, "/tmp\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "skewed\n").unwrap();
        let to = format!("{}:{}", agent.name, dir.path().join("g").display());
        admin.run(&["cp", dir.path().join("f").to_str().unwrap(), &to]).ok();
        assert_eq!(std::fs::read_to_string(dir.path().join("g")).unwrap(), "skewed\n");
        let t0 = Instant::now();
        let out = admin.run(&["-t", "t", "--timeout", "2s", "sleep 30"]);
        assert_eq!(out.code, 124, "{out:?}");
        assert!(t0.elapsed() < Duration::from_secs(2) + SLACK, "it took {:?}", t0.elapsed());
        assert!(admin.nodes().iter().all(|n| n["online"] == true), "the node shows online");
    }
}
