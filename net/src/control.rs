//! A JSON-over-HTTP client for the control plane's `/v1` API (plain `http://` URLs).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use trust::Secret;

use crate::transport::{Stream, Transport};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the control plane at {url}: {why}")]
    Unreachable { url: String, why: String },
    /// The control plane answered with an error; `message` is meant for the user.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the control plane: {0}")]
    Protocol(String),
    #[error("invalid control-plane URL {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
}

impl ControlError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ControlError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one control plane, optionally authenticated with a bearer token.
#[derive(Clone)]
pub struct Client {
    url: String,
    authority: String,
    token: Option<Secret>,
    /// How to reach a control plane at a tailnet address, when this process can.
    tailnet: Option<Arc<dyn TailnetAccess>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.url).field("tailnet", &self.tailnet.is_some()).finish()
    }
}

/// The tailnet node a process reaches tailnet addresses through (it may still be joining).
pub trait TailnetAccess: Send + Sync {
    fn node(&self) -> Pin<Box<dyn Future<Output = Result<Arc<tailnet::Node>, String>> + Send + '_>>;
}

impl TailnetAccess for Arc<tailnet::Node> {
    fn node(&self) -> Pin<Box<dyn Future<Output = Result<Arc<tailnet::Node>, String>> + Send + '_>> {
        let node = self.clone();
        Box::pin(async move { Ok(node) })
    }
}

/// Whether `authority` (`HOST:PORT`) is an address on a tailnet (Tailscale's and Headscale's
/// ranges: 100.64.0.0/10, fd7a:115c:a1e0::/48), which only a tailnet node can reach.
pub fn on_tailnet(authority: &str) -> bool {
    match authority.parse::<std::net::SocketAddr>().map(|a| a.ip()) {
        Ok(std::net::IpAddr::V4(ip)) => ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64,
        Ok(std::net::IpAddr::V6(ip)) => ip.segments()[..3] == [0xfd7a, 0x115c, 0xa1e0],
        Err(_) => false,
    }
}

const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer (or event) read from a control plane: a registry of 50,000 nodes
/// fits many times over; a misbehaving server cannot make a client hold more.
pub const MAX_BODY: usize = 64 << 20;

