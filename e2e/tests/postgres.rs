//! The control plane on PostgreSQL, through the real binaries: one control plane, and
//! several on one database serving one fleet interchangeably.

use openbox_e2e::{
    Agent, Cli, ControlPlane, Out, SseStream, TcpBalancer, post_raw, postgres_cluster, postgres_database,
    postgres_server, psql,
};

/// A database of its own, and a CA key file every control plane on it shares.
struct Fleet {
    db: String,
    ca: String,
    _dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca_key").display().to_string();
        Fleet { db: postgres_database(postgres_server()), ca, _dir: dir }
    }

    fn args(&self) -> [&str; 4] {
        ["--db", &self.db, "--ca", &self.ca]
    }
}

#[test]
fn a_control_plane_on_postgres_enrolls_runs_and_keeps_everything_across_a_restart() {
    let fleet = Fleet::new();
    let mut cp = ControlPlane::start_with(&fleet.args());
    let admin = Cli::admin(&cp);
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let agent = Agent::enroll(&cp, &admin, &["pg"]);
    assert_eq!(admin.run(&["-t", "pg", "echo", "on-postgres"]).ok().stdout, "on-postgres\n");
    admin.run(&["-t", "pg", "-s", "work", "cd /tmp"]).ok();

    cp.restart();
    assert_eq!(Cli::logged_in(&cp, &bob_token).run(&["whoami", "--json"]).ok().json()["user"], "bob");
    assert_eq!(admin.run(&["-t", "pg", "-s", "work", "pwd"]).ok().stdout, "/tmp\n", "the session directory kept");
    let node = admin.node(&agent.node_id).expect("the node is still registered");
    assert_eq!(node["tags"][0], "pg");
    // It lives in the database, not in a file beside the control plane.
    assert!(!cp.db_path().exists(), "no SQLite file was made");
    let nodes = psql(&fleet.db, "SELECT name FROM nodes");
    assert_eq!(nodes.trim(), agent.name);
    let users = psql(&fleet.db, "SELECT name FROM users ORDER BY name");
    assert_eq!(users.split_whitespace().collect::<Vec<_>>(), ["admin", "bob"]);
}

