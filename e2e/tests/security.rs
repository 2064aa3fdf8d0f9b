//! What a security review found, each through the real binaries: enrollment tags, secrets
//! kept out of logs and arguments, private files, and answers that reveal nothing.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use openbox_e2e::{Agent, Cli, ControlPlane, wait_until};

#[test]
fn a_token_gives_a_node_no_more_tags_than_it_was_minted_with() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.enroll_token(&["t"]);
    let out = Agent::run_to_end(&["--server", &cp.url, "--token", &token, "--tag", "t", "--tag", "prod"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("allows the tags [t]; \"prod\" is not among them"), "{out:?}");
    assert!(admin.nodes().is_empty(), "nothing enrolled");
    // The token is still good for what it was minted for.
    let agent = Agent::enroll_with(&cp, &token, &["--tag", "t"]);
    assert_eq!(admin.node(&agent.node_id).unwrap()["tags"], serde_json::json!(["t"]));
}

#[test]
fn commands_and_tokens_stay_out_of_logs_and_arguments() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    // The printed agent command carries the token in the environment, not as an argument.
    let issued = admin.run(&["node", "token", "--tag", "t", "--json"]).ok().json();
    let command = issued["command"].as_str().unwrap();
    let token = issued["token"].as_str().unwrap();
    assert!(command.starts_with(&format!("OPENBOX_ENROLL_TOKEN={token} openbox agent")), "{command}");
    assert!(!command.contains("--token"), "{command}");

    let agent = Agent::enroll_with(&cp, token, &[]); // the token goes in its environment
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("enroll_"), "no token in the agent's arguments");
    // Commands never see it either.
    let env = admin.run(&["-t", "t", "echo ${OPENBOX_ENROLL_TOKEN:-none}"]).ok();
    assert_eq!(env.stdout, "none\n");

    // A command is logged by size and hash, not by its text (it may hold a secret).
    admin.run(&["-t", "t", "echo", "'Authorization: Bearer s3cr3t-in-a-header'"]).ok();
    let log = agent.log();
    assert!(!log.contains("s3cr3t-in-a-header"), "{log}");
    assert!(log.contains("command_bytes="), "{log}");

    // The database is the control plane's alone, write-ahead files included.
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", cp.db_path().display());
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path}");
        }
    }
    let dir = cp.db_path().parent().unwrap().to_owned();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
}

#[test]
fn openbox_up_leaves_no_live_token_in_its_logs() {
    let me = Cli::new();
    let port = openbox_e2e::free_port();
    me.run(&["up", "--addr", &format!("127.0.0.1:{port}")]).ok();
    me.run(&["-t", "local", "true"]).ok();
    let logs = me.home.path().join("logs");
    for log in ["control.log", "agent.log"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap();
        assert!(!text.contains("obx_") && !text.contains("enroll_"), "{log} holds a token:\n{text}");
    }
    me.run(&["down"]).ok();
}

