//! Bad input and broken surroundings: one clear line, a non-zero exit, and services that
//! keep serving.

use openbox_e2e::{Agent, Cli, ControlPlane};

#[test]
fn an_unknown_tag_names_the_tag_and_lists_the_tags_that_exist() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _a = Agent::enroll(&cp, &admin, &["mac"]);
    let _b = Agent::enroll(&cp, &admin, &["gpu"]);
    let out = admin.run(&["-t", "tpu", "true"]).fails_with(255, "no node carries tag \"tpu\"");
    assert!(out.stderr.contains("gpu, mac"), "{out:?}");
    admin.run(&["-t", "mac", "true"]).ok();
}

#[test]
fn a_tag_whose_nodes_are_all_offline_says_so() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut a = Agent::enroll(&cp, &admin, &["sleepy"]);
    a.stop();
    let out = admin.run(&["-t", "sleepy", "true"]).fails_with(255, "every node tagged \"sleepy\" is offline");
    assert!(out.stderr.contains(&a.name), "names the nodes: {out:?}");
    let out = admin.run(&["-n", &a.node_id, "true"]).fails_with(255, &format!("node {} is offline", a.name));
    assert!(!out.stderr.contains(&a.node_id), "named, even when asked for by id: {out:?}");
}

#[test]
fn an_unreachable_node_is_named_in_the_error() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    // Heartbeats work, but the advertised address has nobody listening.
    let a = Agent::enroll_with(&cp, &admin.enroll_token(&["far"]), &["--advertise", "127.0.0.1:9", "--name", "far-1"]);
    let out = admin.run(&["-t", "far", "true"]).fails_with(255, "cannot reach node far-1 at 127.0.0.1:9");
    assert!(!out.stderr.contains(&a.node_id), "named as people know it, not by id: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
}

#[test]
fn an_unreachable_control_plane_is_named_in_the_error() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    cp.stop();
    let out = admin.run(&["-t", "any", "true"]).fails_with(255, "cannot reach the control plane");
    assert!(out.stderr.contains(&cp.url), "{out:?}");
    admin.run(&["nodes"]).fails_with(1, "cannot reach the control plane");
}

#[test]
fn malformed_requests_get_json_errors_and_the_control_plane_keeps_serving() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    for body in ["{", "{\"target\":{\"tag\":\"x\"},\"isolation\":\"vm:1\",\"public_key\":\"k\"}", "[]"] {
        let resp = cp.post_raw("/v1/dispatch", body);
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert!(resp.contains("{\"error\":"), "{resp}");
    }
    admin.run(&["whoami"]).ok();
}
