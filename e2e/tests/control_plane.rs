//! The control plane: first start, persistence across restarts, hashed tokens.

use std::os::unix::fs::PermissionsExt;

use openbox_e2e::{Agent, Cli, ControlPlane};

#[test]
fn first_start_creates_a_private_openssh_ca_key_and_prints_a_working_login_command() {
    let cp = ControlPlane::start();
    let key = std::fs::read_to_string(cp.ca_path()).unwrap();
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "CA key must be in OpenSSH format");
    let mode = std::fs::metadata(cp.ca_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "CA key must be readable by its owner only");
    assert!(cp.admin_token.starts_with("obx_"));
    let admin = Cli::admin(&cp);
    let me = admin.run(&["whoami", "--json"]).ok().json();
    assert_eq!(me["user"], "admin");
    assert_eq!(me["admin"], true);
}

#[test]
fn a_restart_keeps_users_nodes_tokens_and_the_ca() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let mut agent = Agent::enroll(&cp, &admin, &["keep"]);
    let spare_enroll_token = admin.enroll_token(&["later"]);
    let ca_before = std::fs::read_to_string(cp.ca_path()).unwrap();

    cp.restart();

    assert_eq!(std::fs::read_to_string(cp.ca_path()).unwrap(), ca_before, "the CA key must survive a restart");
    admin.run(&["whoami"]).ok();
    let bob = Cli::logged_in(&cp, &bob_token);
    assert_eq!(bob.run(&["whoami", "--json"]).ok().json()["user"], "bob");
    assert!(admin.node(&agent.node_id).is_some(), "the node must still be registered");
    // The agent keeps working against the restarted control plane.
    let out = admin.run(&["-t", "keep", "echo", "still-here"]).ok();
    assert_eq!(out.stdout, "still-here\n");
    // A token minted before the restart still enrolls.
    let later = Agent::enroll_with(&cp, &spare_enroll_token, &[]);
    assert!(admin.node(&later.node_id).unwrap()["tags"].as_array().unwrap().iter().any(|t| t == "later"));
    agent.stop();
}

#[test]
fn tokens_are_stored_only_as_hashes() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let user_token = admin.run(&["user", "add", "carol", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let enroll_token = admin.enroll_token(&[]);
    let _agent = Agent::enroll(&cp, &admin, &[]);
    cp.stop(); // checkpoints the write-ahead log into the database file
    let bytes = cp.stored_bytes();
    let text = String::from_utf8_lossy(&bytes);
    for secret in [&cp.admin_token, &user_token, &enroll_token] {
        let body = &secret[secret.find('_').unwrap() + 1..];
        assert!(!text.contains(body), "a token was stored in the clear");
    }
}