impl Client {
    pub fn new(url: &str, token: Option<Secret>) -> Result<Client, ControlError> {
        let url = url.trim_end_matches('/').to_owned();
        if url.starts_with("https://") {
            return Err(ControlError::Unreachable {
                url,
                why: "https is not supported by this build; serve the control plane over http on a trusted network or the tailnet".into(),
            });
        }
        let authority = url
            .strip_prefix("http://")
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| ControlError::BadUrl(url.clone()))?
            .to_owned();
        Ok(Client { url, authority, token, tailnet: None })
    }

    /// Reaches a control plane at a tailnet address through `tailnet` (others over TCP).
    pub fn with_tailnet(mut self, tailnet: Arc<dyn TailnetAccess>) -> Client {
        self.tailnet = Some(tailnet);
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ControlError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ControlError> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// A DELETE; `T` is what the answer holds (`()` for none).
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// Opens a server-sent event stream (e.g. `/v1/events`).
    pub async fn events(&self, path: &str) -> Result<EventStream, ControlError> {
        let (sender, resp) = self.send(Method::GET, path, Vec::new(), "text/event-stream").await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = self.body(resp).await?;
            return Err(api_error(status, &body));
        }
        Ok(EventStream { body: resp.into_body(), buf: Vec::new(), scanned: 0, _sender: sender })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ControlError> {
        match tokio::time::timeout(TIMEOUT, self.call_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::Unreachable { url: self.url.clone(), why: "no answer within 15s".into() }),
        }
    }

    async fn call_inner<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ControlError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ControlError::Protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let (_sender, resp) = self.send(method, path, bytes, "application/json").await?;
        let status = resp.status();
        let body = self.body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        let body: &[u8] = if body.is_empty() || status == StatusCode::NO_CONTENT { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// Opens a connection and sends one request; the connection lives as long as the
    /// returned sender (a streamed response needs it).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        accept: &str,
    ) -> Result<(SendRequest<Full<Bytes>>, hyper::Response<hyper::body::Incoming>), ControlError> {
        let io = hyper_util::rt::TokioIo::new(self.connect().await?);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("accept", accept)
            .header("content-type", "application/json")
            .header("user-agent", concat!("openbox/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {}", t.expose()));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| ControlError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| self.unreachable(e))?;
        Ok((sender, resp))
    }

    /// A whole response body, refused past [`MAX_BODY`].
    async fn body(&self, resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, ControlError> {
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
        match limited.collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(ControlError::Protocol(format!("an answer larger than {} MiB", MAX_BODY >> 20)))
            }
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// A stream to the control plane: over the tailnet for a tailnet address (never over
    /// the host's own network), else TCP.
    async fn connect(&self) -> Result<Stream, ControlError> {
        let transport = if on_tailnet(&self.authority) {
            let Some(tailnet) = &self.tailnet else {
                return Err(self.unreachable("that is an address on a tailnet, and this process is not on one"));
            };
            Transport::Tailnet(tailnet.node().await.map_err(|why| self.unreachable(why))?)
        } else {
            Transport::Tcp
        };
        transport.connect(&self.authority).await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> ControlError {
        ControlError::Unreachable { url: self.url.clone(), why: why.to_string() }
    }
}

/// The error an unsuccessful answer carries: the control plane's own message when it sent one.
fn api_error(status: StatusCode, body: &[u8]) -> ControlError {
    let message = serde_json::from_slice::<proto::api::ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()));
    ControlError::Api { status: status.as_u16(), message }
}

/// A server-sent event stream: `next` yields `(event, data)` pairs.
pub struct EventStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no event end, so each byte is looked at once.
    scanned: usize,
    // Keeps the connection's request side alive for as long as the stream is read.
    _sender: SendRequest<Full<Bytes>>,
}

impl EventStream {
    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Result<(String, String), ControlError>> {
        loop {
            let from = self.scanned.saturating_sub(1);
            let found = self.buf[from..].windows(2).position(|w| w == b"\n\n").map(|i| from + i);
            self.scanned = self.buf.len();
            if let Some(end) = found {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                self.scanned = 0;
                let text = String::from_utf8_lossy(&block);
                let (mut event, mut data) = (String::from("message"), Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(Ok((event, data.join("\n"))));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Some(chunk) = frame.data_ref() {
                        if self.buf.len() + chunk.len() > MAX_BODY {
                            return Some(Err(ControlError::Protocol(format!(
                                "an event larger than {} MiB",
                                MAX_BODY >> 20
                            ))));
                        }
                        self.buf.extend_from_slice(chunk);
                    }
                }
                Err(e) => return Some(Err(ControlError::Protocol(e.to_string()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server that answers every request with `head` and then `MAX_BODY` and more bytes
    /// that never end an event.
    async fn flooding_server(head: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            s.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..(MAX_BODY >> 20) + 8 {
                if s.write_all(&chunk).await.is_err() {
                    return; // the client stopped reading, as it should
                }
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_or_event_past_the_limit_is_refused_not_held() {
        let len = (MAX_BODY >> 20) + 8;
        let head = Box::leak(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", len << 20).into_boxed_str());
        let url = flooding_server(head).await;
        let err = Client::new(&url, None).unwrap().get::<serde_json::Value>("/v1/nodes").await.unwrap_err();
        assert!(err.to_string().contains("larger than 64 MiB"), "{err}");

        let url = flooding_server("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n").await;
        let mut events = Client::new(&url, None).unwrap().events("/v1/events").await.unwrap();
        let err = events.next().await.expect("an answer").unwrap_err();
        assert!(err.to_string().contains("an event larger than 64 MiB"), "{err}");
    }
}
