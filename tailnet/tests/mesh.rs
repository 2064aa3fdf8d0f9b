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
        .args(["-f", "-qq", "-yy", "-e", "trace=connect,sendto,sendmsg,sendmmsg,write,writev", "-o"])
        .arg(trace.path())
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("TS_DEBUG_OMIT_LOCAL_ADDRS", "true")
        .envs(env.iter().copied())
        .status()
        .expect("strace is needed for this test (scripts/setup-test-env installs it)");
    assert!(status.success(), "the traced test failed");
    let text = std::fs::read_to_string(trace.path()).unwrap();
    let outside = beyond_loopback(&text);
    assert!(outside.is_empty(), "packets addressed beyond 127.0.0.0/8:\n{}", outside.join("\n"));
    assert!(text.contains("127.0.0.1"), "the trace must show the traffic that did happen");
}

/// Lines of an `strace -yy` log that send to (or open TCP to) an address outside
/// loopback. Only addresses strace itself prints are read — socket annotations such as
/// `<UDP:[a:p->b:q]>` and `inet_addr("…")` / `inet_pton(AF_INET6, "…")` — never the bytes
/// written. A UDP `connect` sends nothing (Go uses one to learn the default route); a
/// later write on that socket carries its peer in the annotation and is caught.
fn beyond_loopback(trace: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in trace.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        let sends = call.starts_with("send") || call.starts_with("write");
        let tcp_connect = call.starts_with("connect(") && line.contains("<TCP");
        if (sends || tcp_connect) && addresses(line).iter().any(|ip| !is_loopback(ip)) {
            bad.push(line.to_owned());
        }
    }
    bad
}

fn is_loopback(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The socket addresses strace names in one line.
fn addresses(line: &str) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    // Annotations: <UDP:[10.0.0.2:5000->8.8.8.8:53]>, <TCPv6:[[::1]:1->[::1]:2]>.
    for start in ["<TCP", "<UDP"] {
        for part in line.split(start).skip(1) {
            let Some(inner) = part.split_once(":[").and_then(|(_, rest)| rest.split_once("]>")).map(|(i, _)| i) else {
                continue;
            };
            for end in inner.split("->") {
                let host = match end.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(""),
                    None => end.rsplit_once(':').map_or(end, |(h, _)| h),
                };
                if let Ok(ip) = host.parse() {
                    found.push(ip);
                }
            }
        }
    }
    // Explicit destinations: inet_addr("8.8.8.8"), inet_pton(AF_INET6, "2001:db8::1", …).
    for marker in ["inet_addr(\"", "inet_pton(AF_INET6, \""] {
        for part in line.split(marker).skip(1) {
            if let Some(ip) = part.split('"').next().and_then(|a| a.parse().ok()) {
                found.push(ip);
            }
        }
    }
    found
}

#[test]
fn the_trace_check_sees_sends_beyond_loopback_and_ignores_written_bytes() {
    let lines = [
        r#"12 sendto(7<UDP:[0.0.0.0:41641]>, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(3478), sin_addr=inet_addr("192.0.2.9")}, 16) = 1"#,
        r#"12 write(9<UDP:[10.0.0.2:5000->8.8.8.8:53]>, "q", 1) = 1"#,
        r#"12 connect(8<TCP:[10.0.0.2:33000]>, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("198.51.100.7")}, 16) = -1"#,
        r#"12 write(6<TCPv6:[[::1]:40000->[2001:db8::5]:443]>, "x", 1) = 1"#,
        // A DNS query for one of Tailscale's own hosts, as a build with captive-portal
        // detection sent it.
        r#"18360 sendmmsg(31<UDP:[192.0.2.2:56613->10.255.255.53:53]>, [{msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="\31\271\1\0\0\1\0\0\0\0\0\0\5login\ttailscale\3com"..., iov_len=37}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=37}], 2, MSG_NOSIGNAL) = 2"#,
    ];
    for l in lines {
        assert_eq!(beyond_loopback(l).len(), 1, "{l}");
    }
    let fine = [
        r#"12 write(5<pipe:[99]>, "peer 100.64.0.2 at 192.0.2.9", 28) = 28"#,
        r#"12 connect(7<UDP:[0.0.0.0:0]>, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.1")}, 16) = 0"#,
        r#"12 sendto(7<UDP:[127.0.0.1:41641]>, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(3478), sin_addr=inet_addr("127.0.0.1")}, 16) = 1"#,
        r#"12 write(6<TCP:[127.0.0.1:40000->127.0.0.1:8080]>, "GET /", 5) = 5"#,
        r#"12 write(6<TCPv6:[[::1]:40000->[::1]:8080]>, "GET /", 5) = 5"#,
    ];
    for l in fine {
        assert!(beyond_loopback(l).is_empty(), "{l}");
    }
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
