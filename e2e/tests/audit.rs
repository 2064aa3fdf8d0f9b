//! The audit log: every dispatch and every change, and what nodes report they ran, for
//! admins, through the real binaries.

use openbox_e2e::{Agent, Cli, ControlPlane, wait_until};

fn audit(cli: &Cli, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--json"];
    all.extend(args);
    cli.run(&all).ok().json().as_array().expect("a list").clone()
}

/// The `exec` entries a node reported for commands whose line hashes to `hash(line)`.
fn ran(log: &[serde_json::Value], line: &str) -> Vec<serde_json::Value> {
    let hash = trust::token::hash(line);
    log.iter().filter(|e| e["action"] == "exec" && e["command_sha256"] == hash.as_str()).cloned().collect()
}

#[test]
fn the_audit_log_records_dispatches_and_changes_for_admins_only() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    admin.run(&["-t", "t", "echo", "audited"]).ok();
    admin.run(&["-t", "t", "-s", "s1", "true"]).ok();
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    admin.run(&["node", "tag", &agent.name, "+extra"]).ok();

    let log = audit(&admin, &[]);
    let find = |action: &str| log.iter().filter(|e| e["action"] == action).cloned().collect::<Vec<_>>();
    let dispatch = find("dispatch").into_iter().find(|e| e["session"].is_null()).expect("the dispatch");
    assert_eq!(dispatch["user"], "admin");
    assert_eq!(dispatch["node_id"], agent.node_id.as_str());
    assert_eq!(dispatch["isolation"], "native");
    // What a caller says it will run is not what ran: a dispatch records no command.
    assert!(dispatch["command_sha256"].is_null() && dispatch["command"].is_null(), "{dispatch}");
    assert!(dispatch["source"].as_str().unwrap().starts_with("127.0.0.1:"), "{dispatch}");
    let key_id = dispatch["key_id"].as_str().unwrap();
    assert!(key_id.starts_with("openbox-user:admin:req:"), "{dispatch}");
    // The agent logs the same certificate and the same command hash with what it ran.
    let hash = &trust::token::hash("echo audited")[..16];
    assert!(
        agent.log().lines().any(|l| l.contains(key_id) && l.contains(hash)),
        "the agent's exec line ties to the audit entry:\n{}",
        agent.log()
    );
    assert!(find("dispatch").iter().any(|e| e["session"] == "s1"), "{log:?}");
    assert!(find("user.add").iter().any(|e| e["detail"] == "bob"), "{log:?}");
    assert!(find("node.token").iter().any(|e| e["user"] == "admin"), "{log:?}");
    assert!(find("node.enroll").iter().any(|e| e["node_id"] == agent.node_id.as_str()), "{log:?}");
    assert!(find("node.update").iter().any(|e| e["detail"].as_str().unwrap().contains("extra")), "{log:?}");

    // Filters: by user, by node (name), by age.
    let bob = Cli::logged_in(&cp, &bob_token);
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    bob.run(&["-t", "t", "true"]).ok();
    let bobs = audit(&admin, &["--user", "bob"]);
    assert!(!bobs.is_empty() && bobs.iter().all(|e| e["user"] == "bob"), "{bobs:?}");
    let on_node = audit(&admin, &["--node", &agent.name]);
    assert!(!on_node.is_empty() && on_node.iter().all(|e| e["node_id"] == agent.node_id.as_str()), "{on_node:?}");
    assert!(!audit(&admin, &["--since", "1h"]).is_empty());
    let text = admin.run(&["audit"]).ok().stdout;
    assert!(text.starts_with("WHEN") && text.contains("dispatch"), "{text}");

    // Only admins read it.
    bob.run(&["audit"]).fails_with(1, "is not an admin");
}

