//! The control plane on PostgreSQL, through the real binaries: one control plane, and
//! several on one database serving one fleet interchangeably.

use openbox_e2e::{Agent, Cli, ControlPlane, post_raw, postgres_database, postgres_server, psql};

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