/// The status line of a raw HTTP POST to the control plane, and its body.
fn post(addr: &str, path: &str, auth: Option<&str>, body: &serde_json::Value) -> (String, String) {
    let resp = openbox_e2e::post_raw(addr, path, auth, &body.to_string());
    let status = resp.lines().next().unwrap_or_default().to_owned();
    (status, resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[test]
fn heartbeats_and_enrollment_do_not_say_which_nodes_exist() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll_with(&cp, &admin.enroll_token(&["t"]), &["--name", "taken"]);
    let beat = |id: &str| {
        let hb = serde_json::json!({
            "node_id": id, "addr": "127.0.0.1:1", "platform": {"os": "linux", "arch": "x86_64"},
            "version": "x", "host_cert_valid_before": 0
        });
        post(&cp.addr, "/v1/heartbeat", Some("node_guessed"), &hb)
    };
    let (known, unknown) = (beat(&agent.node_id), beat("0123456789ab"));
    assert!(known.0.contains(" 401 "), "{known:?}");
    assert_eq!(known, unknown, "a wrong secret and an unknown id get the same answer");

    // Without a valid token, enrollment says nothing about names either.
    let key = trust::generate_key();
    let enroll = |name: &str| {
        let body = serde_json::json!({
            "token": "enroll_made_up", "name": name, "addr": "127.0.0.1:9", "tags": [],
            "platform": {"os": "linux", "arch": "x86_64"},
            "host_public_key": key.public_key().to_openssh().unwrap(),
        });
        post(&cp.addr, "/v1/enroll", None, &body)
    };
    let (taken, free) = (enroll("taken"), enroll("free-name"));
    assert!(taken.0.contains(" 401 "), "{taken:?}");
    assert_eq!(taken, free);

    // The removed node itself, with its own secret, is told it was removed.
    admin.run(&["node", "rm", "taken"]).ok();
    wait_until("the removed agent to hear of it", || agent.log().contains("removed from the fleet"));
}

#[test]
fn simultaneous_first_uses_of_a_session_place_it_on_one_node() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _agents: Vec<Agent> = (0..3).map(|_| Agent::enroll(&cp, &admin, &["t"])).collect();
    let key = trust::generate_key().public_key().to_openssh().unwrap();
    let (addr, token) = (cp.addr.as_str(), cp.admin_token.as_str());
    for round in 0..20 {
        let request = proto::api::DispatchRequest {
            target: proto::api::Target::Tag("t".into()),
            session: Some(format!("race-{round}")),
            isolation: proto::Isolation::Native,
            public_key: key.clone(),
        };
        let body = serde_json::to_value(&request).unwrap();
        let nodes: Vec<String> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..12)
                .map(|_| {
                    s.spawn(|| {
                        let (status, reply) = post(addr, "/v1/dispatch", Some(token), &body);
                        assert!(status.contains(" 200 "), "{status} {reply}");
                        serde_json::from_str::<serde_json::Value>(&reply).unwrap()["node"]["id"].to_string()
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert!(nodes.iter().all(|n| *n == nodes[0]), "round {round}: one session on several nodes: {nodes:?}");
    }
}

#[test]
fn a_request_line_past_the_limit_closes_that_connection_and_openboxd_keeps_serving() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let socket = admin.home.path().join("run/openboxd.sock");
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let hello = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": proto::rpc::PROTOCOL, "client": "test"}});
    writeln!(conn, "{hello}").unwrap();
    // Two MiB with no end of line: the daemon must not keep reading it in.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..32 {
        if conn.write_all(&chunk).is_err() {
            break; // closed on us, as it should be
        }
    }
    let mut answers = String::new();
    let _ = std::io::BufReader::new(&conn).read_to_string(&mut answers);
    let refusal = answers.lines().find(|l| l.contains("refused")).unwrap_or_default();
    assert!(refusal.contains("longer than 1 MiB"), "{answers}");
    admin.run(&["whoami"]).ok();
}

#[test]
fn a_flood_of_idle_connections_shuts_out_neither_commands_nor_the_control_plane() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = |current| setrlimit(Resource::Nofile, Rlimit { current, maximum: limit.maximum }).unwrap();
    // The services start with the usual soft limit of 1024 open files, as on most systems
    // (they may raise it to the hard limit themselves) ...
    soft(Some(1024));
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    // ... while this test holds more sockets than that.
    soft(limit.maximum);
    let mut held = Vec::new();
    for _ in 0..1100 {
        held.push(std::net::TcpStream::connect(&agent.addr).unwrap());
        held.push(std::net::TcpStream::connect(&cp.addr).unwrap());
    }
    // A call with no daemon makes new connections to both while the flood is held.
    let out = admin.cmd().args(["--no-daemon", "-t", "t", "echo", "through", "the", "flood"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the flood\n", "{}", String::from_utf8_lossy(&out.stderr));
    let whoami = admin.cmd().args(["--no-daemon", "whoami"]).output().unwrap();
    assert!(whoami.status.success(), "{}", String::from_utf8_lossy(&whoami.stderr));

    // A request whose headers never finish is closed, not kept open.
    let mut slow = std::net::TcpStream::connect(&cp.addr).unwrap();
    slow.write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < std::time::Duration::from_secs(25), "a half-sent request stayed open");
    drop(held);
    // The agent kept at most its cap of connections that had not authenticated.
    assert!(agent.log().contains("closing the oldest"), "{}", agent.log());
    // Nothing ran out of descriptors on the way.
    for (what, log) in [("agent", agent.log()), ("control plane", cp.log())] {
        assert!(!log.contains("Too many open files"), "the {what} ran out of descriptors:\n{log}");
    }
}

#[test]
fn the_cli_hands_its_call_only_to_an_openboxd_of_its_own_user() {
    let me = Cli::new();
    let run = me.home.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Someone else (uid 65534) listens on a socket, which is then put where openboxd's goes.
    let theirs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let fake = theirs.path().join("fake.sock");
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind({:?})\ns.listen()\nprint('ready', flush=True)\ntime.sleep(60)",
        fake.display().to_string()
    );
    let mut impostor = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) and /usr/bin/python3 are needed for this test");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(impostor.stdout.as_mut().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    std::fs::rename(&fake, run.join("openboxd.sock")).unwrap();

    me.run(&["nodes"]).fails_with(255, "is served by uid 65534, not by you");
    let _ = impostor.kill();
    let _ = impostor.wait();
}