#[test]
fn a_db_that_is_neither_a_file_nor_a_database_this_speaks_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |db: &str| {
        std::process::Command::new(openbox_e2e::bin("openbox-control"))
            .current_dir(dir.path())
            .env("OPENBOX_HOME", dir.path())
            .args(["--addr", "127.0.0.1:0", "--db", db])
            .output()
            .unwrap()
    };
    let out = run("mysql://root@127.0.0.1/openbox");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mysql: is not a database this control plane speaks"), "{err}");
    assert!(!dir.path().join("mysql:").exists(), "no directory named after the URL");

    // A PostgreSQL nobody answers at: said at once, with the address and no password.
    let out = run("postgres://openbox:hunter2@127.0.0.1:1/openbox");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("opening the database postgres://openbox:***@127.0.0.1:1/openbox"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn two_control_planes_on_one_database_serve_one_fleet_interchangeably() {
    let fleet = Fleet::new();
    let a = ControlPlane::start_with(&fleet.args());
    let b = ControlPlane::start_replica(&fleet.args());
    // The admin logs in through A; the same token works through B.
    let via_a = Cli::admin(&a);
    let via_b = Cli::logged_in(&b, &a.admin_token);
    // A node enrolled through A, heartbeating to A, is online through B and runs what B
    // dispatches.
    let agent = Agent::enroll(&a, &via_a, &["pg"]);
    let seen = via_b.node(&agent.node_id).expect("B lists the node enrolled through A");
    assert_eq!(seen["online"], true, "{seen}");
    assert_eq!(via_b.run(&["-t", "pg", "echo", "through-b"]).ok().stdout, "through-b\n");
    // A session placed through B is found through A.
    via_b.run(&["-t", "pg", "-s", "shared", "cd /tmp"]).ok();
    assert_eq!(via_a.run(&["-t", "pg", "-s", "shared", "pwd"]).ok().stdout, "/tmp\n");
    // A user added through B logs in through A; removed through A, refused through B.
    let carol = via_b.run(&["user", "add", "carol", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    assert_eq!(Cli::logged_in(&a, &carol).run(&["whoami", "--json"]).ok().json()["user"], "carol");
    via_a.run(&["user", "rm", "carol"]).ok();
    let refused = post_raw(&b.addr, "/v1/logout", Some(&carol), "");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // A node renamed through B is renamed for A.
    via_b.run(&["node", "rename", &agent.name, "renamed"]).ok();
    assert!(via_a.nodes().iter().any(|n| n["name"] == "renamed"));
    // A node removed through B is refused by A, which checks heartbeats against the node
    // as it last read it: its agent, heartbeating to A, learns it was removed and stops.
    let mut agent = agent;
    via_b.run(&["node", "rm", "renamed"]).ok();
    assert!(!agent.wait_exit().success());
    assert!(agent.log().contains("removed from the fleet"), "{}", agent.log());
}

#[test]
fn an_enrollment_token_enrolls_one_node_however_many_control_planes_are_asked_at_once() {
    let fleet = Fleet::new();
    let a = ControlPlane::start_with(&fleet.args());
    let b = ControlPlane::start_replica(&fleet.args());
    let admin = Cli::admin(&a);
    for round in 0..10 {
        let token = admin.enroll_token(&[]);
        let asks: Vec<_> = [a.addr.clone(), b.addr.clone(), a.addr.clone(), b.addr.clone()]
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let key = trust::generate_key().public_key().to_openssh().unwrap();
                let body = serde_json::json!({
                    "token": token, "name": null, "default_name": format!("race-{round}-{i}"),
                    "addr": "127.0.0.1:1", "tags": [], "platform": {"os": "linux", "arch": "x86_64"},
                    "host_public_key": key,
                });
                std::thread::spawn(move || post_raw(&addr, "/v1/enroll", None, &body.to_string()))
            })
            .collect();
        let answers: Vec<String> = asks.into_iter().map(|t| t.join().unwrap()).collect();
        let enrolled = answers.iter().filter(|r| r.starts_with("HTTP/1.1 200")).count();
        assert_eq!(enrolled, 1, "round {round}: {answers:#?}");
        for refused in answers.iter().filter(|r| !r.starts_with("HTTP/1.1 200")) {
            assert!(refused.contains("this enrollment token was already used"), "{refused}");
        }
    }
    assert_eq!(psql(&fleet.db, "SELECT count(*) FROM nodes").trim(), "10");
}

#[test]
fn a_control_plane_with_another_ca_key_than_its_fleet_refuses_to_start() {
    let fleet = Fleet::new();
    let _a = ControlPlane::start_with(&fleet.args());
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other_ca");
    let out = std::process::Command::new(openbox_e2e::bin("openbox-control"))
        .env("OPENBOX_HOME", dir.path())
        .args(["--addr", "127.0.0.1:0", "--db", &fleet.db, "--ca", &other_ca.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already has a CA") && err.contains("give the key the other control planes use"), "{err}");
    assert!(!other_ca.exists(), "no new CA key was made for a fleet that has one");

    // The key itself in the environment works, and the wrong one is refused.
    let key = std::fs::read_to_string(&fleet.ca).unwrap();
    let mut b = ControlPlane::start_replica_env(&["--db", &fleet.db], &[("OPENBOX_CA_KEY", &key)]);
    b.stop();
    let wrong = trust::Ca::generate().to_openssh().unwrap().expose().to_owned();
    let out = std::process::Command::new(openbox_e2e::bin("openbox-control"))
        .env("OPENBOX_HOME", dir.path())
        .env("OPENBOX_CA_KEY", wrong)
        .args(["--addr", "127.0.0.1:0", "--db", &fleet.db])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the CA key in OPENBOX_CA_KEY is not the one this fleet's database trusts"), "{err}");
}

#[test]
fn a_change_stream_on_one_control_plane_shows_changes_made_through_another_and_resumes_after_the_last() {
    let fleet = Fleet::new();
    let a = ControlPlane::start_with(&fleet.args());
    let b = ControlPlane::start_replica(&fleet.args());
    let admin = Cli::admin(&a);
    let within = std::time::Duration::from_secs(10);
    let mut stream = SseStream::open(&b.addr, "/v1/events?changes=true", &a.admin_token);
    let first = stream.next(within).expect("the whole list first");
    assert_eq!((first.name.as_str(), first.data.as_str()), ("nodes", "[]"));

    // Enrolled, renamed and stopped through A: each arrives on B's stream alone.
    let mut agent = Agent::enroll(&a, &admin, &["pg"]);
    let joined = stream.wait_for("the node joins", within, |e| e.name == "node" && e.json()["id"] == agent.node_id);
    assert_eq!(joined.json()["online"], true);
    admin.run(&["node", "rename", &agent.name, "moved"]).ok();
    stream.wait_for("the rename", within, |e| e.name == "node" && e.json()["name"] == "moved");
    agent.stop();
    let offline = stream.wait_for("offline", within, |e| e.name == "node" && e.json()["online"] == false);
    let last = offline.id.expect("a change carries its number");
    drop(stream);

    // Away meanwhile: retagged, then removed. Resuming after the last change seen sends
    // what became of the node, not the whole list.
    admin.run(&["node", "tag", "moved", "+later"]).ok();
    admin.run(&["node", "rm", "moved"]).ok();
    let mut resumed = SseStream::open(&b.addr, &format!("/v1/events?changes=true&since={last}"), &a.admin_token);
    let next = resumed.next(within).expect("what was missed");
    assert_eq!(next.name, "node_removed", "{next:?}");
    assert_eq!(next.json()["id"], agent.node_id);
    // Then where it has caught up to, alone (a client cut off before it resumes as before).
    assert!(next.id.is_none(), "{next:?}");
    while let Some(more) = resumed.next(std::time::Duration::from_millis(500)) {
        assert_eq!(more.name, "sessions", "nothing more about nodes was missed: {more:?}");
    }
    let caught_up: i64 = resumed.last_id().expect("the resume point").parse().unwrap();
    assert!(caught_up > last.parse::<i64>().unwrap());
    // A resume point the log no longer holds gets the whole list again.
    let mut stale = SseStream::open(&a.addr, "/v1/events?changes=true&since=-5", &a.admin_token);
    assert_eq!(stale.next(within).unwrap().name, "nodes");
}

#[test]
fn behind_a_balancer_clients_move_to_the_other_control_plane_when_one_stops() {
    let fleet = Fleet::new();
    let mut a = ControlPlane::start_with(&fleet.args());
    let b = ControlPlane::start_replica(&fleet.args());
    let lb = TcpBalancer::start(&[&a.addr, &b.addr]);
    let url = format!("http://{}", lb.addr);
    let admin = Cli::new();
    admin.run(&["login", "--server", &url, "--token", &a.admin_token]).ok();
    let token = admin.enroll_token(&["lb"]);
    let agent = Agent::enroll_at(&url, &token, &[], &[]);
    assert_eq!(admin.run(&["-t", "lb", "echo", "before"]).ok().stdout, "before\n");

    // A stops mid-run: a command running through it finishes (it does not need the control
    // plane once started), and the next ones, the heartbeats and openboxd's mirror go to B.
    let mut running = admin.spawn(&["-t", "lb", "sh", "-c", "sleep 2; echo finished"]);
    drop(running.stdin.take());
    a.stop();
    let finished = Out::from(running.wait_with_output().unwrap());
    assert_eq!(finished.ok().stdout, "finished\n");
    for i in 0..5 {
        assert_eq!(admin.run(&["-t", "lb", "echo", &format!("after-{i}")]).ok().stdout, format!("after-{i}\n"));
    }
    let via_b = Cli::logged_in(&b, &a.admin_token);
    openbox_e2e::wait_until("the node heartbeats through B", || {
        via_b
            .node(&agent.node_id)
            .is_some_and(|n| n["online"] == true && n["last_seen"].as_u64() > Some(proto_now() - 2))
    });
    openbox_e2e::wait_until("openboxd's mirror is live again", || admin.daemon_status()["registry_live"] == true);
}

fn proto_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_restart_of_postgresql_under_load_loses_nothing_and_needs_no_hand() {
    // A cluster of this test's own: restarting the shared one would disturb the others.
    let (dir, secrets) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A fixed port outside the ephemeral range: while it is down, no outgoing connection
    // can take it.
    let port = "5498".to_owned();
    let own =
        [("OPENBOX_TEST_POSTGRES_DIR", dir.path().to_str().unwrap()), ("OPENBOX_TEST_POSTGRES_PORT", port.as_str())];
    let server = postgres_cluster(&own);
    let db = postgres_database(&server);
    let ca = secrets.path().join("ca_key").display().to_string();
    let cp = ControlPlane::start_with(&["--db", &db, "--ca", &ca]);
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["pg"]);

    // Users added one after another while the database restarts: each one the control
    // plane said it added must be there afterwards; some are refused while it is down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let adder = {
        let (stop, home) = (stop.clone(), admin.home.path().to_owned());
        std::thread::spawn(move || {
            let (mut added, mut refused) = (Vec::new(), Vec::new());
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("u{i}");
                let out = std::process::Command::new(openbox_e2e::bin("openbox"))
                    .env("OPENBOX_HOME", &home)
                    .args(["user", "add", &name, "--json"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    added.push(name);
                } else {
                    refused.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            (added, refused)
        })
    };
    openbox_e2e::wait_until("some users added", || {
        psql(&db, "SELECT count(*) FROM users").trim().parse::<u32>().unwrap() > 3
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-postgres");
    let stopped = std::process::Command::new(script).arg("stop").envs(own).status().unwrap();
    assert!(stopped.success());
    // Down: a clear answer, not a hang.
    let down = admin.run(&["user", "add", "while-down"]);
    assert_ne!(down.code, 0);
    assert!(down.stderr.contains("cannot reach its database; try again shortly"), "{}", down.stderr);
    let unready = openbox_e2e::http_raw(&cp.addr, "GET", "/v1/ready", &[], "");
    assert!(unready.starts_with("HTTP/1.1 503") && unready.contains("\"ready\":false"), "{unready}");
    postgres_cluster(&own);
    openbox_e2e::wait_until("the control plane works again by itself", || {
        admin.run(&["-t", "pg", "echo", "back"]).code == 0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (added, refused) = adder.join().unwrap();
    assert!(!added.is_empty(), "refused: {refused:?}");
    let stored = psql(&db, "SELECT name FROM users");
    let stored: Vec<&str> = stored.split_whitespace().collect();
    for name in &added {
        assert!(stored.contains(&name.as_str()), "{name} was reported added but is not stored");
    }
    assert!(!stored.contains(&"while-down"));
    std::process::Command::new(script).arg("stop").envs(own).status().unwrap();
}

#[test]
fn a_running_personal_fleet_moves_to_postgres_and_its_nodes_and_logins_keep_working() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let bob = admin.add_user(&cp, "bob");
    let agent = Agent::enroll(&cp, &admin, &["moving"]);
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    admin.run(&["-t", "moving", "-s", "kept", "cd /tmp"]).ok();
    let spare = admin.enroll_token(&["later"]);

    // Copied while it runs.
    let db = postgres_database(postgres_server());
    let file = format!("sqlite:{}", cp.db_path().display());
    let run = |args: &[&str]| {
        Out::from(std::process::Command::new(openbox_e2e::bin("openbox-control")).args(args).output().unwrap())
    };
    let out = run(&["migrate", "--from", &file, "--to", &db]).ok();
    assert!(out.stdout.contains("users  2") && out.stdout.contains("nodes  1"), "{}", out.stdout);
    // Into a database that holds a fleet: refused.
    let again = run(&["migrate", "--from", &file, "--to", &db]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already holds a fleet (2 users, 1 nodes)"), "{}", again.stderr);

    // The same control plane (address, CA key) on the new database: everything works.
    cp.restart_with(&["--db", &db]);
    assert_eq!(admin.run(&["-t", "moving", "-s", "kept", "pwd"]).ok().stdout, "/tmp\n");
    // A start on a database that has its tables says nothing of them.
    assert!(!cp.log().contains("NOTICE"), "{}", cp.log());
    assert_eq!(bob.run(&["-t", "moving", "echo", "bob-still"]).ok().stdout, "bob-still\n");
    assert!(admin.node(&agent.node_id).is_some_and(|n| n["online"] == true));
    let later = Agent::enroll_with(&cp, &spare, &[]);
    assert!(admin.node(&later.node_id).is_some(), "a token minted before the move enrolls after it");
    // New rows get new ids after the copied ones.
    admin.run(&["user", "add", "carol"]).ok();
    assert_eq!(psql(&db, "SELECT count(DISTINCT id) FROM users").trim(), "3");
}

#[test]
fn metrics_need_their_token_and_readiness_follows_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("scrape");
    std::fs::write(&token_file, "a-scrape-token-of-some-length\n").unwrap();
    let fleet = Fleet::new();
    let mut args = fleet.args().to_vec();
    let token_path = token_file.display().to_string();
    args.extend(["--metrics-token-file", &token_path]);
    let cp = ControlPlane::start_with(&args);
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["m"]);
    admin.run(&["-t", "m", "true"]).ok();

    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<String> = auth.map(|t| format!("Authorization: Bearer {t}")).into_iter().collect();
        openbox_e2e::http_raw(&cp.addr, "GET", path, &headers, "")
    };
    let scraped = get("/metrics", Some("a-scrape-token-of-some-length"));
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    for line in [
        "openbox_nodes{state=\"online\"} 1",
        "openbox_dispatches_total 1",
        "openbox_enrollments_total 1",
        "openbox_database_up 1",
        "# TYPE openbox_http_responses_total counter",
    ] {
        assert!(scraped.contains(line), "no {line:?} in {scraped}");
    }
    assert!(scraped.contains("process_resident_memory_bytes "), "{scraped}");
    let refused = get("/metrics", Some(&cp.admin_token));
    assert!(refused.starts_with("HTTP/1.1 401") && refused.contains("scrape token"), "{refused}");
    assert!(get("/metrics", None).starts_with("HTTP/1.1 401"));
    let ready = get("/v1/ready", None);
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("\"ready\":true"), "{ready}");

    // Off unless asked for.
    let plain = ControlPlane::start();
    let off = openbox_e2e::http_raw(&plain.addr, "GET", "/metrics", &[], "");
    assert!(off.starts_with("HTTP/1.1 404") && off.contains("--metrics-token-file"), "{off}");
}
