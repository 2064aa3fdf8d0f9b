//! A JSON-over-HTTP client for the control plane's `/v1` API: over HTTPS with the server's
//! key pinned (or checked against this machine's authorities), or plain HTTP where nothing
//! crosses a network — loopback, the tailnet (encrypted already), or where the user said
//! `--insecure-http`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

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

use tokio_rustls::rustls::pki_types::ServerName;

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
    #[error("invalid control-plane URL {0:?}: expected https://HOST[:PORT] (or http://HOST:PORT)")]
    BadUrl(String),
    #[error(
        "refusing plain http to {0}: login tokens and node secrets would cross the network unencrypted. Use the control plane's https:// URL with the --fingerprint it prints at start, or --insecure-http on a network you trust"
    )]
    PlainHttp(String),
    #[error("a fingerprint pins an https:// control plane, and {0} is plain http")]
    PinWithoutTls(String),
    #[error("the control plane at {url} is not the one this machine trusts: {why}")]
    Untrusted { url: String, why: String },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

impl ControlError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ControlError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A control plane's URL and how this side knows it is the right one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct Endpoint {
    pub url: String,
    /// The server's key, pinned (an `https://` URL only); without it the certificate is
    /// checked against this machine's trusted authorities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<tls::Fingerprint>,
    /// Plain http to an address other than loopback or the tailnet, as the user asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

impl Endpoint {
    /// A URL with nothing pinned (loopback, or checked against the trusted authorities).
    pub fn new(url: impl Into<String>) -> Endpoint {
        Endpoint { url: url.into().trim_end_matches('/').to_owned(), fingerprint: None, insecure_http: false }
    }

    /// How a control plane serving `url` tells its clients to reach it: pinned to its own
    /// TLS key when it has one, and with `--insecure-http` when plain http leaves this
    /// machine and the tailnet (which a client refuses unless told).
    pub fn served(url: &str, fingerprint: Option<tls::Fingerprint>) -> Endpoint {
        let insecure_http = url.strip_prefix("http://").is_some_and(|rest| {
            let authority = rest.trim_end_matches('/');
            split_host_port(authority).is_some_and(|(host, _)| !is_loopback(host) && !on_tailnet(authority))
        });
        Endpoint { fingerprint, insecure_http, ..Endpoint::new(url) }
    }

    /// The login command for this endpoint, without a token: `openbox login` takes it from
    /// `OPENBOX_LOGIN_TOKEN`, or asks for it on a terminal.
    pub fn login_command(&self) -> String {
        format!("openbox login {}", self.flags())
    }

    /// The flags that reach this control plane as this endpoint does, for a printed command:
    /// `--server URL [--fingerprint FP] [--insecure-http]`.
    pub fn flags(&self) -> String {
        let mut flags = format!("--server {}", self.url);
        if let Some(fp) = &self.fingerprint {
            flags.push_str(&format!(" --fingerprint {fp}"));
        }
        if self.insecure_http {
            flags.push_str(" --insecure-http");
        }
        flags
    }
}

/// A client for one control plane, optionally authenticated with a bearer token. It keeps
/// its connection open between calls (for up to [`KEEP_IDLE`]), so a node heartbeating
/// through one client pays for a TCP and TLS handshake once, not at every beat; clones
/// share that connection.
#[derive(Clone)]
pub struct Client {
    url: String,
    /// `HOST:PORT`, as dialled.
    authority: String,
    /// How the connection is secured, when it is.
    tls: Option<(Arc<tokio_rustls::rustls::ClientConfig>, ServerName<'static>)>,
    pinned: bool,
    token: Option<Secret>,
    /// How to reach a control plane at a tailnet address, when this process can.
    tailnet: Option<Arc<dyn TailnetAccess>>,
    /// The local address TCP connections are made from, when not the system's choice.
    source: Option<IpAddr>,
    /// The connection the last call left open.
    kept: Arc<std::sync::Mutex<Option<Kept>>>,
}

/// A connection left open by a call, and since when it has been idle.
type Kept = (Connection, Instant);

/// One HTTP/1 connection's request side; its task ends, and the connection closes, once this
/// is dropped with no request in flight, or with one whose caller gave up on it.
type Connection = SendRequest<Full<Bytes>>;

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
/// How long a connection may sit idle and still be used for the next call: well inside the
/// control plane's own idle limit (75 s), so that it is not closed as the call goes out.
pub const KEEP_IDLE: Duration = Duration::from_secs(50);
/// The largest answer (or event) read from a control plane: a registry of 50,000 nodes
/// fits many times over; a misbehaving server cannot make a client hold more.
pub const MAX_BODY: usize = 64 << 20;

impl Client {
    /// A client for `endpoint`; refuses plain http where it would cross a network the user
    /// did not say they trust.
    pub fn new(endpoint: &Endpoint, token: Option<Secret>) -> Result<Client, ControlError> {
        let url = endpoint.url.trim_end_matches('/').to_owned();
        let bad = || ControlError::BadUrl(url.clone());
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err(bad()),
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let (host, port) = split_host_port(rest).ok_or_else(bad)?;
        let authority = match port {
            Some(_) => rest.to_owned(),
            None if https => format!("{rest}:443"),
            None => return Err(bad()),
        };
        let tls = if https {
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
                .map_err(|_| bad())?;
            Some((tls::client_config(endpoint.fingerprint)?, name))
        } else if endpoint.fingerprint.is_some() {
            return Err(ControlError::PinWithoutTls(url));
        } else {
            if !(endpoint.insecure_http || is_loopback(host) || on_tailnet(&authority)) {
                return Err(ControlError::PlainHttp(url));
            }
            None
        };
        Ok(Client {
            url,
            authority,
            tls,
            pinned: endpoint.fingerprint.is_some(),
            token,
            tailnet: None,
            source: None,
            kept: Arc::default(),
        })
    }

