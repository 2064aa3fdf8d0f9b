//! Enrollment tokens, node identity, authenticated heartbeats, and revocation.

use std::os::unix::fs::PermissionsExt;

use std::process::Command;

use openbox_e2e::{Agent, Cli, ControlPlane, Out, bin, engines, tcp_connections_to, wait_until};

#[test]
fn node_token_prints_the_agent_command_and_the_token_enrolls_exactly_once() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let out = admin.run(&["node", "token", "--tag", "mac", "--ttl", "10m"]).ok();
    assert!(out.stdout.contains(&format!("openbox agent --server {}", cp.url)), "{out:?}");
    assert!(out.stdout.contains("--tag mac"), "{out:?}");
    let token = out.stdout.split_whitespace().find_map(|w| w.strip_prefix("OPENBOX_ENROLL_TOKEN=")).unwrap().to_owned();
    assert!(token.starts_with("enroll_"), "{out:?}");

    let agent = Agent::enroll_with(&cp, &token, &["--name", "first"]);
    let node = admin.node(&agent.node_id).unwrap();
    assert_eq!(node["name"], "first");
    assert_eq!(node["tags"], serde_json::json!(["mac"]));

    let again = Agent::run_to_end(&["--server", &cp.url, "--token", &token]);
    again.fails_with(1, "already used");
}

#[test]
fn a_name_clash_does_not_use_up_the_token() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _first = Agent::enroll_with(&cp, &admin.enroll_token(&[]), &["--name", "box"]);
    let token = admin.enroll_token(&[]);
    Agent::run_to_end(&["--server", &cp.url, "--token", &token, "--name", "box"]).fails_with(1, "already exists");
    let second = Agent::enroll_with(&cp, &token, &["--name", "box2"]);
    assert_eq!(admin.node(&second.node_id).unwrap()["name"], "box2");
}

#[test]
fn an_expired_enrollment_token_is_refused() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token =
        admin.run(&["node", "token", "--ttl", "1s", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let minted = openbox_e2e::now();
    // Expiry is a matter of the clock: wait until the token's second has passed.
    wait_until("the token to expire", || openbox_e2e::now() >= minted + 2);
    Agent::run_to_end(&["--server", &cp.url, "--token", &token]).fails_with(1, "expired");
    Agent::run_to_end(&["--server", &cp.url, "--token", "enroll_nope"]).fails_with(1, "unknown enrollment token");
    Agent::run_to_end(&[]).fails_with(1, "has not enrolled yet");
}

#[test]
fn the_node_keeps_its_identity_and_only_its_public_key_leaves_it() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["a"]);
    let id = agent.node_id.clone();
    let key = std::fs::read_to_string(agent.host_key_file()).unwrap();
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert_eq!(std::fs::metadata(agent.host_key_file()).unwrap().permissions().mode() & 0o777, 0o600);
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.identity_file()).unwrap()).unwrap();
    assert!(identity["host_cert"].as_str().unwrap().starts_with("ssh-ed25519-cert-v01@openssh.com "));
    assert!(identity["heartbeat_secret"].as_str().unwrap().starts_with("node_"));

    agent.restart();
    assert_eq!(agent.node_id, id, "a restarted agent comes back as the same node");
    assert_eq!(admin.nodes().len(), 1);
    admin.run(&["-t", "a", "true"]).ok();

    // The control plane never saw the private key.
    let db = cp.stored_bytes();
    let body: String = key.lines().nth(2).unwrap().to_owned();
    assert!(!String::from_utf8_lossy(&db).contains(&body));
}

/// Sends a raw heartbeat to the control plane; returns the HTTP status line.
fn raw_heartbeat(cp: &ControlPlane, node_id: &str, secret: Option<&str>) -> String {
    let body = serde_json::json!({
        "node_id": node_id, "addr": "127.0.0.1:1", "platform": {"os": "linux", "arch": "x86_64"},
        "version": "x", "host_cert_valid_before": 0
    })
    .to_string();
    let resp = openbox_e2e::post_raw(&cp.addr, "/v1/heartbeat", secret, &body);
    resp.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn heartbeats_without_the_node_secret_are_refused() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &[]);
    assert!(raw_heartbeat(&cp, &agent.node_id, None).contains(" 401 "));
    assert!(raw_heartbeat(&cp, &agent.node_id, Some("node_wrong")).contains(" 401 "));
    // Another node's secret does not work either.
    let other = Agent::enroll(&cp, &admin, &[]);
    let other_secret: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.identity_file()).unwrap()).unwrap();
    assert!(raw_heartbeat(&cp, &agent.node_id, other_secret["heartbeat_secret"].as_str()).contains(" 401 "));
    let own: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.identity_file()).unwrap()).unwrap();
    assert!(raw_heartbeat(&cp, &agent.node_id, own["heartbeat_secret"].as_str()).contains(" 200 "));
}

