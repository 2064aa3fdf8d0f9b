//! openboxd: the socket, auto-start, the warm path, and recovery when things die.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use openbox_e2e::{Agent, Cli, ControlPlane, wait_until};
use rustix::process::{Pid, Signal, kill_process};

fn fleet(tags: &[&str]) -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, tags);
    (cp, admin, agent)
}

fn pid_of(status: &serde_json::Value) -> i32 {
    status["pid"].as_i64().expect("pid") as i32
}

fn dispatches(cp: &ControlPlane) -> usize {
    cp.log().matches("dispatch").count()
}

#[test]
fn the_socket_is_private_to_its_user() {
    let cli = Cli::new();
    let status = cli.daemon_status();
    let socket = std::path::PathBuf::from(status["socket"].as_str().unwrap());
    assert_eq!(socket, cli.home.path().join("run/openboxd.sock"));
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(socket.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);

    // Open the file modes wide: the daemon's own peer check must still refuse another uid.
    for dir in [cli.home.path(), socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
try:
    s.sendall(b'{"jsonrpc":"2.0","id":0,"method":"hello","params":{"protocol":2}}\n')
    print(repr(s.makefile("rb").readline()))
except (ConnectionResetError, BrokenPipeError):
    print(repr(b""))
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            probe,
            socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b''", "another user must get no answer");
    let log = std::fs::read_to_string(cli.home.path().join("logs/openboxd.log")).unwrap();
    assert!(log.contains("refused a connection from another user"), "{log}");
}

#[test]
fn a_socket_path_too_long_for_the_system_is_refused_with_what_to_do() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("h".repeat(100));
    std::fs::create_dir(&home).unwrap();
    for args in [&["-t", "local", "true"][..], &["daemon", "status"]] {
        let out = Command::new(openbox_e2e::bin("openbox")).args(args).env("OPENBOX_HOME", &home).output().unwrap();
        let out = openbox_e2e::Out::from(out).fails_with(255, "longer than the 107 a Unix socket may have here");
        assert!(out.stderr.contains("set OPENBOX_HOME to a shorter directory"), "{out:?}");
    }
    // And openboxd started by hand says the same.
    let out = Command::new(openbox_e2e::bin("openboxd")).env("OPENBOX_HOME", &home).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("longer than the 107"), "{out:?}");
}

#[test]
fn ten_concurrent_first_calls_start_one_daemon() {
    let cli = Cli::new();
    let children: Vec<_> = (0..10)
        .map(|_| cli.cmd().args(["daemon", "status", "--json"]).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let pids: Vec<i32> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            pid_of(&serde_json::from_slice(&out.stdout).unwrap())
        })
        .collect();
    assert!(pids.iter().all(|p| *p == pids[0]), "one daemon for all: {pids:?}");
    let log = std::fs::read_to_string(cli.home.path().join("logs/openboxd.log")).unwrap();
    assert_eq!(log.matches("openboxd listening on").count(), 1, "{log}");
}

#[test]
fn a_killed_daemon_is_replaced_by_the_next_call() {
    let (_cp, admin, _agent) = fleet(&["t"]);
    let first = pid_of(&admin.daemon_status());
    kill_process(Pid::from_raw(first).unwrap(), Signal::KILL).unwrap();
    let socket = admin.home.path().join("run/openboxd.sock");
    wait_until("the killed daemon's socket to refuse", || std::os::unix::net::UnixStream::connect(&socket).is_err());
    assert_eq!(admin.run(&["-t", "t", "echo", "back"]).ok().stdout, "back\n");
    assert_ne!(pid_of(&admin.daemon_status()), first);
}

