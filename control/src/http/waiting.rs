//! The two ways a connection waits for a request, timed apart: idle between requests (up
//! to [`IDLE_TIMEOUT`], so that a node's kept connection outlives its heartbeat interval),
//! and in the middle of a request's headers (up to [`HEADER_TIMEOUT`] from their first
//! byte, so that a half-sent request does not hold a connection). hyper times both with one
//! timer, started as it begins to wait for a request's head and dropped once the head is
//! read. [`HeadTimer`] is that timer: it shortens itself once [`Watched`], under the
//! connection (under TLS too), has seen a byte arrive while it runs.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a client may take to send a request's headers once it has begun, and on a new
/// connection to send its first request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What one connection's timer and reads tell each other.
#[derive(Default)]
pub struct Waiting(Mutex<State>);

#[derive(Default)]
struct State {
    /// The timer running now (0: none), and the number the next one gets.
    running: u64,
    last: u64,
    /// When the first byte arrived while `running` ran.
    first_byte: Option<Instant>,
    /// Whether a request has been read on this connection.
    served: bool,
}

impl Waiting {
    pub fn new() -> Arc<Waiting> {
        Arc::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request's head has been read (the service is called with it).
    pub fn request_read(&self) {
        self.state().served = true;
    }

    fn byte_arrived(&self) {
        let mut state = self.state();
        if state.running != 0 && state.first_byte.is_none() {
            state.first_byte = Some(Instant::now());
        }
    }
}

/// A connection's byte stream, telling its [`Waiting`] when bytes arrive.
pub struct Watched<T> {
    io: T,
    waiting: Arc<Waiting>,
}

impl<T> Watched<T> {
    pub fn new(io: T, waiting: Arc<Waiting>) -> Watched<T> {
        Watched { io, waiting }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.waiting.byte_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The timer hyper's HTTP/1 server times the wait for a request's head with (its only use
/// of a timer), given [`IDLE_TIMEOUT`] as the header read timeout.
#[derive(Clone)]
pub struct HeadTimer(pub Arc<Waiting>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// Tokio's clock, which a test may pause.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = Instant::from_std(deadline);
        let mut state = self.0.state();
        state.last += 1;
        state.running = state.last;
        state.first_byte = None;
        // Until a first request has come, the whole wait counts as waiting for a head.
        let deadline = if state.served { deadline } else { deadline.min(Instant::now() + HEADER_TIMEOUT) };
        Box::pin(HeadSleep {
            id: state.running,
            waiting: self.0.clone(),
            deadline,
            shortened: false,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }
}

struct HeadSleep {
    id: u64,
    waiting: Arc<Waiting>,
    deadline: Instant,
    shortened: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.shortened {
            let first_byte = self.waiting.state().first_byte;
            if let Some(at) = first_byte {
                let deadline = self.deadline.min(at + HEADER_TIMEOUT);
                self.sleep.as_mut().reset(deadline);
                self.shortened = true;
            }
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        let mut state = self.waiting.state();
        if state.running == self.id {
            state.running = 0;
        }
    }
}