#[test]
fn the_node_reports_every_command_a_certificate_ran_and_how_it_ended() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    // One dispatch, then the warm path: the same certificate runs three commands.
    admin.run(&["-t", "t", "echo first"]).ok();
    admin.run(&["-t", "t", "echo second"]).ok();
    assert_eq!(admin.run(&["-t", "t", "exit 3"]).code, 3);
    admin.run(&["-t", "t", "-s", "s1", "echo in session"]).ok();
    let mut log = Vec::new();
    wait_until("the node to report what it ran", || {
        log = audit(&admin, &[]);
        ["echo first", "echo second", "exit 3"].iter().all(|l| !ran(&log, l).is_empty())
    });
    let dispatches: Vec<&serde_json::Value> =
        log.iter().filter(|e| e["action"] == "dispatch" && e["session"].is_null()).collect();
    assert_eq!(dispatches.len(), 1, "the warm path asks the control plane once: {log:?}");
    let key_id = dispatches[0]["key_id"].as_str().unwrap();
    for line in ["echo first", "echo second", "exit 3"] {
        let entry = &ran(&log, line)[0];
        assert_eq!(entry["user"], "admin", "{entry}");
        assert_eq!(entry["node_id"], agent.node_id.as_str(), "{entry}");
        assert_eq!(entry["key_id"], key_id, "every command under the one certificate: {entry}");
        assert_eq!(entry["isolation"], "native", "{entry}");
        assert!(entry["command"].is_null(), "only the hash unless the fleet records commands: {entry}");
        assert!(entry["duration_ms"].is_u64(), "{entry}");
    }
    assert_eq!(ran(&log, "echo first")[0]["exit"], "0");
    assert_eq!(ran(&log, "exit 3")[0]["exit"], "3");
    wait_until("the session's command to be reported", || !ran(&audit(&admin, &[]), "echo in session").is_empty());
    let in_session = &ran(&audit(&admin, &[]), "echo in session")[0];
    assert_eq!(in_session["session"], "s1", "{in_session}");
    // The table says what ran, and how it ended.
    let text = admin.run(&["audit", "--node", &agent.name]).ok().stdout;
    assert!(text.lines().any(|l| l.contains("exec") && l.contains("exit 3")), "{text}");
}

#[test]
fn what_a_node_ran_while_the_control_plane_was_away_reaches_the_log_after_an_agent_restart() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["t"]);
    admin.run(&["-t", "t", "true"]).ok();
    // With the control plane gone the warm path still runs commands; the node keeps what
    // it ran on disk, through a restart of its own that the control plane never sees.
    cp.stop();
    admin.run(&["-t", "t", "echo while away"]).ok();
    let (mut running, _) = admin.start_until_line(&["-t", "t", "echo started; sleep 60"]);
    agent.kill();
    let _ = running.wait();
    agent.restart();
    cp.restart();
    let mut log = Vec::new();
    wait_until("the node to report what it ran meanwhile", || {
        log = audit(&admin, &[]);
        !ran(&log, "echo while away").is_empty() && !ran(&log, "echo started; sleep 60").is_empty()
    });
    assert_eq!(ran(&log, "echo while away")[0]["exit"], "0");
    assert_eq!(ran(&log, "echo started; sleep 60")[0]["exit"], "unknown: the agent stopped while it ran");
    // Each once, however often the node sent it.
    admin.run(&["-t", "t", "true"]).ok();
    wait_until("a later heartbeat", || ran(&audit(&admin, &[]), "true").len() >= 2);
    assert_eq!(ran(&audit(&admin, &[]), "echo while away").len(), 1);
}

#[test]
fn command_lines_are_kept_only_when_asked_and_old_entries_are_forgotten() {
    let cp = ControlPlane::start_with(&["--audit-commands", "--audit-retention", "3s"]);
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["t"]);
    // The node learns from its first heartbeat's reply that command lines are kept.
    wait_until("a command line to be recorded as it ran", || {
        admin.run(&["-t", "t", "echo", "kept"]).ok();
        audit(&admin, &[]).iter().any(|e| e["action"] == "exec" && e["command"] == "echo kept")
    });
    let kept = |log: &[serde_json::Value]| log.iter().any(|e| e["command"] == "echo kept");
    // Each new entry forgets those older than the retention.
    wait_until("entries older than 3s to be forgotten", || {
        admin.run(&["node", "token", "--tag", "t"]).ok();
        !kept(&audit(&admin, &[]))
    });
}
