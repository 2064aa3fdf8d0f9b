//! Where a call's standard streams are: file descriptors (the caller's, passed over the
//! socket, or this process's own in a one-shot call), or JSON notifications on the socket.
//!
//! Descriptors are used as they come: blocking or not (rsync hands its remote shell a
//! non-blocking socket), pipes, sockets, terminals or files, perhaps shared with other
//! processes — so their flags are never changed. Each is served by a blocking thread of
//! the runtime's (kept between calls, so a call starts none) that writes or reads and, on
//! `EAGAIN`, waits in `poll` until the descriptor is ready.
//! Output is never dropped: a write that truly fails is remembered, and [`conclude`]
//! turns it into a message and a failing exit code.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use net::ssh::{Input, Output};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Blocking threads at most: two per call at most, so 2048 calls at once.
pub const MAX_BLOCKING_THREADS: usize = 4096;

/// How often a thread waiting on a descriptor checks whether its call still wants it.
const TICK: Duration = Duration::from_millis(100);

/// Chunks of output queued for the writer thread; with SSH packets of at most 64 KiB this
/// bounds what one call holds in memory while its reader is slow.
const QUEUED_CHUNKS: usize = 16;

/// Exit code when the caller's stdout was closed before all output was written: what a
/// local command killed by SIGPIPE exits with.
const BROKEN_PIPE: u8 = 128 + 13;

/// One call's streams and what may stop it, passed whole from where the call arrives (the
/// socket, or this process for `--no-daemon`) to where its command runs: its input, the
/// caller's terminal (for `-i`), its output, and its halts (see `net::halt`).
pub struct CallIo {
    pub input: CallInput,
    pub terminal: Option<crate::terminal::Terminal>,
    pub output: CallOutput,
    pub halts: net::halt::Halts,
}

impl CallIo {
    /// The call's input, taken for the command (what is left is empty).
    pub fn take_input(&mut self) -> CallInput {
        std::mem::replace(&mut self.input, CallInput::Empty)
    }
}

/// A call's stdin.
pub enum CallInput {
    Empty,
    /// A descriptor nothing has read from yet: a call that never asks for input (`nodes`,
    /// `whoami`) leaves the caller's stdin alone.
    Fd(OwnedFd),
    Chunks(mpsc::Receiver<Vec<u8>>),
}

impl Input for CallInput {
    async fn next(&mut self) -> Option<Vec<u8>> {
        if let CallInput::Fd(_) = self
            && let CallInput::Fd(fd) = std::mem::replace(self, CallInput::Empty)
        {
            *self = CallInput::Chunks(read_fd(fd));
        }
        match self {
            CallInput::Empty | CallInput::Fd(_) => None,
            CallInput::Chunks(rx) => rx.recv().await,
        }
    }
}

/// A stdin descriptor, read once the call first asks for input.
pub fn fd_input(fd: OwnedFd) -> CallInput {
    CallInput::Fd(fd)
}

/// Reads a stdin descriptor on a blocking thread. It polls with a short timeout so that
/// it stops soon after the command ends: a read left blocked on a terminal would otherwise
/// swallow what the user types next.
fn read_fd(fd: OwnedFd) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    tokio::task::spawn_blocking(move || {
        let tick = Timespec::try_from(TICK).expect("small duration");
        loop {
            if tx.is_closed() {
                return;
            }
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&tick)) {
                Ok(0) | Err(Errno::INTR) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            let mut buf = vec![0u8; 64 * 1024];
            match rustix::io::read(&fd, &mut buf) {
                Ok(0) => return, // end of input: dropping `tx` tells the command
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(buf).is_err() {
                        return;
                    }
                }
                Err(Errno::INTR | Errno::AGAIN) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the caller's stdin failed; sending end of input");
                    return;
                }
            }
        }
    });
    rx
}

