//! HTTP spoken by hand to the control plane: raw requests, server-sent event streams, and
//! a TCP balancer in front of several control planes.

use crate::*;

/// A raw HTTP POST of `body` to the control plane at `addr` (with `bearer` as the
/// credential, if any), and the whole answer as text: for requests no client would send.
pub fn post_raw(addr: &str, path: &str, bearer: Option<&str>, body: &str) -> String {
    let auth: Vec<String> = bearer.map(|b| format!("Authorization: Bearer {b}")).into_iter().collect();
    http_raw(addr, "POST", path, &auth, body)
}

/// One raw HTTP/1.1 request to `addr` with these extra header lines, and the whole answer
/// as text.
pub fn http_raw(addr: &str, method: &str, path: &str, headers: &[String], body: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the control plane");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    resp
}

/// A load balancer in front of several servers, as small as one can be: each connection
/// goes to the first backend that accepts it, so a stopped one is passed over.
pub struct TcpBalancer {
    pub addr: String,
}

impl TcpBalancer {
    pub fn start(backends: &[&str]) -> TcpBalancer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the balancer");
        let addr = listener.local_addr().unwrap().to_string();
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let backends = backends.clone();
                std::thread::spawn(move || {
                    let Some(server) = backends.iter().find_map(|b| std::net::TcpStream::connect(b).ok()) else {
                        return; // none up: the client sees the connection close
                    };
                    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_read, &mut s_write);
                        let _ = s_write.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut s_read, mut c_write) = (server, client);
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        TcpBalancer { addr }
    }
}

/// One server-sent event: its name, its id (if it has one) and its data.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// A `GET` server-sent event stream read over a plain connection, as a script would.
pub struct SseStream {
    reader: std::io::BufReader<std::net::TcpStream>,
    /// The last `id:` the stream sent, with or without data.
    last_id: Option<String>,
}

impl SseStream {
    /// Opens `path` on `addr` with a bearer token; panics unless the answer is 200.
    pub fn open(addr: &str, path: &str, token: &str) -> SseStream {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the control plane");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("write request");
        let mut reader = std::io::BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            if line.trim().is_empty() {
                break;
            }
        }
        SseStream { reader, last_id: None }
    }

    /// The last id the stream sent (an event's, or one sent alone).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The next event (keep-alive comments skipped), waiting at most `within`.
    pub fn next(&mut self, within: Duration) -> Option<SseEvent> {
        use std::io::BufRead;
        self.reader.get_ref().set_read_timeout(Some(within)).expect("read timeout");
        let (mut name, mut id, mut data) = (String::from("message"), None, Vec::new());
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("reading the event stream: {e}"),
            }
            let line = line.trim_end_matches(['\r', '\n']);
            // The body is chunked: a chunk's size line is neither a field nor blank.
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
                self.last_id.clone_from(&id);
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            } else if line.is_empty() && !data.is_empty() {
                return Some(SseEvent { name, id, data: data.join("\n") });
            }
        }
    }

    /// Reads events until one satisfies `want`, for at most `within` in all; that one.
    pub fn wait_for(&mut self, what: &str, within: Duration, mut want: impl FnMut(&SseEvent) -> bool) -> SseEvent {
        let end = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.next(left) {
                Some(e) if want(&e) => return e,
                Some(e) => seen.push(format!("{} {}", e.name, e.data)),
                None => break,
            }
        }
        panic!("no event: {what}; saw {seen:#?}");
    }
}