#[test]
fn a_daemon_speaking_another_protocol_is_replaced() {
    let cli = Cli::new();
    let socket = cli.home.path().join("run/openboxd.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // An old openboxd: refuses our protocol, stops when asked.
    let old = r#"
import json, os, socket, sys
srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen(8)
print("ready", flush=True)
while True:
    c, _ = srv.accept(); f = c.makefile("rwb")
    req = json.loads(f.readline())
    if req["method"] == "shutdown":
        f.write(b'{"jsonrpc":"2.0","id":0,"result":{"stopping":true}}\n'); f.flush(); os.unlink(sys.argv[1]); sys.exit(0)
    err = {"code": -32000, "message": "openboxd speaks protocol 0", "data": {"protocol": 0, "pid": os.getpid()}}
    f.write((json.dumps({"jsonrpc": "2.0", "id": req["id"], "error": err}) + "\n").encode()); f.flush(); c.close()
"#;
    let mut fake =
        Command::new("python3").args(["-c", old, socket.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    BufReader::new(fake.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");

    let out = cli.run(&["daemon", "status", "--json"]).ok();
    assert!(out.stderr.contains("restarting openboxd"), "{out:?}");
    assert!(fake.wait().unwrap().success(), "the old daemon was asked to stop");
    assert_ne!(pid_of(&out.json()), fake.id() as i32);
    assert_eq!(out.json()["protocol"], proto::rpc::PROTOCOL);
}

#[test]
fn a_daemon_of_another_release_refuses_an_openbox_client_and_tells_scripts_nothing() {
    let cli = Cli::new();
    let socket = cli.daemon_status()["socket"].as_str().unwrap().to_owned();
    let hello = |release: Option<&str>| {
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let mut params = serde_json::json!({"protocol": proto::rpc::PROTOCOL, "client": "test"});
        if let Some(r) = release {
            params["release"] = r.into();
        }
        let line = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": params});
        writeln!(conn, "{line}").unwrap();
        let mut answer = String::new();
        BufReader::new(conn).read_line(&mut answer).unwrap();
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()
    };
    // An openbox client of another release: refused as for another protocol, with what
    // it needs to stop this daemon and start its own.
    let refused = hello(Some("0.0.0-older"));
    assert_eq!(refused["error"]["code"], proto::rpc::code::PROTOCOL_MISMATCH, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("release") && message.contains("0.0.0-older"), "{refused}");
    assert_eq!(refused["error"]["data"]["version"], proto::VERSION, "{refused}");
    // The same release, and a script that names none, are served.
    assert_eq!(hello(Some(proto::VERSION))["result"]["protocol"], proto::rpc::PROTOCOL);
    assert_eq!(hello(None)["result"]["protocol"], proto::rpc::PROTOCOL);
}

#[test]
fn no_daemon_mode_runs_the_call_directly() {
    let (cp, _admin, _agent) = fleet(&["t"]);
    let cli = Cli::new();
    let out =
        cli.cmd().args(["--no-daemon", "login", "--server", &cp.url, "--token", &cp.admin_token]).output().unwrap();
    assert!(out.status.success());
    let out = cli.cmd().env("OPENBOX_NO_DAEMON", "1").args(["-t", "t", "echo", "direct"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "direct\n");
    assert!(!cli.home.path().join("run/openboxd.sock").exists(), "no daemon was started");
}

#[test]
fn the_daemon_notices_login_and_logout_made_by_other_processes() {
    let (cp, admin, agent) = fleet(&["t"]);
    assert_eq!(admin.run(&["-t", "t", "echo $OPENBOX_USER"]).ok().stdout, "admin\n");
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    // Log in as bob without the daemon's involvement: only the file changes.
    let out = admin.cmd().args(["--no-daemon", "login", "--server", &cp.url, "--token", &bob_token]).output().unwrap();
    assert!(out.status.success());
    wait_until("the daemon to see bob's login", || admin.daemon_status()["user"] == "bob");
    assert_eq!(admin.run(&["-t", "t", "echo $OPENBOX_USER"]).ok().stdout, "bob\n");
    let out = admin.cmd().args(["--no-daemon", "logout"]).output().unwrap();
    assert!(out.status.success());
    wait_until("the daemon to see the logout", || admin.daemon_status()["logged_in"] == false);
    admin.run(&["-t", "t", "true"]).fails_with(255, "not logged in");
}

#[test]
fn warm_calls_make_no_control_plane_round_trip() {
    let (cp, admin, agent) = fleet(&["t"]);
    admin.run(&["-t", "t", "true"]).ok();
    wait_until("the registry mirror to be live", || admin.daemon_status()["registry_live"] == true);
    // A new tag reaches the mirror through the event stream.
    admin.run(&["node", "tag", &agent.node_id, "+fresh"]).ok();
    wait_until("the mirror to learn the tag", || admin.run(&["-t", "fresh", "true"]).code == 0);
    let before = dispatches(&cp);
    // Frozen, the control plane would make any call that asks it hang and fail.
    cp.pause();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let tag = if i % 2 == 0 { "t" } else { "fresh" };
            let out = Command::new("timeout")
                .args(["10", openbox_e2e::bin("openbox").to_str().unwrap(), "-t", tag, "echo", &i.to_string()])
                .env("OPENBOX_HOME", admin.home.path())
                .output()
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .collect();
    cp.resume();
    for (i, (code, stdout)) in calls.iter().enumerate() {
        assert_eq!((*code, stdout.as_str()), (Some(0), format!("{i}\n").as_str()), "warm call {i}");
    }
    assert_eq!(dispatches(&cp), before, "warm calls must not dispatch");
}

#[test]
fn parallel_commands_share_one_pooled_connection() {
    let (_cp, admin, agent) = fleet(&["t"]);
    admin.run(&["-t", "t", "true"]).ok();
    // Each command waits until all eight have started: they can only finish together.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            let cmd = format!(
                "touch {d}/{i}; n=0; while [ $(ls {d} | wc -l) -lt 8 ]; do n=$((n+1)); [ $n -gt 400 ] && exit 9; sleep 0.05; done; echo {i}"
            );
            admin.cmd().args(["-t", "t", &cmd]).stdout(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "command {i} never saw the others running");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
    assert_eq!(admin.daemon_status()["connections"], 1);
    assert_eq!(agent.log().matches("accepted user certificate").count(), 1, "one connection, one authentication");
}

#[test]
fn a_restarted_or_killed_agent_is_reconnected_transparently() {
    let (_cp, admin, mut agent) = fleet(&["t"]);
    admin.run(&["-t", "t", "true"]).ok();
    agent.restart(); // comes back on another port
    assert_eq!(admin.run(&["-t", "t", "echo", "again"]).ok().stdout, "again\n");
    agent.kill();
    agent.restart();
    assert_eq!(admin.run(&["-t", "t", "echo", "once more"]).ok().stdout, "once more\n");
}

#[test]
fn a_command_running_when_its_agent_dies_exits_255_with_a_message() {
    let (_cp, admin, mut agent) = fleet(&["t"]);
    let mut child = admin
        .cmd()
        .args(["-t", "t", "echo started; exec sleep 20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    agent.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost"), "{stderr}");
}

#[test]
fn commands_keep_working_while_the_control_plane_is_down_until_certificates_expire() {
    // With a 20s certificate the cached one stays usable for about 10s after issue.
    let cp = ControlPlane::start_with(&["--user-cert-ttl", "20s"]);
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["t"]);
    admin.run(&["-t", "t", "true"]).ok();
    wait_until("the registry mirror to be live", || admin.daemon_status()["registry_live"] == true);
    let mut cp = cp;
    cp.kill();
    assert_eq!(admin.run(&["-t", "t", "echo", "still"]).ok().stdout, "still\n");
    // Once the cached certificate is too old to use, a clear error.
    wait_until("the cached certificate to run out", || {
        let out = admin.run(&["-t", "t", "true"]);
        out.code == 255 && out.stderr.contains("cannot reach the control plane")
    });
}

// ---- the documented examples and service definitions ----

/// The first fenced block of `lang` in a docs file.
fn doc_block(file: &str, lang: &str) -> String {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)).unwrap();
    let start = text.find(&format!("```{lang}\n")).expect("block") + lang.len() + 4;
    text[start..start + text[start..].find("```").unwrap()].to_owned()
}

#[test]
fn the_python_example_in_the_rpc_docs_runs_a_command() {
    let (_cp, admin, _agent) = fleet(&["t"]);
    admin.daemon_status();
    let script = admin.home.path().join("openbox_run.py");
    std::fs::write(&script, doc_block("docs/rpc.md", "python")).unwrap();
    let out = Command::new("python3")
        .env("OPENBOX_HOME", admin.home.path())
        .args([script.to_str().unwrap(), "t", "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn the_socat_example_in_the_rpc_docs_lists_nodes() {
    let (_cp, admin, agent) = fleet(&["t"]);
    let bin_dir = openbox_e2e::bin("openbox").parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("sh")
        .args(["-c", &doc_block("docs/rpc.md", "sh")])
        .env("OPENBOX_HOME", admin.home.path())
        .env("PATH", path)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["result"]["protocol"], proto::rpc::PROTOCOL);
    assert_eq!(lines[1]["result"][0]["id"], agent.node_id.as_str());
}

#[test]
fn the_systemd_units_verify() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = openbox_e2e::bin("openbox").parent().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (unit, user) in
        [("openboxd.service", true), ("openbox-control.service", false), ("openbox-agent.service", false)]
    {
        // Verify against the binaries just built, where the unit expects installed ones.
        let text = std::fs::read_to_string(root.join("systemd").join(unit)).unwrap();
        assert!(text.contains("/usr/local/bin/"), "{unit} names the install location");
        let copy = tmp.path().join(unit);
        std::fs::write(&copy, text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()))).unwrap();
        let mut cmd = Command::new("systemd-analyze");
        cmd.arg("verify");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = cmd.arg(&copy).output().expect("systemd-analyze must be installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{unit}: {stderr}");
    }
}

