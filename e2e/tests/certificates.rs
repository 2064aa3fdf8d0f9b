//! Mutual certificate checks through the real agent, and OpenSSH interoperability.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use net::ssh::{NodeTarget, SshError, dial};
use openbox_e2e::{Agent, Cli, ControlPlane, now, runtime};
use proto::Isolation;
use trust::{Ca, Certificate, PrivateKey, UserCertSpec};

struct Node {
    cp: ControlPlane,
    _admin: Cli,
    agent: Agent,
}

fn node() -> Node {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    Node { cp, _admin: admin, agent }
}

fn user_cert(ca: &Ca, key: &PrivateKey, user: &str, node_id: &str, after: u64, before: u64) -> Certificate {
    ca.sign_user(&UserCertSpec {
        user,
        incarnation: "test",
        node_id,
        request_id: "test",
        isolation: &Isolation::Native,
        session: None,
        admin: false,
        public_key: key.public_key(),
        valid_after: after,
        valid_before: before,
    })
    .unwrap()
}

impl Node {
    fn target(&self) -> NodeTarget {
        NodeTarget {
            node_id: self.agent.node_id.clone(),
            name: self.agent.name.clone(),
            addr: self.agent.addr.clone(),
            via: net::transport::Transport::Tcp,
            ca: self.cp.ca().public_key().clone(),
        }
    }

    /// Tries to run `echo ok` as `user` with `cert`; returns the output or the error.
    fn try_exec(&self, user: &str, key: &PrivateKey, cert: Certificate) -> Result<String, SshError> {
        let target = self.target();
        let key = Arc::new(key.clone());
        runtime().block_on(async move {
            let mut conn = dial(&target).await?;
            conn.authenticate(user, key, cert).await?;
            let mut output = net::ssh::Writers { stdout: Vec::new(), stderr: Vec::new() };
            conn.exec("echo ok", net::ssh::NoInput, &mut output, std::future::pending()).await?;
            Ok(String::from_utf8(output.stdout).unwrap())
        })
    }
}

#[track_caller]
fn assert_refused(node: &Node, result: Result<String, SshError>, reason: &str) {
    assert!(matches!(result, Err(SshError::AuthRejected { .. })), "expected refusal, got {result:?}");
    assert!(node.agent.log().contains(reason), "agent log should give the reason {reason:?}:\n{}", node.agent.log());
}

#[test]
fn the_agent_accepts_a_valid_user_certificate() {
    let n = node();
    let key = trust::generate_key();
    let cert = user_cert(&n.cp.ca(), &key, "admin", &n.agent.node_id, now() - 30, now() + 300);
    assert_eq!(n.try_exec("admin", &key, cert).unwrap(), "ok\n");
}

#[test]
fn the_agent_refuses_expired_and_not_yet_valid_certificates() {
    let n = node();
    let key = trust::generate_key();
    let expired = user_cert(&n.cp.ca(), &key, "admin", &n.agent.node_id, now() - 600, now() - 300);
    // russh refuses these before the handler sees them; openbox's own check is the second lock.
    assert_refused(&n, n.try_exec("admin", &key, expired), "expired or not yet valid");
    let future = user_cert(&n.cp.ca(), &key, "admin", &n.agent.node_id, now() + 300, now() + 600);
    assert_refused(&n, n.try_exec("admin", &key, future), "expired or not yet valid");
}

