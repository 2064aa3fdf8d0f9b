//! Isolation fails closed: a mode that is unknown, malformed, or not servable is refused at
//! the CLI, at the control plane and at the agent, and nothing runs on the host. Each case
//! asks for a command that would create a marker file on the host if it ran there.

use std::path::Path;
use std::sync::Arc;

use net::ssh::{NodeTarget, SshError, dial};
use openbox_e2e::{Agent, Cli, ControlPlane, now, runtime};
use proto::cert::{EXT_ISOLATION, EXT_NODE};
use ssh_key::certificate::{Builder, CertType};

fn touch(marker: &Path) -> String {
    format!("touch {}", marker.display())
}

#[test]
fn the_cli_refuses_unknown_or_malformed_modes_before_anything_runs() {
    let cp = ControlPlane::start();
    let cli = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &cli, &["t"]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let cases: &[&[&str]] = &[
        &["--isolate", "bogus"],
        &["--isolate", "Native"],
        &["--isolate", "host"],
        &["--isolate", "docker:"],
        &["--isolate", "docker:img;gpus=all"],
        &["--isolate", "nspawn:relative/dir"],
        &["--isolate", "native;network=none"],
        &["--docker", "img;mount=/:/host"],
        &["--docker", "two words"],
        &["--nspawn", "relative"],
        &["--nspawn", "/"],
        &["--cpus", "2"],
        &["--docker", "img", "--cpus", "zero"],
        &["--docker", "img", "--network", "bridge"],
        &["--docker", "img", "--mount", "/a:/../etc"],
        &["--nspawn", "/srv/tree", "--memory", "1g"],
    ];
    for flags in cases {
        let mut args = vec!["-t", "t"];
        args.extend(*flags);
        let cmd = touch(&marker);
        args.push(&cmd);
        let out = cli.run(&args);
        assert_eq!(out.code, 2, "{flags:?} must be refused as a usage error: {out:?}");
        assert!(out.stderr.starts_with("openbox: "), "{out:?}");
        assert!(!marker.exists(), "{flags:?} ran something");
    }
}

#[test]
fn the_control_plane_refuses_malformed_modes_and_issues_no_certificate() {
    let cp = ControlPlane::start();
    let cli = Cli::admin(&cp);
    let _agent = Agent::enroll(&cp, &cli, &["t"]);
    let key = trust::generate_key().public_key().to_openssh().unwrap();
    for iso in ["bogus", "docker:", "docker:img;gpus=all", "nspawn:/", "native;cpus=1", "nspawn:/srv;memory=1g"] {
        let body = serde_json::json!({"target": {"tag": "t"}, "isolation": iso, "public_key": key}).to_string();
        let resp = cp.post_raw("/v1/dispatch", &body);
        assert!(resp.starts_with("HTTP/1.1 400"), "{iso:?}: {resp}");
        assert!(resp.contains("invalid isolation") && !resp.contains("\"cert\""), "{iso:?}: {resp}");
    }
}

/// A user certificate signed by the fleet's real CA whose isolation extension says `iso`,
/// whatever that is — as a compromised or buggy issuer might write it.
fn cert_with_isolation(cp: &ControlPlane, key: &trust::PrivateKey, node_id: &str, iso: &str) -> trust::Certificate {
    let ca = ssh_key::PrivateKey::from_openssh(std::fs::read_to_string(cp.ca_path()).unwrap()).unwrap();
    let mut b =
        Builder::new_with_random_nonce(&mut rand::rng(), key.public_key().key_data().clone(), now() - 30, now() + 300)
            .unwrap();
    b.cert_type(CertType::User).unwrap();
    b.key_id("openbox-user:admin:req:test").unwrap();
    b.valid_principal("admin").unwrap();
    b.extension(EXT_NODE, node_id).unwrap();
    b.extension(EXT_ISOLATION, iso).unwrap();
    b.sign(&ca).unwrap()
}

/// Runs `command` on the agent with `cert`; the exit status and stderr, or the error.
fn exec_with(
    cp: &ControlPlane,
    agent: &Agent,
    cert: trust::Certificate,
    key: &trust::PrivateKey,
    command: &str,
) -> Result<(u8, String), SshError> {
    let target = NodeTarget {
        node_id: agent.node_id.clone(),
        name: agent.name.clone(),
        addr: agent.addr.clone(),
        via: net::transport::Transport::Tcp,
        ca: cp.ca().public_key().clone(),
    };
    let key = Arc::new(key.clone());
    runtime().block_on(async move {
        let mut conn = dial(&target).await?;
        conn.authenticate("admin", key, cert).await?;
        let mut output = net::ssh::Writers { stdout: Vec::new(), stderr: Vec::new() };
        let status = conn.exec(command, net::ssh::NoInput, &mut output, std::future::pending()).await?;
        Ok((status.exit_code(), String::from_utf8_lossy(&output.stderr).into_owned()))
    })
}

/// A node whose agent sees no Docker engine, a key to sign for, and where a marker would go.
struct Node {
    cp: ControlPlane,
    _cli: Cli,
    agent: Agent,
    key: trust::PrivateKey,
    dir: tempfile::TempDir,
}

fn node() -> Node {
    let cp = ControlPlane::start();
    let cli = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &cli, &["t"]);
    Node { cp, _cli: cli, agent, key: trust::generate_key(), dir: tempfile::tempdir().unwrap() }
}

#[test]
fn the_agent_refuses_certificates_with_malformed_modes_and_runs_nothing() {
    let Node { cp, agent, key, dir, .. } = &node();
    let marker = dir.path().join("marker");
    for iso in ["bogus", "", "docker:", "docker:img;gpus=all", "nspawn:relative", "native;network=none", "NATIVE"] {
        let cert = cert_with_isolation(cp, key, &agent.node_id, iso);
        let result = exec_with(cp, agent, cert, key, &touch(&marker));
        assert!(matches!(result, Err(SshError::AuthRejected { .. })), "{iso:?}: {result:?}");
        assert!(!marker.exists(), "{iso:?} ran something");
    }
    assert!(agent.log().contains("isolation@openbox"), "the log should say why:\n{}", agent.log());

    // A well-formed certificate for the real thing still runs: the check is not blanket.
    let cert = cert_with_isolation(cp, key, &agent.node_id, "native");
    assert_eq!(exec_with(cp, agent, cert, key, &touch(&marker)).unwrap().0, 0);
    assert!(marker.exists());
}

#[test]
fn the_agent_refuses_modes_it_cannot_serve_now_and_runs_nothing() {
    let Node { cp, agent, key, dir, .. } = &node(); // its DOCKER_HOST points at no engine
    let marker = dir.path().join("marker");
    let cases = [
        (
            "docker:localhost/openbox-test:1",
            "cannot run docker isolation here: cannot reach the Docker engine at unix://",
        ),
        (
            "nspawn:/nonexistent/tree",
            "cannot run nspawn isolation here: nspawn directory /nonexistent/tree does not exist",
        ),
    ];
    for (iso, why) in cases {
        let cert = cert_with_isolation(cp, key, &agent.node_id, iso);
        let (code, stderr) = exec_with(cp, agent, cert, key, &touch(&marker)).unwrap();
        assert_eq!(code, 255, "{iso}: {stderr}");
        assert!(stderr.contains(why) && stderr.contains("nothing was run"), "{iso}: {stderr}");
        assert!(!marker.exists(), "{iso} ran something");
    }
}
