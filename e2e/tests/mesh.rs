//! The embedded tailnet, end to end through the real binaries against a real Headscale:
//! an agent on the tailnet only (no TCP listener), openboxd holding its own tailnet node,
//! commands and sessions between them — and a clear refusal from an openboxd that is not
//! on the tailnet.

use openbox_e2e::{Agent, Cli, ControlPlane, Headscale, MESH_TEST_ENV};

/// A CLI whose openboxd joins `hs`'s tailnet (it starts with the login call).
fn meshed_admin(cp: &ControlPlane, hs: &Headscale, key: &str) -> Cli {
    let cli = Cli::new();
    let out = cli
        .cmd()
        .args(["login", "--server", &cp.url, "--token", &cp.admin_token])
        .env("OPENBOX_MESH_CONTROL", &hs.url)
        .env("OPENBOX_MESH_AUTHKEY", key)
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cli
}

#[test]
fn a_tailnet_only_node_serves_commands_and_sessions_to_a_meshed_openboxd() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let cp = ControlPlane::start();
    let admin = meshed_admin(&cp, &hs, &key);
    let agent = Agent::enroll_mesh(&cp, &admin.enroll_token(&["meshtag"]), &hs, &key, &["--name", "meshy"]);
    assert!(agent.addr.starts_with("100.64."), "it serves on its tailnet address: {}", agent.addr);

    let node = admin.node(&agent.node_id).expect("listed");
    assert_eq!(node["addr"], "", "no direct address: {node}");
    assert_eq!(node["mesh_addr"], agent.addr.as_str());

    let out = admin.run(&["-t", "meshtag", "echo", "over", "the", "tailnet;", "echo $OPENBOX_NODE"]).ok();
    assert_eq!(out.stdout, format!("over the tailnet\n{}\n", agent.node_id));
    let big = admin.run(&["-n", "meshy", "head -c 3000000 /dev/zero | wc -c"]).ok();
    assert_eq!(big.stdout.trim(), "3000000");

    admin.run(&["-t", "meshtag", "-s", "s1", "cd /tmp && export X=kept"]).ok();
    assert_eq!(admin.run(&["-t", "meshtag", "-s", "s1", "echo $(pwd) $X"]).ok().stdout, "/tmp kept\n");

    let status = admin.daemon_status();
    assert_eq!(status["mesh"]["up"], true, "{status}");
    assert!(status["mesh"]["ips"][0].as_str().unwrap().starts_with("100.64."), "{status}");

    // Someone whose openboxd is not on the tailnet is told so, in one line.
    let token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let bob = Cli::logged_in(&cp, &token);
    bob.run(&["-t", "meshtag", "true"])
        .fails_with(255, "reachable only on the tailnet, and this openboxd is not on it");
}