/// Which of a call's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A write into the caller's descriptor that failed: from then on that stream is
/// incomplete, and the call must not report success.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    pub stream: Stream,
    pub kind: std::io::ErrorKind,
    pub message: String,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == std::io::ErrorKind::BrokenPipe {
            write!(f, "{} was closed before all output was written (broken pipe)", self.stream.name())
        } else {
            write!(f, "could not write all output to {}: {}", self.stream.name(), self.message)
        }
    }
}

enum Chunk {
    Data(Stream, Vec<u8>),
    /// Answered once everything queued before it has been written (or has failed).
    Flush(oneshot::Sender<()>),
}

/// Writes a call's stdout and stderr into two descriptors, in the order the output
/// arrived, on one blocking thread.
pub struct FdWriter {
    queue: mpsc::Sender<Chunk>,
    failures: Arc<Mutex<[Option<WriteFailure>; 2]>>,
    /// Set when the call no longer wants its output (dropped unconcluded): a thread
    /// waiting for a stalled reader then gives up.
    abandoned: Arc<AtomicBool>,
}

impl FdWriter {
    pub fn new(stdout: OwnedFd, stderr: OwnedFd) -> FdWriter {
        let (queue, mut chunks) = mpsc::channel::<Chunk>(QUEUED_CHUNKS);
        let failures: Arc<Mutex<[Option<WriteFailure>; 2]>> = Arc::default();
        let abandoned = Arc::new(AtomicBool::new(false));
        let (failed, gone) = (failures.clone(), abandoned.clone());
        tokio::task::spawn_blocking(move || {
            let fds = [stdout, stderr];
            while let Some(chunk) = chunks.blocking_recv() {
                match chunk {
                    Chunk::Data(stream, data) => {
                        if gone.load(Ordering::Relaxed) {
                            continue; // nobody wants it any more
                        }
                        if failed.lock().unwrap_or_else(|e| e.into_inner())[stream.index()].is_some() {
                            continue; // that stream is already incomplete
                        }
                        if let Err(e) = write_all(&fds[stream.index()], &data, &gone) {
                            let failure = WriteFailure { stream, kind: e.kind(), message: e.to_string() };
                            failed.lock().unwrap_or_else(|e| e.into_inner())[stream.index()] = Some(failure);
                        }
                    }
                    Chunk::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        FdWriter { queue, failures, abandoned }
    }

    async fn write(&self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        if let Some(f) = self.failure_of(stream) {
            return Err(std::io::Error::new(f.kind, f.to_string()));
        }
        self.queue
            .send(Chunk::Data(stream, data.to_vec()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the output writer stopped"))
    }

    /// Waits until everything queued so far is written or has failed.
    async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Chunk::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    fn failure_of(&self, stream: Stream) -> Option<WriteFailure> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())[stream.index()].clone()
    }

    /// Nobody wants what is still queued: drop it, and stop waiting for a stalled reader.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl Drop for FdWriter {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Writes all of `data`, waiting for readiness when the descriptor is non-blocking and
/// full. Fails only when the descriptor truly cannot take it (or the call was abandoned).
fn write_all(fd: &OwnedFd, mut data: &[u8], abandoned: &AtomicBool) -> std::io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait_writable(fd, abandoned)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn wait_writable(fd: &OwnedFd, abandoned: &AtomicBool) -> std::io::Result<()> {
    let tick = Timespec::try_from(TICK).expect("small duration");
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::OUT)];
        match poll(&mut fds, Some(&tick)) {
            // Ready, or an error or hang-up that the next write will report.
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if abandoned.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the call ended while its reader stalled"));
        }
    }
}

/// A call's stdout and stderr.
pub enum CallOutput {
    Fds(FdWriter),
    Frames(FrameSink),
    /// Held here, to be said at the end in one piece (`--json`).
    Buffer(Box<Held>),
}

/// A call's output held whole: the command's streams, and openbox's own messages apart.
#[derive(Default)]
pub struct Held {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub notes: Vec<u8>,
}

impl CallOutput {
    /// Writes into these descriptors (the caller's, or this process's own).
    pub fn fds(stdout: OwnedFd, stderr: OwnedFd) -> CallOutput {
        CallOutput::Fds(FdWriter::new(stdout, stderr))
    }

    pub async fn print(&mut self, text: &str) {
        let _ = self.stdout(text.as_bytes()).await;
    }

    /// Holds the output, for the call to say at its end.
    pub fn buffer() -> CallOutput {
        CallOutput::Buffer(Box::default())
    }

    /// openbox's own message (a line starting `openbox: `), on stderr — or apart from the
    /// command's output when it is held.
    pub async fn eprint(&mut self, text: &str) {
        if let CallOutput::Buffer(held) = self {
            held.notes.extend_from_slice(text.as_bytes());
            return;
        }
        let _ = self.stderr(text.as_bytes()).await;
    }

    async fn flush(&self) {
        if let CallOutput::Fds(w) = self {
            w.flush().await;
        }
    }

    /// The caller went away: what is still queued for it is dropped, not written.
    pub fn abandon(&self) {
        if let CallOutput::Fds(w) = self {
            w.abandon();
        }
    }

    fn is_abandoned(&self) -> bool {
        matches!(self, CallOutput::Fds(w) if w.abandoned.load(Ordering::Relaxed))
    }

    fn failure_of(&self, stream: Stream) -> Option<WriteFailure> {
        match self {
            CallOutput::Fds(w) => w.failure_of(stream),
            CallOutput::Frames(_) | CallOutput::Buffer(_) => None,
        }
    }
}

/// Ends a call: waits until all its output is written, and returns the exit code the
/// caller gets — `code`, unless some output could not be written. Then it is 141 (as for
/// a local command killed by SIGPIPE) when stdout's reader went away, 255 otherwise, with
/// one line on stderr saying so: a call never reports success with bytes missing.
pub async fn conclude(mut output: CallOutput, code: u8) -> u8 {
    if output.is_abandoned() {
        return code; // nobody is left to tell
    }
    output.flush().await;
    let Some(failure) = output.failure_of(Stream::Stdout).or_else(|| output.failure_of(Stream::Stderr)) else {
        return code;
    };
    tracing::info!(%failure, "output incomplete");
    if failure.stream == Stream::Stdout {
        output.eprint(&format!("openbox: {failure}\n")).await;
        output.flush().await;
    }
    match (failure.stream, failure.kind) {
        (Stream::Stdout, std::io::ErrorKind::BrokenPipe) => BROKEN_PIPE,
        _ => proto::EXIT_OPENBOX_FAILURE,
    }
}

impl Output for CallOutput {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            CallOutput::Fds(w) => w.write(Stream::Stdout, data).await,
            CallOutput::Frames(f) => f.send("stdout", data).await,
            CallOutput::Buffer(held) => {
                held.stdout.extend_from_slice(data);
                Ok(())
            }
        }
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            CallOutput::Fds(w) => w.write(Stream::Stderr, data).await,
            CallOutput::Frames(f) => f.send("stderr", data).await,
            CallOutput::Buffer(held) => {
                held.stderr.extend_from_slice(data);
                Ok(())
            }
        }
    }
}

/// Sends output as `output` notifications on the caller's socket.
pub struct FrameSink {
    pub id: Value,
    pub lines: mpsc::Sender<String>,
}

impl FrameSink {
    async fn send(&self, stream: &str, data: &[u8]) -> std::io::Result<()> {
        let params = proto::rpc::Output {
            id: self.id.clone(),
            stream: stream.to_owned(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
        };
        let note = proto::rpc::Request::new(
            None,
            proto::rpc::method::OUTPUT,
            serde_json::to_value(params).expect("serializable"),
        );
        let line = serde_json::to_string(&note).expect("serializable");
        self.lines.send(line).await.map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}
