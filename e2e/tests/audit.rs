//! The audit log: every dispatch and every change, for admins, through the real binaries.

use openbox_e2e::{Agent, Cli, ControlPlane, wait_until};

fn audit(cli: &Cli, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--json"];
    all.extend(args);
    cli.run(&all).ok().json().as_array().expect("a list").clone()
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
    assert_eq!(dispatch["command_sha256"], trust::token::hash("echo audited").as_str());
    assert!(dispatch["command"].is_null(), "command lines are kept only when asked: {dispatch}");
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
fn command_lines_are_kept_only_when_asked_and_old_entries_are_forgotten() {
    let cp = ControlPlane::start_with(&["--audit-commands", "--audit-retention", "3s"]);
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &admin, &["t"]);
    admin.run(&["-t", "t", "echo", "kept"]).ok();
    let kept = |log: &[serde_json::Value]| log.iter().any(|e| e["command"] == "echo kept");
    assert!(kept(&audit(&admin, &[])), "the command line is recorded when asked");
    // Each new entry forgets those older than the retention.
    wait_until("entries older than 3s to be forgotten", || {
        admin.run(&["node", "token", "--tag", "t"]).ok();
        !kept(&audit(&admin, &[]))
    });
}
