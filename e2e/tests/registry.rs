//! The node registry: listing, filtering, online state, tags and names.

use openbox_e2e::{Agent, Cli, ControlPlane, wait_until};

#[test]
fn nodes_lists_id_name_tags_platform_address_and_state() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let a = Agent::enroll(&cp, &admin, &["mac", "build"]);
    let _b = Agent::enroll(&cp, &admin, &["gpu"]);
    let n = admin.node(&a.node_id).unwrap();
    assert_eq!(n["tags"], serde_json::json!(["mac", "build"]));
    assert_eq!(n["addr"], a.addr.as_str());
    assert_eq!(n["online"], true);
    assert_eq!(n["platform"]["os"], std::env::consts::OS);
    assert_eq!(n["platform"]["arch"], std::env::consts::ARCH);
    assert!(n["last_seen"].as_u64().unwrap() > 0);

    let gpu = admin.run(&["nodes", "--tag", "gpu", "--json"]).ok().json();
    assert_eq!(gpu.as_array().unwrap().len(), 1);
    let table = admin.run(&["nodes"]).ok().stdout;
    assert!(
        table.contains("STATUS")
            && table.contains(&a.node_id)
            && table.contains("online")
            && table.contains("mac,build"),
        "{table}"
    );
}

#[test]
fn a_node_shows_offline_when_stopped_or_silent() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut polite = Agent::enroll(&cp, &admin, &[]);
    let mut silent = Agent::enroll(&cp, &admin, &[]);
    polite.stop(); // says goodbye: offline at once
    assert_eq!(admin.node(&polite.node_id).unwrap()["online"], false);
    silent.kill(); // no goodbye: offline once heartbeats are overdue (2s here)
    wait_until("the killed node to show offline", || admin.node(&silent.node_id).unwrap()["online"] == false);
}

#[test]
fn tags_and_names_can_be_changed() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let a = Agent::enroll(&cp, &admin, &["old"]);
    let out = admin.run(&["node", "tag", &a.node_id, "+new", "-old", "--json"]).ok().json();
    assert_eq!(out["tags"], serde_json::json!(["new"]));
    admin.run(&["-t", "new", "true"]).ok();
    admin.run(&["-t", "old", "true"]).fails_with(255, "no node carries tag \"old\"");
    admin.run(&["node", "rename", &a.node_id, "renamed"]).ok();
    assert_eq!(admin.node(&a.node_id).unwrap()["name"], "renamed");
    admin.run(&["-n", "renamed", "true"]).ok();
    admin.run(&["node", "tag", &a.node_id, "oops"]).fails_with(2, "+TAG");
    admin.run(&["node", "tag", &a.node_id, "+bad tag"]).fails_with(2, "may hold only");
    admin.run(&["node", "rename", "nope", "x"]).fails_with(1, "no node with id or name");
}
