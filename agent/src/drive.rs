//! The loop every one-shot command runs under, whatever runs it — a process here, an
//! nspawn container, a Docker container: the caller's stdin fed in, stdout and stderr
//! streamed back separately, the caller's signals passed on, a timeout, the caller going
//! away, and the exit status reported last.

use std::time::Duration;

use russh::{ChannelMsg, Sig};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::channel::{ChannelOut, Messages, Outcome};

/// What a running command does next, as the loop sees it.
pub enum Step<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
    /// All its output has ended and so has the command: how, or why that is not known.
    Ended(Result<Outcome, StatusError>),
}

/// Why a command's exit status is not known; the caller reads this line, then status 255.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("waiting for the command failed: {0}")]
    Wait(std::io::Error),
    #[error("the Docker engine did not report the container's exit code")]
    NoExitCode,
}

/// A command started for a channel, for the loop to drive.
pub trait Process {
    /// Its next piece of output, or its end once all output has ended and its status is
    /// known. The loop drops this future whenever the caller needs serving and asks again,
    /// so nothing may be lost when it is dropped.
    async fn next(&mut self) -> Step<'_>;

    /// Passes on a signal the caller sent.
    async fn signal(&mut self, sig: &Sig);

    /// Ends everything the command started (the timeout, or the caller gone).
    async fn stop(&mut self);

    /// The caller takes no more stdout: the command is stopped.
    async fn stdout_lost(&mut self) {
        self.stop().await;
    }
}

/// Drives `command` for the channel until it has ended and its status has been sent.
/// `stdin` is the command's input, fed from the caller's data.
pub async fn run(
    mut command: impl Process,
    stdin: impl AsyncWrite + Unpin + Send + 'static,
    timeout: Option<Duration>,
    mut input: Messages,
    out: ChannelOut,
) {
    let mut stdin = Some(feed(stdin));
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut timed_out, mut input_open) = (false, true);
    // Output is drained until it all ends, as sshd does; the status is sent last.
    let ended = loop {
        tokio::select! {
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && !timed_out => {
                timed_out = true;
                command.stop().await;
            },
            step = command.next() => match step {
                Step::Stdout(data) => {
                    if !out.stdout(data).await {
                        command.stdout_lost().await;
                    }
                }
                Step::Stderr(data) => {
                    out.stderr(data).await;
                }
                Step::Ended(ended) => break ended,
            },
            msg = input.recv(), if input_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &stdin && tx.send(data).is_err() { stdin = None; }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => command.signal(&signal).await,
                Some(ChannelMsg::Close) | None => {
                    // The caller is gone: nobody will read the rest.
                    command.stop().await;
                    input_open = false;
                }
                Some(_) => {}
            },
        }
    };
    if timed_out {
        let secs = timeout.map(|t| t.as_secs()).unwrap_or(0);
        out.stderr(format!("openbox: timed out after {secs}s\n").as_bytes()).await;
        return out.finish(Outcome::Code(124)).await;
    }
    let outcome = match ended {
        Ok(outcome) => outcome,
        Err(e) => {
            out.stderr(format!("openbox agent: {e}\n").as_bytes()).await;
            Outcome::Code(255)
        }
    };
    out.finish(outcome).await;
}

/// Writes the caller's input to `stdin` from a task of its own, so a command that does
/// not read its input never stops its output from being drained. Dropping the sender is
/// the end of input, which reaches the command.
fn feed(mut stdin: impl AsyncWrite + Unpin + Send + 'static) -> UnboundedSender<bytes::Bytes> {
    let (tx, mut rx) = unbounded_channel::<bytes::Bytes>();
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
    tx
}
