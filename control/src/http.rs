//! Serving the API over any listener (TCP, the tailnet) with the limits a service facing a
//! network needs: at most [`MAX_CONNECTIONS`] open at once (one past it is closed at once,
//! so a flood cannot use up descriptors), [`HEADER_TIMEOUT`] to send a request's headers
//! (a half-sent request does not stay open), and a graceful end that lets open requests
//! finish. Over TLS when given a configuration; the handshake runs in the connection's own
//! task, under the same time limit, so a slow client holds up no one else. Connections may
//! upgrade (the dashboard's terminal is a WebSocket); an upgraded one is no longer HTTP and
//! is not waited for at shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::either::Either;

use crate::audit::Source;

/// A connection's place among the open ones, held while anything serves it.
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// Connections open at once, per listener.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's headers (and, between requests, to
/// start the next one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests get to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

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
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
                tracing::warn!(
                    refused = refused_since_warning,
                    limit = MAX_CONNECTIONS,
                    "too many connections; closing new ones"
                );
            }
            continue;
        };
        // Each request carries where it came from, for the audit log, and the connection's
        // place among the open ones: a request that takes the connection over (a terminal's
        // WebSocket) keeps it, so upgraded connections count against the limit too.
        let slot = ConnectionSlot { _held: Arc::new(permit) };
        let (source, router) = (Source(peer.to_string()), router.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
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
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
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
    let all = u32::try_from(MAX_CONNECTIONS).expect("the limit fits a u32");
    if tokio::time::timeout(DRAIN, open.acquire_many(all)).await.is_err() {
        tracing::warn!("stopping with requests still open");
    }
}
