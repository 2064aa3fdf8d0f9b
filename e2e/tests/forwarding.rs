//! Port forwarding, as `ssh -L` and `ssh -R`: through openboxd's pooled connection to the
//! node, bytes intact both ways, for as long as the call runs; refused where the access
//! policy does not let the user run natively on the node.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};

use openbox_e2e::{Agent, Cli, ControlPlane, free_port, wait_until};
use sha2::Digest as _;

fn fleet() -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    (cp, admin, agent)
}

/// `len` bytes that are not all alike.
fn data(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect()
}

fn sha(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A service on this machine (which is also the node): each connection's request (up to
/// a blank line) is answered with `reply` — or, when `reply` is empty, everything it
/// sent is answered as a line `LEN SHA256` after it ends its side.
fn service(reply: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let reply = reply.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                if reply.is_empty() {
                    let _ = conn.read_to_end(&mut got);
                    let _ = conn.write_all(format!("{} {}\n", got.len(), sha(&got)).as_bytes());
                } else {
                    // The request first: a socket closed with input unread resets the
                    // connection, which can cut the reply short.
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    let _ = conn.write_all(&reply);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    let _ = reader.read_to_end(&mut got);
                }
            });
        }
    });
    port
}

/// `openbox ARGS` holding its forwards, once it has said so; what it says later arrives
/// on `said`.
struct Held {
    child: Child,
    said: std::sync::mpsc::Receiver<String>,
}

impl Held {
    fn start(cli: &Cli, args: &[&str]) -> Held {
        let mut child = cli.cmd().args(args).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("Ctrl-C to stop") {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "openbox ended before holding its forwards: {said}");
            said.push_str(&line);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Held { child, said: rx }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_local_forward_carries_bytes_both_ways_and_ends_with_the_call() {
    let (_cp, admin, agent) = fleet();
    let counter = service(Vec::new());
    let local = free_port();
    let spec = format!("{local}:127.0.0.1:{counter}");
    let held = Held::start(&admin, &["-n", &agent.name, "-L", &spec]);

    // 24 MiB up (more than the SSH window), the count and hash back.
    let up = data(24 << 20);
    let mut conn = TcpStream::connect(("127.0.0.1", local)).unwrap();
    conn.write_all(&up).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("{} {}\n", up.len(), sha(&up)));

    drop(held);
    wait_until("the forward's listener to close with the call", || TcpStream::connect(("127.0.0.1", local)).is_err());
}

#[test]
fn a_local_forward_reaches_an_http_server_on_the_node() {
    let (_cp, admin, agent) = fleet();
    let body = data(3 << 20);
    let mut page = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    page.extend_from_slice(&body);
    let web = service(page);
    let local = free_port();
    let _held = Held::start(&admin, &["-n", &agent.name, "-L", &format!("{local}:localhost:{web}")]);
    let mut conn = TcpStream::connect(("127.0.0.1", local)).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response") + 4;
    assert!(got.starts_with(b"HTTP/1.0 200 OK"));
    assert_eq!(sha(&got[split..]), sha(&body));
}

#[test]
fn a_remote_forward_lets_the_command_on_the_node_reach_a_server_here() {
    let (_cp, admin, agent) = fleet();
    let body = data(5 << 20);
    let mut page = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    page.extend_from_slice(&body);
    let here = service(page);
    let there = free_port();
    let spec = format!("{there}:127.0.0.1:{here}");
    let cmd = format!("curl -sf http://127.0.0.1:{there}/ | sha256sum");
    let out = admin.run(&["-n", &agent.name, "-R", &spec, &cmd]).ok();
    assert_eq!(out.stdout.split_whitespace().next(), Some(sha(&body).as_str()), "{out:?}");
    // And what it sends reaches a service here whole (20 MB, more than the SSH window).
    let counter = service(Vec::new());
    let spec = format!("{there}:127.0.0.1:{counter}");
    let upload = format!(
        "python3 -c 'import hashlib, os, socket\n\
data = os.urandom(20000000)\n\
s = socket.create_connection((\"127.0.0.1\", {there}))\n\
s.sendall(data); s.shutdown(socket.SHUT_WR)\n\
print(s.makefile().read().strip(), len(data), hashlib.sha256(data).hexdigest())'"
    );
    let out = admin.run(&["-n", &agent.name, "-R", &spec, &upload]).ok();
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{out:?}");
    assert_eq!((words[0], words[1]), (words[2], words[3]), "what arrived is what was sent: {out:?}");
}

#[test]
fn forwards_are_refused_where_the_user_may_not_run_natively() {
    let (cp, admin, agent) = fleet();
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name, "--isolation", "docker"]).ok();
    let spec = format!("{}:127.0.0.1:9", free_port());
    let out = bob.run(&["-n", &agent.name, "-L", &spec, "true"]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("native"), "{out:?}");
    admin.run(&["-n", &agent.name, "--docker", "img", "-L", &spec, "true"]).fails_with(2, "reaches the node itself");
    admin.run(&["-n", &agent.name, "-R", "0.0.0.0:8080:localhost:80", "true"]).fails_with(2, "loopback only");
}

#[test]
fn a_local_port_in_use_is_a_clear_error() {
    let (_cp, admin, agent) = fleet();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("{}:127.0.0.1:9", taken.local_addr().unwrap().port());
    admin.run(&["-n", &agent.name, "-L", &spec, "true"]).fails_with(255, "cannot listen on 127.0.0.1");
}

#[test]
fn a_connection_the_node_cannot_make_is_told_and_the_forward_holds() {
    let (_cp, admin, agent) = fleet();
    let closed = free_port(); // nothing listens there
    let local = free_port();
    let held = Held::start(&admin, &["-n", &agent.name, "-L", &format!("{local}:127.0.0.1:{closed}")]);
    let mut conn = TcpStream::connect(("127.0.0.1", local)).unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    assert!(got.is_empty());
    let told = held.said.recv_timeout(openbox_e2e::READY_TIMEOUT).expect("a notice");
    assert!(told.contains(&format!("-L {local}")) && told.contains(&format!("127.0.0.1:{closed}")), "{told}");
    // The forward still serves.
    assert!(TcpStream::connect(("127.0.0.1", local)).is_ok());
}

#[test]
fn a_remote_forward_on_any_port_says_which_one() {
    let (_cp, admin, agent) = fleet();
    let here = service(b"hello\n".to_vec());
    let out = admin.run(&["-n", &agent.name, "-R", &format!("0:127.0.0.1:{here}"), "true"]).ok();
    let port: u16 = out
        .stderr
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port told: {out:?}"));
    assert_ne!(port, 0);
}