#[test]
fn a_directory_others_can_write_to_is_refused_and_no_link_is_followed() {
    let cp = ControlPlane::start();
    // A socket directory anyone may write to could be swapped under openboxd: refused.
    let me = Cli::new();
    let run = me.home.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    me.run(&["whoami"]).fails_with(255, "is not a private directory of this user");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A link planted where a private file is first written is replaced, never followed.
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "untouched").unwrap();
    std::os::unix::fs::symlink(victim.path(), me.home.path().join("login.json.tmp")).unwrap();
    me.run(&["login", "--server", &cp.url, "--token", &cp.admin_token]).ok();
    assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "untouched");
    assert!(std::fs::read_to_string(me.home.path().join("login.json")).unwrap().contains("obx_"));
}

#[test]
fn a_removed_user_is_refused_within_a_heartbeat_and_their_shells_are_ended() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    // A session shell (its pid noted) and a warm connection in bob's openboxd.
    let pid = bob.run(&["-t", "t", "-s", "work", "cd /tmp && echo $$"]).ok().stdout.trim().to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    bob.run(&["-t", "t", "true"]).ok();

    admin.run(&["user", "rm", "bob"]).ok();
    // Within a heartbeat (1 s here) the node refuses him, on the connection his openboxd
    // holds open too, and his shell is gone.
    wait_until("bob to be refused", || {
        let out = bob.run(&["-t", "t", "true"]);
        // His openboxd still holds a certificate and a connection: the node itself refuses.
        out.code != 0 && out.stderr.contains("user bob was removed from this fleet")
    });
    wait_until("bob's shell to be ended", || !std::path::Path::new(&format!("/proc/{pid}")).exists());

    // A new user of the same name is another user: none of the old session is theirs.
    let new_bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    let out = new_bob.run(&["-t", "t", "-s", "work", "pwd"]).ok();
    assert_ne!(out.stdout.trim(), "/tmp", "the old session's state leaked: {out:?}");
    assert!(!out.stderr.contains("removed"), "nothing about the old session is said: {out:?}");
}

const MIB: u64 = 1 << 20;

/// The review streamed 3 GB into `sleep 25` and the agent grew by as much. Now input a
/// command does not read stays with the caller: the agent reopens the SSH window only as
/// input is used.
#[test]
fn input_a_command_does_not_read_stays_with_the_caller_and_the_agent_stays_small() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let waits = format!("while [ ! -e {} ]; do sleep 0.1; done; echo done", go.display());

    let (taken, child) = openbox_e2e::feed_until_held_back(&admin, &["-t", "t", &waits], 3 << 30);
    assert!(taken < 64 * MIB, "the caller was held back at the window, but it took {} MiB", taken / MIB);
    let peak = openbox_e2e::peak_memory(agent.pid());
    assert!(peak < 100 * MIB, "the agent peaked at {} MiB", peak / MIB);
    // The call itself is unharmed: the command ends as it would have.
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"done\n"[..]), "{out:?}");

    // So does a session's command: its input waits at the window too, and nothing piles up.
    std::fs::remove_file(&go).unwrap();
    let (taken, child) = openbox_e2e::feed_until_held_back(&admin, &["-t", "t", "-s", "s1", &waits], 3 << 30);
    assert!(taken < 64 * MIB, "a session's command held the caller back, but it took {} MiB", taken / MIB);
    let peak = openbox_e2e::peak_memory(agent.pid());
    assert!(peak < 100 * MIB, "the agent peaked at {} MiB", peak / MIB);
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"done\n", "{out:?}");

    // A command that reads gets every byte through the same flow control.
    let (taken, child) = openbox_e2e::feed_until_held_back(&admin, &["-t", "t", "wc -c"], 1 << 30);
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), taken.to_string(), "{out:?}");
    assert_eq!(taken, 1 << 30);
    let peak = openbox_e2e::peak_memory(agent.pid());
    assert!(peak < 100 * MIB, "the agent peaked at {} MiB", peak / MIB);
}
