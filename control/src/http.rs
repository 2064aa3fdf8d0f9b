//! Serving the API over any listener (TCP, the tailnet) with the limits a service facing a
//! network needs: at most [`max_connections`] open at once (one past it is closed at once,
//! so a flood cannot use up descriptors), [`HEADER_TIMEOUT`] to send a request's headers
//! (a half-sent request does not stay open), [`IDLE_TIMEOUT`] between requests (every node
//! keeps its connection from one heartbeat to the next), and a graceful end that lets open
//! requests finish. Over TLS when given a configuration; the handshake runs in the
//! connection's own task, under the header time limit, so a slow client holds up no one
//! else. Connections may upgrade (the dashboard's terminal is a WebSocket); an upgraded one
//! is no longer HTTP and is not waited for at shutdown.

mod waiting;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio_util::either::Either;

use crate::audit::Source;

/// A connection's place among the open ones, held while anything serves it.
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<tokio::sync::OwnedSemaphorePermit>,
}

pub use waiting::{HEADER_TIMEOUT, IDLE_TIMEOUT};

/// Open files kept back from connections, for the database, the tailnet and the rest.
const RESERVED_FILES: u64 = 1024;

/// Connections open at once, per listener: what the open-file limit allows, less
/// [`RESERVED_FILES`] (at least half of it). Every node holds one connection, so a fleet
/// of 100,000 needs a limit above that (systemd gives services 524,288).
pub fn max_connections() -> usize {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let connections = files.saturating_sub(RESERVED_FILES).max(files / 2);
    usize::try_from(connections.min(u64::from(u32::MAX >> 3))).unwrap_or(usize::MAX)
}
/// How long open requests get to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// HTTP/1 on one connection, its waits timed by `timer` (see `waiting`): [`IDLE_TIMEOUT`]
/// between requests, shortened to [`HEADER_TIMEOUT`] once a request has begun to arrive.
fn http1<I, S, B>(io: I, timer: waiting::HeadTimer, service: S) -> http1::UpgradeableConnection<TokioIo<I>, S>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http1::Builder::new()
        .timer(timer)
        .header_read_timeout(IDLE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes, then
/// lets open requests finish for a while.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    tls: Option<Arc<tls::rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    L::Addr: std::fmt::Display,
{
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let limit = max_connections();
    let open = Arc::new(tokio::sync::Semaphore::new(limit));
    // Told to every connection when shutdown begins.
    let stopping = tokio_util::sync::CancellationToken::new();
    let mut refused_since_warning = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(io);
            refused_since_warning += 1;
            if refused_since_warning.is_power_of_two() {
                tracing::warn!(refused = refused_since_warning, limit, "too many connections; closing new ones");
            }
            continue;
        };
        // Each request carries where it came from, for the audit log, and the connection's
        // place among the open ones: a request that takes the connection over (a terminal's
        // WebSocket) keeps it, so upgraded connections count against the limit too.
        let slot = ConnectionSlot { _held: Arc::new(permit) };
        let (source, router) = (Source(peer.to_string()), router.clone());
        let waiting = waiting::Waiting::new();
        let io = waiting::Watched::new(io, waiting.clone());
        let timer = waiting::HeadTimer(waiting.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            waiting.request_read();
            req.extensions_mut().insert(source.clone());
            req.extensions_mut().insert(slot.clone());
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        let (stopping, tls) = (stopping.clone(), tls.clone());
        tokio::spawn(async move {
            let io = match tls {
                None => Either::Left(io),
                Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(secured)) => Either::Right(secured),
                    Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("no TLS handshake in time"),
                },
            };
            let conn = http1(io, timer, service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stopping.cancelled() => {
                    // Finish the request in hand, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    // Every connection gives its permit back as it ends.
    let all = u32::try_from(limit).expect("the limit fits a u32");
    if tokio::time::timeout(DRAIN, open.acquire_many(all)).await.is_err() {
        tracing::warn!("stopping with requests still open");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A connection served as `serve` serves one, answering every request with `ok`;
    /// the client's end.
    fn connection() -> DuplexStream {
        let (client, server) = tokio::io::duplex(1 << 16);
        let waiting = waiting::Waiting::new();
        let (io, timer) = (waiting::Watched::new(server, waiting.clone()), waiting::HeadTimer(waiting.clone()));
        let service = hyper::service::service_fn(move |_req| {
            waiting.request_read();
            async { Ok::<_, std::convert::Infallible>(hyper::Response::new(axum::body::Body::from("ok"))) }
        });
        tokio::spawn(http1(io, timer, service));
        client
    }

    /// Sends a request and reads its whole answer.
    async fn ask(client: &mut DuplexStream) -> String {
        client.write_all(REQUEST).await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok") {
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    /// Whether the server has closed the connection, after `after` more.
    async fn closed_after(client: &mut DuplexStream, after: Duration) -> bool {
        tokio::time::sleep(after).await;
        let mut buf = [0u8; 1024];
        matches!(tokio::time::timeout(Duration::from_millis(1), client.read(&mut buf)).await, Ok(Ok(0)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_kept_idle_past_the_header_limit_and_a_stalled_request_is_not() {
        let mut client = connection();
        assert!(ask(&mut client).await.starts_with("HTTP/1.1 200"));
        // Idle for longer than a request's headers may take, shorter than the idle limit:
        // the next request is served on the same connection.
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(5)).await;
        assert!(ask(&mut client).await.starts_with("HTTP/1.1 200"));
        // A request that stops half-way through its headers is closed HEADER_TIMEOUT after
        // its first byte, however long the connection had been idle before.
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(!closed_after(&mut client, HEADER_TIMEOUT - Duration::from_secs(1)).await);
        assert!(closed_after(&mut client, Duration::from_secs(2)).await);

        // Idle past the limit: closed.
        let mut client = connection();
        ask(&mut client).await;
        assert!(!closed_after(&mut client, IDLE_TIMEOUT - Duration::from_secs(1)).await);
        assert!(closed_after(&mut client, Duration::from_secs(2)).await);

        // A new connection gets only HEADER_TIMEOUT for its first request, whether it sends
        // nothing or half a request.
        let mut silent = connection();
        assert!(!closed_after(&mut silent, HEADER_TIMEOUT - Duration::from_secs(1)).await);
        assert!(closed_after(&mut silent, Duration::from_secs(2)).await);
        let mut half = connection();
        half.write_all(b"GET / HT").await.unwrap();
        assert!(closed_after(&mut half, HEADER_TIMEOUT + Duration::from_secs(1)).await);
    }
}