    /// Reaches a control plane at a tailnet address through `tailnet` (others over TCP).
    pub fn with_tailnet(mut self, tailnet: Arc<dyn TailnetAccess>) -> Client {
        self.tailnet = Some(tailnet);
        self
    }

    /// The same client (and connection) with another credential: a load generator sends
    /// many nodes' heartbeats over fewer connections than nodes.
    pub fn with_token(mut self, token: Secret) -> Client {
        self.token = Some(token);
        self
    }

    /// Makes TCP connections from `source` (a load generator spreads its connections over
    /// loopback addresses, as one address has too few ports for a large fleet).
    pub fn from_source(mut self, source: IpAddr) -> Client {
        self.source = Some(source);
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls the route `R` with `params` for its path and `request` for its query or body.
    pub async fn call<R: proto::routes::Route>(
        &self,
        params: &[&str],
        request: &R::Request,
    ) -> Result<R::Response, ControlError> {
        use proto::routes::{Method as M, fill, query};
        let path = fill::<R>(params);
        match R::METHOD {
            M::Get => self.get(&format!("{path}{}", query(request))).await,
            M::Post => self.post(&path, request).await,
            M::Patch => self.patch(&path, request).await,
            M::Delete => self.delete(&path).await,
        }
    }

    /// Opens the server-sent event stream of `R` (`Events`) with `request` as its query.
    pub async fn events_of<R: proto::routes::Route>(&self, request: &R::Request) -> Result<EventStream, ControlError> {
        self.events(&format!("{}{}", proto::routes::fill::<R>(&[]), proto::routes::query(request))).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        self.exchange(Method::GET, path, None::<&()>).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ControlError> {
        self.exchange(Method::POST, path, Some(body)).await
    }

    async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ControlError> {
        self.exchange(Method::PATCH, path, Some(body)).await
    }

    /// A DELETE; `T` is what the answer holds (`()` for none).
    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        self.exchange(Method::DELETE, path, None::<&()>).await
    }

    /// Opens a server-sent event stream at `path`.
    async fn events(&self, path: &str) -> Result<EventStream, ControlError> {
        let request = self.request(Method::GET, path, Vec::new(), "text/event-stream")?;
        let mut connection = self.open().await?;
        let resp = sent(&mut connection, request).await.map_err(|e| self.send_failed(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = self.body(resp).await?;
            return Err(api_error(status, &body));
        }
        Ok(EventStream { body: resp.into_body(), buf: Vec::new(), last_id: None, scanned: 0, _connection: connection })
    }

    async fn exchange<B: Serialize, T: DeserializeOwned>(
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
        let (connection, resp) = self.send(method, path, bytes).await?;
        let status = resp.status();
        let body = self.body(resp).await?;
        // Read to its end, the answer leaves the connection free for the next call.
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some((connection, Instant::now()));
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        let body: &[u8] = if body.is_empty() || status == StatusCode::NO_CONTENT { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// Sends one request on the connection kept from the last call when it is still open,
    /// else on a new one; returns the connection with the answer (whose body is still to
    /// be read).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(Connection, hyper::Response<hyper::body::Incoming>), ControlError> {
        let body = Bytes::from(body);
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut connection, idle_since)) = kept
            && idle_since.elapsed() < KEEP_IDLE
            && connection.ready().await.is_ok()
        {
            let request = self.request(method.clone(), path, body.clone(), "application/json")?;
            match sent(&mut connection, request).await {
                Ok(resp) => return Ok((connection, resp)),
                // Closed by the server before the request went out: it is sent again on a
                // new connection. (A request that may have reached the server is not.)
                Err(e) if e.is_canceled() => {}
                Err(e) => return Err(self.send_failed(e)),
            }
        }
        let mut connection = self.open().await?;
        let request = self.request(method, path, body, "application/json")?;
        let resp = sent(&mut connection, request).await.map_err(|e| self.send_failed(e))?;
        Ok((connection, resp))
    }

    /// A new connection, through TLS when the URL is https.
    async fn open(&self) -> Result<Connection, ControlError> {
        let stream = self.connect().await?;
        match &self.tls {
            None => handshake(stream).await,
            Some((config, name)) => {
                let secured = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| self.tls_failed(e))?;
                handshake(secured).await
            }
        }
        .map_err(|e| self.unreachable(e))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        accept: &str,
    ) -> Result<Request<Full<Bytes>>, ControlError> {
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
        req.body(Full::new(body.into())).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    fn send_failed(&self, e: hyper::Error) -> ControlError {
        if e.is_parse() && self.tls.is_none() {
            return self.unreachable(format!(
                "its answer is not plain HTTP ({e}); if it serves HTTPS, use its https:// URL with --fingerprint"
            ));
        }
        self.unreachable(e)
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
        } else if let Some(source) = self.source {
            return crate::transport::connect_from(source, &self.authority).await.map_err(|e| self.unreachable(e));
        } else {
            Transport::Tcp
        };
        transport.connect(&self.authority).await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> ControlError {
        ControlError::Unreachable { url: self.url.clone(), why: why.to_string() }
    }

    /// A TLS handshake that failed: a certificate that is not the trusted one says so, and
    /// what to do.
    fn tls_failed(&self, e: std::io::Error) -> ControlError {
        use tokio_rustls::rustls::{CertificateError, Error};
        let why = match e.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(Error::InvalidCertificate(why)) => why,
            // What came back was not TLS at all: most likely plain HTTP, which the control
            // plane serves on loopback unless told otherwise.
            Some(Error::InvalidMessage(_)) => {
                return self
                    .unreachable(format!("its answer is not TLS ({e}); if it serves plain HTTP, use its http:// URL"));
            }
            _ => return self.unreachable(e),
        };
        let why = match why {
            CertificateError::Other(other) => other.to_string(),
            _ if self.pinned => format!("{why:?}"),
            CertificateError::UnknownIssuer => "its certificate is not signed by an authority this machine trusts. If it is \
                 openbox's own certificate, pin it with --fingerprint SHA256:… (the control plane prints it when it starts)"
                .to_owned(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("its certificate is not for {}", self.authority)
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "its certificate has expired".to_owned()
            }
            other => format!("its certificate is not acceptable ({other:?})"),
        };
        ControlError::Untrusted { url: self.url.clone(), why }
    }
}

/// Sends `request` on `connection` and notes the control plane's clock from the answer.
async fn sent(
    connection: &mut Connection,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
    let resp = connection.send_request(request).await?;
    heard_time(&resp);
    Ok(resp)
}

/// Starts HTTP/1 over `io`; the connection runs in its own task.
async fn handshake<T>(io: T) -> Result<Connection, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `HOST` and the port, if given, of `HOST[:PORT]` (`[v6]` in brackets).
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        (host, if rest.is_empty() { None } else { Some(rest.strip_prefix(':')?) })
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

/// Whether `host` names this machine: `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    /// The last event id the stream sent (SSE's `id:`), where a new stream may resume.
    last_id: Option<String>,
    /// How much of `buf` is known to hold no event end, so each byte is looked at once.
    scanned: usize,
    // Keeps the connection open for as long as the stream is read.
    _connection: Connection,
}

