//! Where a call's standard streams are: this process's own (one-shot), the caller's file
//! descriptors passed over the socket, or JSON notifications on the socket.

use std::os::fd::OwnedFd;
use std::time::Duration;

use base64::Engine as _;
use net::ssh::{Input, Output, Writers};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use serde_json::Value;
use tokio::sync::mpsc;

/// A call's stdin.
pub enum CallInput {
    Empty,
    Process(tokio::io::Stdin),
    Chunks(mpsc::Receiver<Vec<u8>>),
}

impl Input for CallInput {
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            CallInput::Empty => None,
            CallInput::Process(stdin) => {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 * 1024];
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some(buf)
                    }
                }
            }
            CallInput::Chunks(rx) => rx.recv().await,
        }
    }
}

/// Reads a passed stdin descriptor on a thread of its own. It polls with a short timeout
/// so that it stops soon after the command ends: a read left blocked on a terminal would
/// otherwise swallow what the user types next.
pub fn fd_input(fd: OwnedFd) -> CallInput {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let tick = Timespec::try_from(Duration::from_millis(100)).expect("small duration");
        loop {
            if tx.is_closed() {
                return;
            }
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&tick)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
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
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                Err(_) => return,
            }
        }
    });
    CallInput::Chunks(rx)
}

/// A call's stdout and stderr.
pub enum CallOutput {
    Process(Writers<tokio::io::Stdout, tokio::io::Stderr>),
    Files(Writers<tokio::fs::File, tokio::fs::File>),
    Frames(FrameSink),
}

impl CallOutput {
    pub fn process() -> CallOutput {
        CallOutput::Process(Writers { stdout: tokio::io::stdout(), stderr: tokio::io::stderr() })
    }

    /// Writes into the caller's own descriptors (blocking writes happen off the runtime).
    pub fn fds(stdout: OwnedFd, stderr: OwnedFd) -> CallOutput {
        CallOutput::Files(Writers {
            stdout: tokio::fs::File::from_std(std::fs::File::from(stdout)),
            stderr: tokio::fs::File::from_std(std::fs::File::from(stderr)),
        })
    }

    pub async fn print(&mut self, text: &str) {
        let _ = self.stdout(text.as_bytes()).await;
    }

    pub async fn eprint(&mut self, text: &str) {
        let _ = self.stderr(text.as_bytes()).await;
    }
}

impl Output for CallOutput {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            CallOutput::Process(w) => w.stdout(data).await,
            CallOutput::Files(w) => w.stdout(data).await,
            CallOutput::Frames(f) => f.send("stdout", data).await,
        }
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            CallOutput::Process(w) => w.stderr(data).await,
            CallOutput::Files(w) => w.stderr(data).await,
            CallOutput::Frames(f) => f.send("stderr", data).await,
        }
    }
}

/// Sends output as `output` notifications on the caller's socket.
pub struct FrameSink {
    pub id: Value,
    pub lines: mpsc::Sender<String>,
}

impl FrameSink {
    async fn send(&mut self, stream: &str, data: &[u8]) -> std::io::Result<()> {
        let params = proto::rpc::Output {
            id: self.id.clone(),
            stream: stream.to_owned(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
        };
        let note = proto::rpc::Request::new(None, "output", serde_json::to_value(params).expect("serializable"));
        let line = serde_json::to_string(&note).expect("serializable");
        self.lines.send(line).await.map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}