#[test]
fn a_connection_whose_certificate_expired_while_open_runs_nothing_more() {
    // russh checks a certificate's validity only when it authenticates; a pooled
    // connection outlives that moment, so openbox's own check must refuse later commands.
    let n = node();
    let key = Arc::new(trust::generate_key());
    let valid_before = now() + 3;
    let cert = user_cert(&n.cp.ca(), &key, "admin", &n.agent.node_id, now() - 30, valid_before);
    let target = n.target();
    runtime().block_on(async move {
        let mut conn = dial(&target).await.unwrap();
        conn.authenticate("admin", key, cert).await.unwrap();
        let mut first = net::ssh::Writers { stdout: Vec::new(), stderr: Vec::new() };
        let status = conn.exec("echo ok", net::ssh::NoInput, &mut first, std::future::pending()).await.unwrap();
        assert_eq!((status.exit_code(), first.stdout.as_slice()), (0, b"ok\n".as_slice()));

        // The same open connection, once the certificate's validity has ended.
        while now() < valid_before {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut later = net::ssh::Writers { stdout: Vec::new(), stderr: Vec::new() };
        let status = conn.exec("echo again", net::ssh::NoInput, &mut later, std::future::pending()).await.unwrap();
        let stderr = String::from_utf8_lossy(&later.stderr);
        assert_eq!(status.exit_code(), 255, "{stderr}");
        assert!(later.stdout.is_empty(), "nothing ran: {:?}", String::from_utf8_lossy(&later.stdout));
        assert!(stderr.contains("certificate for this connection has expired"), "{stderr}");
    });
}

#[test]
fn the_agent_refuses_certificates_from_another_ca() {
    let n = node();
    let key = trust::generate_key();
    let foreign = user_cert(&Ca::generate(), &key, "admin", &n.agent.node_id, now() - 30, now() + 300);
    assert_refused(&n, n.try_exec("admin", &key, foreign), "not issued by this fleet's certificate authority");
}

#[test]
fn an_unverified_certificate_cannot_forge_a_line_in_the_agent_log() {
    let n = node();
    let key = trust::generate_key();
    let forged_line = "2026-01-01T00:00:00.000000Z  INFO openbox_agent::server: accepted user certificate";
    let foreign = Ca::generate()
        .sign_user(&UserCertSpec {
            incarnation: "test",
            user: "admin",
            node_id: &n.agent.node_id,
            request_id: &format!("x\n{forged_line}\u{1b}[2J"),
            isolation: &Isolation::Native,
            session: None,
            admin: false,
            public_key: key.public_key(),
            valid_after: now() - 30,
            valid_before: now() + 300,
        })
        .unwrap();
    assert_refused(&n, n.try_exec(&format!("admin\n{forged_line}"), &key, foreign), "refused user certificate");
    let log = n.agent.log();
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "a forged line:\n{log}");
    assert!(!log.contains('\u{1b}'), "a terminal sequence reached the log:\n{log}");
    assert!(log.contains("\\n2026-01-01"), "the text is there, escaped:\n{log}");
}

#[test]
fn the_agent_refuses_a_principal_mismatch_and_a_certificate_for_another_node() {
    let n = node();
    let key = trust::generate_key();
    let for_bob = user_cert(&n.cp.ca(), &key, "bob", &n.agent.node_id, now() - 30, now() + 300);
    assert_refused(&n, n.try_exec("admin", &key, for_bob), "is for [\"bob\"], not \"admin\"");
    let elsewhere = user_cert(&n.cp.ca(), &key, "admin", "another-node", now() - 30, now() + 300);
    assert_refused(&n, n.try_exec("admin", &key, elsewhere), "issued for node another-node");
}

#[test]
fn the_client_refuses_a_host_certificate_from_another_ca_or_for_another_node() {
    let n = node();
    let mut wrong_ca = n.target();
    wrong_ca.ca = Ca::generate().public_key().clone();
    let err = runtime().block_on(dial(&wrong_ca)).err().expect("must refuse");
    assert!(err.to_string().contains("not issued by this fleet's certificate authority"), "{err}");
    let mut wrong_node = n.target();
    wrong_node.node_id = "someone-else".into();
    let err = runtime().block_on(dial(&wrong_node)).err().expect("must refuse");
    assert!(err.to_string().contains("not \"someone-else\""), "{err}");
}