impl EventStream {
    /// The id of the last event that carried one.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
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
                    } else if let Some(v) = line.strip_prefix("id:") {
                        self.last_id = Some(v.trim().to_owned());
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

/// Notes the control plane's clock from an answer's `Date` (see [`proto::time::control_now`]).
fn heard_time(resp: &hyper::Response<hyper::body::Incoming>) {
    let date = resp.headers().get(hyper::header::DATE).and_then(|v| v.to_str().ok());
    let Some(theirs) = date.and_then(|d| httpdate::parse_http_date(d).ok()) else { return };
    let secs = theirs.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(offset) = proto::time::heard_control_time(secs) {
        tracing::info!(
            offset_secs = offset,
            "the control plane's clock differs from this machine's; certificates are judged by its time"
        );
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

    /// A server answering every GET with `null`, counting the connections it accepts; it
    /// closes each connection after `answers_per_connection` answers.
    async fn counting_server(answers_per_connection: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut heads = Vec::new();
                    for _ in 0..answers_per_connection {
                        while !heads.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut buf = [0u8; 4096];
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => heads.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = heads.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        heads.drain(..end);
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull").await.unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    #[tokio::test]
    async fn a_client_keeps_its_connection_between_calls_and_opens_another_once_it_is_closed() {
        use std::sync::atomic::Ordering::SeqCst;
        let (url, accepted) = counting_server(usize::MAX).await;
        let client = Client::new(&Endpoint::new(url), None).unwrap();
        for _ in 0..5 {
            client.get::<serde_json::Value>("/v1/nodes").await.unwrap();
        }
        client.clone().get::<serde_json::Value>("/v1/nodes").await.unwrap();
        assert_eq!(accepted.load(SeqCst), 1, "six calls, clones included, went over one connection");

        // A server that closes each connection after one answer (as one does at its idle
        // limit, or when it restarts): every call still succeeds, each on a new connection.
        let (url, accepted) = counting_server(1).await;
        let client = Client::new(&Endpoint::new(url), None).unwrap();
        for _ in 0..3 {
            client.get::<serde_json::Value>("/v1/nodes").await.unwrap();
        }
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_call_given_up_on_closes_its_connection() {
        // A server that reads a request and never answers, then reports when the client
        // closes the connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (asked_tx, asked) = tokio::sync::oneshot::channel();
        let closed = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            assert!(s.read(&mut buf).await.unwrap() > 0);
            asked_tx.send(()).unwrap();
            s.read(&mut buf).await.unwrap()
        });
        let client = Client::new(&Endpoint::new(url), None).unwrap();
        let call = tokio::spawn(async move { client.get::<serde_json::Value>("/v1/nodes").await });
        asked.await.unwrap();
        call.abort(); // as a time limit does
        let read = tokio::time::timeout(Duration::from_secs(10), closed).await.expect("the connection closed").unwrap();
        assert_eq!(read, 0, "the server saw the connection end");
    }

    #[test]
    fn plain_http_is_taken_only_where_nothing_crosses_a_network() {
        // Pinned, so that no https case depends on this machine's authorities.
        let pin = Some(format!("SHA256:{}", "A".repeat(43)).parse().unwrap());
        let client = |url: &str, insecure_http: bool| {
            let fingerprint = if url.starts_with("https") { pin } else { None };
            Client::new(&Endpoint { url: url.into(), fingerprint, insecure_http }, None)
        };
        for url in [
            "http://127.0.0.1:7683",
            "http://127.9.9.9:1/",
            "http://localhost:7683",
            "http://[::1]:7683",
            "http://100.64.0.7:7683",
        ] {
            assert!(client(url, false).is_ok(), "{url} was refused");
        }
        for url in ["http://10.0.0.1:7683", "http://control.example:7683", "http://[fd00::1]:7683"] {
            let err = client(url, false).expect_err("refused");
            assert!(matches!(err, ControlError::PlainHttp(_)), "{url}: {err}");
            assert!(err.to_string().contains("--insecure-http"), "{err}");
            assert!(client(url, true).is_ok(), "{url} with --insecure-http was refused");
        }
        // What a control plane tells its clients is what they take, with the flag only where needed.
        for url in ["http://127.0.0.1:7683", "http://100.64.0.7:7683", "http://10.0.0.1:7683", "http://0.0.0.0:7683/"] {
            let served = Endpoint::served(url, None);
            assert!(Client::new(&served, None).is_ok(), "{url}: {}", served.login_command());
            assert_eq!(served.insecure_http, client(url, false).is_err(), "{url}");
        }
        assert!(!Endpoint::served("https://control.example", pin).insecure_http);
        let pinned_http = Endpoint { fingerprint: pin, ..Endpoint::new("http://127.0.0.1:7683") };
        assert!(matches!(Client::new(&pinned_http, None), Err(ControlError::PinWithoutTls(_))));
        assert_eq!(client("https://control.example", false).unwrap().authority, "control.example:443");
        assert_eq!(client("https://[::1]:8443/", false).unwrap().authority, "[::1]:8443");
        for url in [
            "control.example:7683",
            "ftp://x:1",
            "http://",
            "https://h:port",
            "https://h:1/path",
            "http://u@h:1",
            "http://h",
        ] {
            assert!(matches!(client(url, true), Err(ControlError::BadUrl(_))), "{url} was taken");
        }
    }

    #[tokio::test]
    async fn an_answer_or_event_past_the_limit_is_refused_not_held() {
        let len = (MAX_BODY >> 20) + 8;
        let head = Box::leak(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", len << 20).into_boxed_str());
        let url = flooding_server(head).await;
        let err =
            Client::new(&Endpoint::new(url), None).unwrap().get::<serde_json::Value>("/v1/nodes").await.unwrap_err();
        assert!(err.to_string().contains("larger than 64 MiB"), "{err}");

        let url = flooding_server("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n").await;
        let mut events = Client::new(&Endpoint::new(url), None).unwrap().events("/v1/events").await.unwrap();
        let err = events.next().await.expect("an answer").unwrap_err();
        assert!(err.to_string().contains("an event larger than 64 MiB"), "{err}");
    }
}
