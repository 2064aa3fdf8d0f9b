//! What every kind of command writes back to its SSH channel — stdout, stderr, and how it
//! ended — and the caller's messages it reads from it.

use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};

/// Where a command's output goes, and how its end is reported.
/// Writes go through the channel's write half, which waits for the peer's SSH window, so a
/// slow reader slows the command instead of filling memory.
pub struct ChannelOut {
    pub id: ChannelId,
    pub handle: Handle,
    pub write: ChannelWriteHalf<Msg>,
    /// The journal's record of what runs on this channel, ended with its outcome.
    pub record: Option<crate::journal::Running>,
}

impl ChannelOut {
    pub async fn stdout(&self, data: &[u8]) -> bool {
        self.write.data_bytes(data.to_vec()).await.is_ok()
    }

    pub async fn stderr(&self, data: &[u8]) -> bool {
        self.write.extended_data_bytes(1, data.to_vec()).await.is_ok()
    }

    /// Reports a refusal as ssh would: a line on stderr and exit status 255, then closes.
    pub async fn refuse(&self, why: &str) {
        self.refuse_with(why, u32::from(proto::EXIT_OPENBOX_FAILURE)).await;
    }

    /// As [`ChannelOut::refuse`], with an exit status of its own.
    pub async fn refuse_with(&self, why: &str, code: u32) {
        if let Some(record) = &self.record {
            record.end(format!("refused: {}", why.chars().take(200).collect::<String>()));
        }
        self.stderr(format!("openbox agent: {why}\n").as_bytes()).await;
        self.finish(Outcome::Code(code)).await;
    }

    /// Ends the journal's record with `outcome` (what [`ChannelOut::finish`] reports).
    pub fn ended(&self, outcome: &Outcome) {
        if let Some(record) = &self.record {
            record.end(match outcome {
                Outcome::Code(c) => c.to_string(),
                Outcome::Signal(sig, _) => format!("signal {}", crate::signals::name(sig).unwrap_or("?")),
            });
        }
    }

    pub async fn finish(&self, outcome: Outcome) {
        self.ended(&outcome);
        match outcome {
            Outcome::Code(c) => {
                let _ = self.write.exit_status(c).await;
            }
            Outcome::Signal(sig, core) => {
                let _ = self.handle.exit_signal_request(self.id, sig, core, String::new(), String::new()).await;
            }
        }
        let _ = self.write.eof().await;
        let _ = self.write.close().await;
    }
}

pub enum Outcome {
    Code(u32),
    Signal(Sig, bool),
}

/// Where a command's output goes: its caller's channel, or a job's spool on the node.
pub trait Out: Sync {
    /// Whether the bytes were taken (false: nobody takes them any more).
    fn stdout(&self, data: &[u8]) -> impl std::future::Future<Output = bool> + Send;
    fn stderr(&self, data: &[u8]) -> impl std::future::Future<Output = bool> + Send;
}

impl Out for ChannelOut {
    async fn stdout(&self, data: &[u8]) -> bool {
        ChannelOut::stdout(self, data).await
    }

    async fn stderr(&self, data: &[u8]) -> bool {
        ChannelOut::stderr(self, data).await
    }
}

/// The caller's messages (stdin, end of input, signals, close) for a command, read from
/// the channel by a task of its own. russh's session loop — which also carries window
/// adjustments for our output — waits while a channel's messages go unread, so a command
/// loop that is waiting for output window must not also be the one reading them.
///
/// The queue holds at most one SSH window of input: the server reopens a channel's window
/// only as its input is used ([`Window::used`]), so a command that does not read stops
/// the caller from sending instead of filling memory.
pub struct Messages {
    rx: tokio::sync::mpsc::UnboundedReceiver<ChannelMsg>,
    /// Reopens the caller's window as input is used.
    pub window: Window,
}

impl Messages {
    pub async fn recv(&mut self) -> Option<ChannelMsg> {
        self.rx.recv().await
    }

    /// Messages that come from within the agent rather than a channel (to a session's job:
    /// its input, signals, and `Close` to stop it); no window to reopen.
    pub fn queued(rx: tokio::sync::mpsc::UnboundedReceiver<ChannelMsg>) -> Messages {
        Messages { rx, window: Window { to: None, unreported: Default::default() } }
    }
}

pub fn messages(mut input: ChannelReadHalf, out: &ChannelOut) -> Messages {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = input.wait().await {
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    Messages { rx, window: Window::new(out.handle.clone(), out.id) }
}

/// Input used but not yet reported is reported once it reaches this much: the caller's
/// window never runs short by more, and a stream costs one window adjustment per step.
const WINDOW_STEP: u32 = 128 * 1024;

/// The caller's input window on one channel, reopened as its input is used: written to
/// the command, or dropped because nothing will read it.
#[derive(Clone)]
pub struct Window {
    /// The channel whose window it is (none for input from within the agent).
    to: Option<(Handle, ChannelId)>,
    unreported: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Window {
    pub fn new(handle: Handle, id: ChannelId) -> Window {
        Window { to: Some((handle, id)), unreported: Default::default() }
    }

    pub fn used(&self, bytes: usize) {
        use std::sync::atomic::Ordering;
        let Some((handle, id)) = &self.to else { return };
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let total = self.unreported.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        if total >= WINDOW_STEP {
            let _ = handle.window_consumed(*id, self.unreported.swap(0, Ordering::Relaxed));
        }
    }
}

/// Joins a channel to a byte stream until both directions have ended: the caller's data is
/// written into `io` (its window reopened only as it is, so a slow `io` holds the caller
/// back), `io`'s output goes back as channel data, followed by EOF when it ends. Used where
/// the far end is a stream rather than a process: a forwarded connection, the in-agent
/// SFTP server.
pub async fn splice(
    mut read: ChannelReadHalf,
    write: &ChannelWriteHalf<Msg>,
    window: &Window,
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut from_io, mut to_io) = tokio::io::split(io);
    let inbound = async {
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let written = to_io.write_all(&data).await;
                    window.used(data.len());
                    if written.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = to_io.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = from_io.read(&mut buf).await {
            if n == 0 || write.data_bytes(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
        let _ = write.eof().await;
    };
    tokio::join!(inbound, outbound);
}
