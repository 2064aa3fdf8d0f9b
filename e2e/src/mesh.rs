//! The tailnet: a Headscale of the test's own, and strace's view of what meshed processes
//! send (nothing beyond loopback).

use crate::*;

/// What tailnet processes in tests need in their environment from the start: their
/// nodes would otherwise offer each other the machine's own interface addresses.
pub const MESH_TEST_ENV: (&str, &str) = ("TS_DEBUG_OMIT_LOCAL_ADDRS", "true");

/// A Headscale control server on 127.0.0.1 (plain http, its embedded DERP relay), in a
/// temporary directory of its own, stopped when dropped. The binary comes from
/// `scripts/test-headscale` (built once, cached).
pub struct Headscale {
    proc: Option<Proc>,
    bin: PathBuf,
    dir: TempDir,
    /// `http://127.0.0.1:PORT`: the control URL nodes use.
    pub url: String,
}

impl Headscale {
    pub fn start() -> Headscale {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-headscale");
        let out = Command::new(&script).output().expect("run scripts/test-headscale");
        assert!(
            out.status.success(),
            "scripts/test-headscale failed (the mesh tests need Go >= 1.25 and the Go module proxy):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, grpc, stun) = (free_port(), free_port(), free_port());
        let d = dir.path().display();
        let url = format!("http://127.0.0.1:{http}");
        let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/headscale.yaml"))
            .expect("scripts/headscale.yaml");
        let config = [
            ("{url}", url.clone()),
            ("{http}", http.to_string()),
            ("{grpc}", grpc.to_string()),
            ("{stun}", stun.to_string()),
            ("{d}", d.to_string()),
        ]
        .iter()
        .fold(template, |text, (key, value)| text.replace(key, value));
        std::fs::write(dir.path().join("config.yaml"), config).expect("write config");
        let mut hs = Headscale { proc: None, bin, dir, url };
        hs.spawn();
        hs
    }

    /// Freezes Headscale (SIGSTOP): connections to it hang, as to a server that is away.
    pub fn pause(&self) {
        signal(&self.proc, Signal::STOP);
    }

    /// Lets a paused Headscale run again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.proc, Signal::CONT);
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(self.dir.path().join("config.yaml")).arg("serve");
        self.proc = Some(Proc::spawn(cmd, self.dir.path().join("headscale.log")));
        let health = format!("{}/health", self.url);
        wait_until("Headscale to answer", || {
            Command::new("curl").args(["-fs", "-o", "/dev/null", &health]).status().is_ok_and(|s| s.success())
        });
    }

    /// Stops it and starts it again on the same address with the same state.
    pub fn restart(&mut self) {
        stop(&mut self.proc);
        self.spawn();
    }

    /// Runs a `headscale` command against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .args(args)
            .output()
            .expect("run headscale");
        assert!(out.status.success(), "headscale {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// A reusable pre-authorized key for `user` (created if need be), valid for an hour.
    pub fn auth_key(&self, user: &str) -> String {
        self.new_key(user)["key"].as_str().expect("key").to_owned()
    }

    /// A key for `user` that has been expired.
    pub fn expired_auth_key(&self, user: &str) -> String {
        let key = self.new_key(user);
        let id = key["id"].as_u64().expect("key id").to_string();
        self.cli(&["preauthkeys", "expire", "-i", &id, "--force"]);
        key["key"].as_str().expect("key").to_owned()
    }

    fn new_key(&self, user: &str) -> serde_json::Value {
        let users: serde_json::Value = serde_json::from_str(&self.cli(&["users", "list", "-o", "json"])).expect("json");
        let known = users.as_array().into_iter().flatten().find(|u| u["name"] == user).and_then(|u| u["id"].as_u64());
        let id = match known {
            Some(id) => id,
            None => {
                let made: serde_json::Value =
                    serde_json::from_str(&self.cli(&["users", "create", user, "-o", "json"])).expect("json");
                made["id"].as_u64().expect("user id")
            }
        };
        let key: serde_json::Value = serde_json::from_str(&self.cli(&[
            "preauthkeys",
            "create",
            "-u",
            &id.to_string(),
            "--reusable",
            "-e",
            "1h",
            "-o",
            "json",
        ]))
        .expect("json");
        key
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("headscale.log")).unwrap_or_default()
    }
}

/// What `strace` traces in meshed processes: every way they could send a packet.
pub const STRACE_NETWORK: [&str; 5] = ["-f", "-qq", "-yy", "-e", "trace=connect,sendto,sendmsg,sendmmsg,write,writev"];

/// Lines of an `strace -yy` log that send to (or open TCP to) an address outside
/// loopback. Only addresses strace itself prints are read — socket annotations such as
/// `<UDP:[a:p->b:q]>` and `inet_addr("…")` / `inet_pton(AF_INET6, "…")` — never the bytes
/// written. A UDP `connect` sends nothing (Go uses one to learn the default route); a
/// later write on that socket carries its peer in the annotation and is caught.
pub fn beyond_loopback(trace: &str) -> Vec<String> {
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