#[test]
fn the_client_refuses_an_expired_host_certificate_both_ends_say_so_and_renewal_repairs_it() {
    let mut n = node();
    let ca = n.cp.ca();
    // Give the node an expired host certificate while the control plane is down, so that
    // no heartbeat can renew it before the client looks.
    let host_key = PrivateKey::from_openssh(std::fs::read_to_string(n.agent.host_key_file()).unwrap()).unwrap();
    let expired = ca.sign_host(host_key.public_key(), &n.agent.node_id, now() - 600, now() - 60).unwrap();
    n.cp.stop();
    n.agent.stop();
    let path = n.agent.identity_file();
    let mut id: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    id["host_cert"] = expired.to_openssh().unwrap().into();
    std::fs::write(&path, id.to_string()).unwrap();
    n.agent.restart();
    let err = runtime().block_on(dial(&n.target())).err().expect("must refuse").to_string();
    assert!(
        err.contains("its host certificate expired ")
            && err.contains("s ago: the node renews it")
            && err.contains("openbox nodes"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // The node says so too, in one line.
    let said = |text: &str| n.agent.log().lines().filter(|l| l.contains(text)).count();
    openbox_e2e::wait_until("the agent to say its certificate lapsed", || {
        said("this node's host certificate expired") == 1
    });

    // With the control plane back, the next heartbeat brings a fresh certificate.
    n.cp.restart();
    openbox_e2e::wait_until("the host certificate to be renewed", || runtime().block_on(dial(&n.target())).is_ok());
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let renewed = trust::parse_certificate(saved["host_cert"].as_str().unwrap()).unwrap();
    assert!(renewed.valid_before() > now() + 3600, "the renewed certificate is saved for the next start");
    assert_eq!(said("host certificate renewed after it had expired"), 1, "{}", n.agent.log());
    assert_eq!(said("this node's host certificate expired"), 1, "said once, not at every beat");

    // The node list shows when each node's certificate ends: the renewed one's.
    let listed = n._admin.run(&["nodes", "--json"]).ok().json();
    let expires = listed[0]["host_cert_expires"].as_u64().expect("an expiry");
    assert!(expires.abs_diff(renewed.valid_before()) <= 60, "{expires} against {}", renewed.valid_before());
    let table = n._admin.run(&["nodes"]).ok().stdout;
    assert!(table.lines().next().unwrap().contains("HOST CERT"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains(" in 6d ") || row.contains(" in 7d "), "{table}");
}

// ---- OpenSSH interoperability ----

struct SshFiles {
    dir: tempfile::TempDir,
}

impl SshFiles {
    /// A key (and optionally a certificate for it) and a known_hosts file that trusts `ca`
    /// for host certificates naming the node id.
    fn new(key: &PrivateKey, cert: Option<&Certificate>, ca: &Ca, node_id: &str) -> SshFiles {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        std::fs::write(&id, key.to_openssh(trust::ssh_key_line_ending()).unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(c) = cert {
            std::fs::write(dir.path().join("id-cert.pub"), c.to_openssh().unwrap()).unwrap();
        }
        std::fs::write(
            dir.path().join("known_hosts"),
            format!("@cert-authority {node_id} {}\n", ca.public_key_openssh()),
        )
        .unwrap();
        SshFiles { dir }
    }

    /// The options OpenSSH's clients need to log in to `agent` with these files.
    fn options(&self, agent: &Agent) -> Vec<String> {
        let p = |f: &str| self.dir.path().join(f).to_str().unwrap().to_owned();
        let mut o: Vec<String> = ["-F", "/dev/null", "-i", &p("id"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            .map(str::to_owned)
            .to_vec();
        for opt in [
            format!("UserKnownHostsFile={}", p("known_hosts")),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            format!("HostKeyAlias={}", agent.node_id),
        ] {
            o.extend(["-o".to_owned(), opt]);
        }
        if std::path::Path::new(&p("id-cert.pub")).exists() {
            o.extend(["-o".to_owned(), format!("CertificateFile={}", p("id-cert.pub"))]);
        }
        o
    }

    /// `sftp -b -` with `batch` as its commands.
    fn sftp(&self, agent: &Agent, user: &str, batch: &str) -> std::process::Output {
        let (host, port) = agent.addr.rsplit_once(':').unwrap();
        let mut child = Command::new("sftp")
            .args(self.options(agent))
            .args(["-P", port, "-b", "-", &format!("{user}@{host}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the OpenSSH sftp client must be installed");
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(batch.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `scp -s -p SRC DST` (either may be `USER@HOST:PATH` for `agent`).
    fn scp(&self, agent: &Agent, src: &str, dst: &str) -> std::process::Output {
        let (_, port) = agent.addr.rsplit_once(':').unwrap();
        Command::new("scp")
            .args(["-s", "-p"])
            .args(self.options(agent))
            .args(["-P", port, src, dst])
            .output()
            .expect("the OpenSSH scp client must be installed")
    }

    fn ssh(&self, agent: &Agent, user: &str, command: &str) -> std::process::Output {
        let (host, port) = agent.addr.rsplit_once(':').unwrap();
        Command::new("ssh")
            .args(self.options(agent))
            .args(["-p", port, &format!("{user}@{host}"), command])
            .output()
            .expect("the OpenSSH client (ssh) must be installed")
    }
}

#[test]
fn a_stock_openssh_client_with_an_openbox_certificate_runs_a_command() {
    let n = node();
    let key = trust::generate_key();
    let ca = n.cp.ca();
    let cert = user_cert(&ca, &key, "admin", &n.agent.node_id, now() - 30, now() + 300);
    let files = SshFiles::new(&key, Some(&cert), &ca, &n.agent.node_id);
    let out = files.ssh(&n.agent, "admin", "echo interop; echo to-err >&2; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "interop\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-err"));
}

#[test]
fn a_stock_sftp_client_with_an_openbox_certificate_puts_and_gets_files() {
    let n = node();
    let key = trust::generate_key();
    let ca = n.cp.ca();
    let cert = user_cert(&ca, &key, "admin", &n.agent.node_id, now() - 30, now() + 300);
    let files = SshFiles::new(&key, Some(&cert), &ca, &n.agent.node_id);
    let work = tempfile::tempdir().unwrap();
    let there = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    std::fs::write(work.path().join("up.bin"), &data).unwrap();
    std::fs::set_permissions(work.path().join("up.bin"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let remote = there.path().display();
    let batch = format!(
        "mkdir {remote}/sub\nput -p {w}/up.bin {remote}/sub/up.bin\nls -l {remote}/sub\nget -p {remote}/sub/up.bin {w}/down.bin\nrename {remote}/sub/up.bin {remote}/sub/moved.bin\n",
        w = work.path().display()
    );
    let out = files.sftp(&n.agent, "admin", &batch);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(work.path().join("down.bin")).unwrap(), data);
    assert_eq!(std::fs::read(there.path().join("sub/moved.bin")).unwrap(), data);
    let mode = std::fs::metadata(there.path().join("sub/moved.bin")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "put -p keeps the mode");
    // scp speaks SFTP to the same server (OpenSSH >= 9; -s says so on any version).
    let host = n.agent.addr.rsplit_once(':').unwrap().0;
    let up = work.path().join("up.bin");
    let scp = files.scp(&n.agent, up.to_str().unwrap(), &format!("admin@{host}:{remote}/by-scp.bin"));
    assert!(scp.status.success(), "{}", String::from_utf8_lossy(&scp.stderr));
    assert_eq!(std::fs::read(there.path().join("by-scp.bin")).unwrap(), data);
    // A missing file is an error the client reports, and the batch stops.
    let out = files.sftp(&n.agent, "admin", &format!("get {remote}/nope {}/x\n", work.path().display()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_stock_openssh_client_with_a_bare_key_is_refused() {
    let n = node();
    let key = trust::generate_key();
    let files = SshFiles::new(&key, None, &n.cp.ca(), &n.agent.node_id);
    let out = files.ssh(&n.agent, "admin", "echo should-not-run");
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.agent.log().contains("refused a bare key"));
}

#[test]
fn a_stock_openssh_client_checks_the_agents_host_certificate() {
    let n = node();
    let key = trust::generate_key();
    let cert = user_cert(&n.cp.ca(), &key, "admin", &n.agent.node_id, now() - 30, now() + 300);
    // known_hosts trusts some other CA: OpenSSH must refuse the host.
    let files = SshFiles::new(&key, Some(&cert), &Ca::generate(), &n.agent.node_id);
    let out = files.ssh(&n.agent, "admin", "echo should-not-run");
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
