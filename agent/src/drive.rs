//! The loop every one-shot command runs under, whatever runs it — a process here, an
//! nspawn container, a Docker container: the caller's stdin fed in, stdout and stderr
//! streamed back separately, the caller's signals passed on, a timeout, the caller going
//! away, and the exit status reported last.

use std::collections::VecDeque;
use std::time::Duration;

use russh::{ChannelMsg, Sig};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::channel::{ChannelOut, Messages, Out, Outcome, Window};

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

    /// The caller's terminal changed size (commands in a pseudo-terminal only).
    async fn resize(&mut self, _cols: u32, _rows: u32) {}

    /// The caller takes no more stdout: the command is stopped.
    async fn stdout_lost(&mut self) {
        self.stop().await;
    }
}

/// Drives `command` for the channel until it has ended and its status has been sent.
/// `stdin` is the command's input, fed from the caller's data.
pub async fn run(
    command: impl Process,
    stdin: impl AsyncWrite + Unpin + Send + 'static,
    timeout: Option<Duration>,
    input: Messages,
    out: ChannelOut,
) {
    let outcome = drive(command, stdin, timeout, input, &out).await;
    out.finish(outcome).await;
}

/// Drives `command` until it has ended, its output to `out` (a channel, or a job's
/// spool); how it ended. `input` is what the caller sends: data for `stdin`, signals,
/// window changes, and its going away.
pub async fn drive(
    mut command: impl Process,
    stdin: impl AsyncWrite + Unpin + Send + 'static,
    timeout: Option<Duration>,
    mut input: Messages,
    out: &impl Out,
) -> Outcome {
    let mut stdin = Some(feed(std::future::ready(Ok(stdin)), input.window.clone()));
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut timed_out, mut input_open) = (false, true);
    // Once the caller is gone its window never opens again: the rest of the output is
    // drained here and dropped, never waited on.
    let mut gone = false;
    // What the caller sent while output waited for room; handled next, in order.
    let mut pending: VecDeque<ChannelMsg> = VecDeque::new();
    // Output is drained until it all ends, as sshd does; the status is sent last.
    let ended = loop {
        let (mut stdout_lost, mut caller_gone) = (false, false);
        tokio::select! {
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && !timed_out => {
                timed_out = true;
                command.stop().await;
            },
            step = command.next() => match step {
                // A caller that stops reading (its window stays shut) and then goes away
                // must still be noticed: while output waits for room, the caller's
                // messages are watched too.
                Step::Stdout(_) | Step::Stderr(_) if gone => {}
                Step::Stdout(data) => match deliver(out.stdout(data), &mut input, &mut input_open, &mut pending).await {
                    Some(true) => {}
                    Some(false) => stdout_lost = true,
                    None => caller_gone = true,
                },
                Step::Stderr(data) => {
                    if deliver(out.stderr(data), &mut input, &mut input_open, &mut pending).await.is_none() {
                        caller_gone = true;
                    }
                }
                Step::Ended(ended) => break ended,
            },
            msg = next_message(&mut pending, &mut input), if input_open || !pending.is_empty() => match msg {
                Some(ChannelMsg::Data { data }) => match &stdin {
                    Some(tx) => if let Err(lost) = tx.send(data) {
                        input.window.used(lost.0.len());
                        stdin = None;
                    },
                    // Nothing will read it.
                    None => input.window.used(data.len()),
                },
                Some(ChannelMsg::ExtendedData { data, .. }) => input.window.used(data.len()),
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => command.signal(&signal).await,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    command.resize(col_width, row_height).await;
                }
                Some(ChannelMsg::Close) | None => {
                    // The caller is gone: nobody will read the rest.
                    command.stop().await;
                    input_open = false;
                    gone = true;
                }
                Some(_) => {}
            },
        }
        if stdout_lost {
            command.stdout_lost().await;
        }
        if caller_gone {
            gone = true;
            command.stop().await;
        }
    };
    if timed_out {
        let after = proto::time::span(timeout.unwrap_or_default());
        out.stderr(format!("openbox: timed out after {after}\n").as_bytes()).await;
        return Outcome::Code(124);
    }
    match ended {
        Ok(outcome) => outcome,
        Err(e) => {
            out.stderr(format!("openbox agent: {e}\n").as_bytes()).await;
            Outcome::Code(255)
        }
    }
}

/// Waits for `write` (output waiting for window room), keeping the caller's messages for
/// later — except the caller going away, which ends the wait: then `None`.
async fn deliver(
    write: impl std::future::Future<Output = bool>,
    input: &mut Messages,
    input_open: &mut bool,
    pending: &mut VecDeque<ChannelMsg>,
) -> Option<bool> {
    tokio::pin!(write);
    loop {
        tokio::select! {
            written = &mut write => return Some(written),
            msg = input.recv(), if *input_open => match msg {
                Some(ChannelMsg::Close) | None => {
                    *input_open = false;
                    return None;
                }
                Some(msg) => pending.push_back(msg),
            },
        }
    }
}

/// The caller's next message: one kept while output waited, else a new one.
async fn next_message(pending: &mut VecDeque<ChannelMsg>, input: &mut Messages) -> Option<ChannelMsg> {
    match pending.pop_front() {
        Some(msg) => Some(msg),
        None => input.recv().await,
    }
}

/// Writes the caller's input to the command's stdin (once `open` gives it) from a task of
/// its own, so a command that does not read its input never stops its output from being
/// drained. Each chunk written reopens the caller's window by as much, so what waits here
/// is at most one window. Dropping the sender is the end of input, which reaches the
/// command.
pub fn feed<W: AsyncWrite + Unpin + Send + 'static>(
    open: impl std::future::Future<Output = std::io::Result<W>> + Send + 'static,
    window: Window,
) -> UnboundedSender<bytes::Bytes> {
    let (tx, mut rx) = unbounded_channel::<bytes::Bytes>();
    tokio::spawn(async move {
        let mut stdin = match open.await {
            Ok(stdin) => stdin,
            Err(e) => {
                tracing::debug!(error = %e, "the command's stdin could not be opened; its input is dropped");
                rx.close();
                while let Some(chunk) = rx.recv().await {
                    window.used(chunk.len());
                }
                return;
            }
        };
        while let Some(chunk) = rx.recv().await {
            let written = stdin.write_all(&chunk).await;
            window.used(chunk.len());
            if written.is_err() {
                // The command closed its input: the rest is dropped, and used so.
                rx.close();
                while let Some(chunk) = rx.recv().await {
                    window.used(chunk.len());
                }
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
    tx
}
