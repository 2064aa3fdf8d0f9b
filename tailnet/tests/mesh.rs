//! Tailnet nodes inside one process, against a real Headscale on 127.0.0.1: they join,
//! listen and dial each other; bad keys and an unreachable control server fail with one
//! clear line within their deadline. The nodes run in a child of this test under strace,
//! which must see no packet addressed beyond 127.0.0.0/8.

use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use openbox_e2e::Headscale;
use openbox_tailnet::{AuthKey, Config, Node, TailnetError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD: &str = "OPENBOX_TAILNET_TEST_CHILD";
const UP: Duration = Duration::from_secs(60);

fn config(dir: &std::path::Path, name: &str, url: &str, key: Option<&str>) -> Config {
    Config {
        dir: dir.join(name),
        hostname: name.into(),
        control_url: url.into(),
        auth_key: key.map(AuthKey::new),
        ephemeral: false,
    }
}

/// Runs `test` in a child process of this test binary, under strace, with the knobs Go
/// reads only at start; then checks what the child sent.
fn in_traced_child(test: &str, env: &[(&str, &str)]) {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let trace = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("strace")
        .args(openbox_e2e::STRACE_NETWORK)
        .arg("-o")
        .arg(trace.path())
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("TS_DEBUG_OMIT_LOCAL_ADDRS", "true")
        // What tailnet::ensure_environment would give a binary; a test process sets it here.
        .env("TS_NO_LOGS_NO_SUPPORT", "true")
        .env("TS_DEBUG_USE_DERP_HTTP", "1")
        .envs(env.iter().copied())
        .status()
        .expect("strace is needed for this test (scripts/setup-test-env installs it)");
    assert!(status.success(), "the traced test failed");
    let text = std::fs::read_to_string(trace.path()).unwrap();
    let outside = openbox_e2e::beyond_loopback(&text);
    assert!(outside.is_empty(), "packets addressed beyond 127.0.0.0/8:\n{}", outside.join("\n"));
    assert!(text.contains("127.0.0.1"), "the trace must show the traffic that did happen");
}

#[test]
fn two_nodes_join_headscale_and_talk_over_the_tailnet() {
    if std::env::var_os(CHILD).is_none() {
        let hs = Headscale::start();
        let key = hs.auth_key("mesh");
        in_traced_child(
            "two_nodes_join_headscale_and_talk_over_the_tailnet",
            &[("OPENBOX_TEST_HEADSCALE", &hs.url), ("OPENBOX_TEST_AUTHKEY", &key)],
        );
        return;
    }
    let url = std::env::var("OPENBOX_TEST_HEADSCALE").unwrap();
    let key = std::env::var("OPENBOX_TEST_AUTHKEY").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = Node::new(&config(dir.path(), "node-a", &url, Some(&key))).unwrap();
        let b = Node::new(&config(dir.path(), "node-b", &url, Some(&key))).unwrap();
        let (ra, rb) = tokio::join!(a.up(UP), b.up(UP));
        ra.unwrap();
        rb.unwrap();
        let a_ip = a.ips().unwrap()[0];
        let b_ip = b.ips().unwrap()[0];
        assert!(a_ip.to_string().starts_with("100.64."), "{a_ip}");

        let listener = a.listen(":7000").unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, from) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).await.unwrap();
            conn.write_all(&got).await.unwrap();
            conn.shutdown().await.unwrap();
            (listener, from)
        });
        // Only tailnet addresses are dialled over the tailnet, never the host network's.
        let err = b.dial("127.0.0.1:7000").await.expect_err("not a tailnet address");
        assert!(err.to_string().contains("not a tailnet address"), "{err}");

        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let mut conn = b.dial(&format!("{a_ip}:7000")).await.unwrap();
        conn.write_all(&data).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert!(back == data, "echoed {} of {} bytes", back.len(), data.len());
        let (listener, from) = server.await.unwrap();
        assert!(from.starts_with(&b_ip.to_string()), "accepted from {from}, expected {b_ip}");

        // Connections opened and closed leave nothing open behind them, on either side.
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let before = open_fds();
        let server = tokio::spawn(async move {
            for _ in 0..20 {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                conn.write_all(&got).await.unwrap();
            }
        });
        for i in 0..20u8 {
            let mut conn = b.dial(&format!("{a_ip}:7000")).await.unwrap();
            conn.write_all(&[i; 1000]).await.unwrap();
            conn.shutdown().await.unwrap();
            let mut back = Vec::new();
            conn.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, vec![i; 1000]);
        }
        server.await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while open_fds() > before + 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} descriptors left open of 20 connections",
                open_fds() - before
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = std::io::stdout().flush();
}

#[test]
fn a_bad_key_or_an_unreachable_control_server_fails_within_the_deadline() {
    if std::env::var_os(CHILD).is_none() {
        let hs = Headscale::start();
        in_traced_child(
            "a_bad_key_or_an_unreachable_control_server_fails_within_the_deadline",
            &[("OPENBOX_TEST_HEADSCALE", &hs.url)],
        );
        return;
    }
    let url = std::env::var("OPENBOX_TEST_HEADSCALE").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bad = Node::new(&config(dir.path(), "bad-key", &url, Some("hskey-auth-notarealkey"))).unwrap();
        let err = bad.up(Duration::from_secs(20)).await.expect_err("a made-up key must be refused");
        eprintln!("bad key: {err}");
        assert!(matches!(err, TailnetError::AuthKeyInvalid(_)), "{err}");

        // Nothing listens on port 1: no hang past the deadline.
        let nowhere = Node::new(&config(dir.path(), "nowhere", "http://127.0.0.1:1", Some("k"))).unwrap();
        let started = std::time::Instant::now();
        let err = nowhere.up(Duration::from_secs(5)).await.expect_err("nothing answers there");
        assert!(started.elapsed() < Duration::from_secs(8), "{err}");
        eprintln!("unreachable: {err}");
    });
}