#[test]
fn the_launchd_agent_is_a_valid_plist_that_runs_openboxd() {
    let plist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../launchd/dev.openbox.openboxd.plist");
    let check = r#"
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
assert p["Label"] == "dev.openbox.openboxd", p
args = p["ProgramArguments"]
assert args[0].startswith("/") and args[0].endswith("/openboxd"), args
assert p["RunAtLoad"] is True
assert p["KeepAlive"] == {"SuccessfulExit": False}
print("ok")
"#;
    let out = Command::new("python3").args(["-c", check, plist.to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_idle_daemon_uses_no_cpu_after_a_login_change() {
    let (_cp, admin, _agent) = fleet(&["t"]);
    admin.run(&["-t", "t", "true"]).ok();
    admin.run(&["whoami"]).ok(); // reads the login file, which the daemon watches
    let pid = pid_of(&admin.daemon_status());
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap() // utime + stime
    };
    let before = ticks();
    // Let a second of wall time pass: a busy loop would burn about 100 ticks in it.
    let start = std::time::Instant::now();
    wait_until("a second to pass", || start.elapsed() >= std::time::Duration::from_secs(1));
    assert!(ticks() - before < 30, "openboxd is busy while idle ({} ticks in 1s)", ticks() - before);
}

#[test]
fn a_request_may_leave_out_its_parameters() {
    let (_cp, admin, agent) = fleet(&["t"]);
    admin.daemon_status(); // starts openboxd
    let mut s = std::os::unix::net::UnixStream::connect(admin.home.path().join("run/openboxd.sock")).unwrap();
    use std::io::Write;
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"hello\",\"params\":{\"protocol\":2}}\n").unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"nodes\"}\n").unwrap();
    let mut lines = BufReader::new(&s).lines();
    let hello: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(hello["result"]["protocol"], proto::rpc::PROTOCOL, "{hello}");
    let nodes: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(nodes["result"][0]["id"], agent.node_id.as_str(), "{nodes}");
}