#[test]
fn an_agent_keeps_one_connection_to_the_control_plane_across_its_heartbeats() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &[]);
    let last_seen = || admin.node(&agent.node_id).and_then(|n| n["last_seen"].as_u64()).unwrap_or(0);
    let first = last_seen();
    // Every look over the next heartbeats (one a second) finds the same one connection.
    let mut looks = Vec::new();
    wait_until("three more heartbeats", || {
        looks.push(tcp_connections_to(agent.pid(), &cp.addr));
        last_seen() >= first + 3
    });
    assert!(looks.len() > 3, "{looks:?}");
    let kept = looks[0].clone();
    assert_eq!(kept.len(), 1, "{looks:?}");
    assert!(looks.iter().all(|look| *look == kept), "the connection changed: {looks:?}");
}

#[test]
fn removing_a_node_revokes_its_identity_and_stops_its_agent() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["gone"]);
    let secret: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.identity_file()).unwrap()).unwrap();
    admin.run(&["node", "rm", &agent.name]).ok();
    assert!(admin.node(&agent.node_id).is_none());
    // Its next heartbeat learns of the removal: the agent discards its identity and exits.
    let status = agent.wait_exit();
    assert!(!status.success());
    assert!(agent.log().contains("removed from the fleet"), "{}", agent.log());
    assert!(!agent.identity_file().exists(), "the revoked identity must be discarded");
    assert!(raw_heartbeat(&cp, &agent.node_id, secret["heartbeat_secret"].as_str()).contains(" 410 "));
    admin.run(&["-n", &agent.node_id, "true"]).fails_with(255, "no node with id or name");
}

#[test]
fn a_node_offers_its_isolation_from_the_moment_it_enrolls() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    // Enrolled by hand and never heard from again: no heartbeat can have said more.
    let key = trust::generate_key();
    let body = serde_json::json!({
        "token": admin.enroll_token(&["t"]), "name": "quiet", "addr": "127.0.0.1:9", "tags": [],
        "platform": {"os": "linux", "arch": "x86_64"},
        "host_public_key": key.public_key().to_openssh().unwrap(),
        "capabilities": ["native", "docker", "warp-drive"],
    });
    let resp = cp.post_raw("/v1/enroll", &body.to_string());
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let node = admin.nodes().into_iter().find(|n| n["name"] == "quiet").expect("the node is listed");
    assert_eq!(node["capabilities"], serde_json::json!(["native", "docker"]), "unknown kinds are ignored");

    // The real agent says what it can serve when it enrolls, before its first heartbeat.
    let e = engines();
    let agent = Agent::enroll_env(&cp, &admin.enroll_token(&["t"]), &[], &[("DOCKER_HOST", &e.docker_host)]);
    let line = cp.log().lines().find(|l| l.contains("node enrolled") && l.contains(&agent.node_id)).map(str::to_owned);
    let line = line.expect("the control plane logs each enrollment");
    assert!(line.contains("\"docker\""), "{line}");
}

#[test]
fn a_tailnet_address_that_cannot_be_dialled_is_refused_and_the_token_kept() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.enroll_token(&["t"]);
    let key = trust::generate_key();
    let enroll = |mesh_addr: &str| {
        let body = serde_json::json!({
            "token": token, "name": "meshy", "addr": "", "mesh_addr": mesh_addr, "tags": [],
            "platform": {"os": "linux", "arch": "x86_64"},
            "host_public_key": key.public_key().to_openssh().unwrap(),
        });
        cp.post_raw("/v1/enroll", &body.to_string())
    };
    for bad in ["0.0.0.0:7684", "100.64.0.1", "100.64.0.1:0", "node.example:7684", "224.0.0.1:7684", ""] {
        let resp = enroll(bad);
        assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("not a dialable IP:PORT"), "{bad:?}: {resp}");
    }
    assert!(admin.nodes().is_empty(), "nothing was enrolled");
    let resp = enroll("100.64.0.7:7684");
    assert!(resp.starts_with("HTTP/1.1 200"), "the token was still unused: {resp}");
    assert_eq!(admin.nodes()[0]["mesh_addr"], "100.64.0.7:7684");
}

#[test]
fn a_second_agent_on_one_machine_refuses_a_new_token_until_given_a_state_dir_of_its_own() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut first = Agent::enroll(&cp, &admin, &["one"]);
    let state = first.home.path().display().to_string();
    // A second agent started as the first was, with a new token: refused at once, saying
    // whose state it found and how to run a second agent.
    let token = admin.enroll_token(&["two"]);
    let out = Command::new(bin("openbox-agent"))
        .env("OPENBOX_HOME", &state)
        .env("OPENBOX_ENROLL_TOKEN", &token)
        .args(["--server", &cp.url, "--addr", "127.0.0.1:0", "--tag", "two"])
        .output()
        .unwrap();
    let out = Out::from(out).fails_with(2, "--state-dir DIR");
    assert!(out.stderr.contains(&format!("{state}/agent")) && out.stderr.contains(&first.name), "{out:?}");
    // The token is still good: with a directory of its own the second agent is a node of its own.
    let own = tempfile::tempdir().unwrap();
    let own_dir = own.path().display().to_string();
    let second = Agent::enroll_env(
        &cp,
        &token,
        &["--state-dir", &own_dir, "--name", "second", "--tag", "two"],
        &[("OPENBOX_HOME", &state)],
    );
    assert_ne!(second.node_id, first.node_id);
    assert!(own.path().join("identity.json").exists(), "the second identity is kept in its own directory");
    assert_eq!(admin.node(&second.node_id).unwrap()["tags"], serde_json::json!(["two"]));
    // The first restarts with the token it enrolled with (as a service's token file gives it)
    // and is the same node, beside the second.
    let id = first.node_id.clone();
    first.restart();
    assert_eq!(first.node_id, id);
    admin.run(&["-n", &first.name, "true"]).ok();
    admin.run(&["-n", "second", "true"]).ok();

    // A node enrolled before the token was remembered: a token given as a person gives one
    // is refused as well; one from a file (a service's) is let through.
    first.stop();
    let identity = first.identity_file();
    let mut stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&identity).unwrap()).unwrap();
    assert!(stored.as_object_mut().unwrap().remove("enrolled_with").is_some(), "the token's hash is kept");
    std::fs::write(&identity, stored.to_string()).unwrap();
    let out = Command::new(bin("openbox-agent"))
        .env("OPENBOX_HOME", &state)
        .env("OPENBOX_ENROLL_TOKEN", admin.enroll_token(&["two"]))
        .args(["--server", &cp.url, "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    Out::from(out).fails_with(2, "--state-dir DIR");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), admin.enroll_token(&["two"])).unwrap();
    first.restart_with(&["--token-file", file.path().to_str().unwrap()]);
    assert_eq!(first.node_id, id);
}

#[test]
fn an_identity_set_aside_is_kept_and_the_next_start_enrolls_anew() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["t"]);
    let old = agent.node_id.clone();
    agent.stop();
    let home = agent.home.path().to_path_buf();
    let run = |args: &[&str]| {
        Out::from(Command::new(bin("openbox-agent")).env("OPENBOX_HOME", &home).args(args).output().unwrap())
    };
    let forgotten = run(&["--forget-identity"]).ok().json();
    assert_eq!(forgotten["node_id"], old.as_str());
    run(&["--identity"]).fails_with(3, "has not enrolled");
    assert!(home.join("agent/identity.json.forgotten").is_file(), "kept aside");
    run(&["--forget-identity"]).fails_with(3, "nothing to forget");
    agent.restart_with(&["--server", &cp.url, "--token", &admin.enroll_token(&["t"])]);
    assert_ne!(agent.node_id, old, "a new node");
}

#[test]
fn an_agent_whose_token_file_is_gone_after_enrolling_starts_again_as_the_same_node() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enroll.token");
    std::fs::write(&file, admin.enroll_token(&["t"])).unwrap();
    let file_arg = file.display().to_string();
    let mut agent = Agent::enroll_with(&cp, "", &["--token-file", &file_arg]);
    let id = agent.node_id.clone();
    // As `openbox node add` does once the node is online; the service still names the file.
    std::fs::remove_file(&file).unwrap();
    agent.restart_with(&["--token-file", &file_arg]);
    assert_eq!(agent.node_id, id);
    admin.run(&["-n", &agent.name, "true"]).ok();
    // Never enrolled, a missing file is still an error that names it.
    Agent::run_to_end(&["--server", &cp.url, "--token-file", &file_arg]).fails_with(2, "enroll.token");
}
