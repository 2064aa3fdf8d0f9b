//! Containers on the node's Docker-API engine (Docker, or podman's compatible service),
//! through bollard. A one-shot command gets a fresh container that is removed afterwards;
//! a session keeps one container whose first process is the session's shell. Every
//! container carries the node's label, so ones left by a crashed agent are removed at
//! the next start.
//!
//! This module runs one-shot commands; `engine` is the client for the engine, `session`
//! a session's container.

mod engine;
mod session;

use std::time::Duration;

use bollard::container::LogOutput;
use futures_util::StreamExt;
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::io::AsyncWriteExt;

use engine::Removal;
pub use engine::{Engine, Spec};
pub use session::SessionContainer;

use crate::channel::{ChannelOut, Outcome};

/// Stops a task when dropped (a wait that will never be answered, on an early return).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `command` in a fresh container from `spec` for the channel, then removes the
/// container. Stdin, stdout, stderr, signals and the exit code behave as natively.
pub async fn run_once(
    engine: &Engine,
    spec: Spec<'_>,
    command: &str,
    timeout: Option<Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let mut input = crate::channel::messages(input);
    let cmd = vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()];
    let id = match engine.create(&spec, cmd, true).await {
        Ok(id) => id,
        Err(e) => return out.refuse(&format!("{e}; nothing was run")).await,
    };
    let _removal = Removal { engine: engine.clone(), id: id.clone() };
    let attached = match engine.attach(&id).await {
        Ok(a) => a,
        Err(e) => return out.refuse(&format!("{e}; nothing was run")).await,
    };
    let mut exit = AbortOnDrop(tokio::spawn({
        let (engine, id) = (engine.clone(), id.clone());
        async move { engine.wait(&id, "next-exit").await }
    }));
    if let Err(e) = engine.start(&id, spec.image).await {
        return out.refuse(&format!("{e}; nothing was run")).await;
    }
    let mut output = attached.output;
    // Stdin goes through a task of its own so output keeps draining (as in native runs).
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let mut stdin_tx = Some(stdin_tx);
    let mut stdin = attached.input;
    tokio::spawn(async move {
        while let Some(chunk) = stdin_rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stdin.shutdown().await; // end of input reaches the command
    });

    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut timed_out, mut input_open, mut output_open) = (false, true, true);
    while output_open {
        tokio::select! {
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && !timed_out => {
                timed_out = true;
                engine.kill(&id, "SIGKILL").await;
            },
            item = output.next() => match item {
                Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                    if !out.stdout(&message).await {
                        engine.kill(&id, "SIGKILL").await;
                    }
                }
                Some(Ok(LogOutput::StdErr { message })) => { out.stderr(&message).await; }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    tracing::warn!(container = %id, error = %e, "reading container output failed");
                    output_open = false;
                }
                None => output_open = false,
            },
            msg = input.recv(), if input_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &stdin_tx && tx.send(data).is_err() { stdin_tx = None; }
                }
                Some(ChannelMsg::Eof) => stdin_tx = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(name) = crate::signals::name(&signal) {
                        engine.kill(&id, &format!("SIG{name}")).await;
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    engine.kill(&id, "SIGKILL").await;
                    input_open = false;
                }
                Some(_) => {}
            },
        }
    }
    if timed_out {
        let secs = timeout.map(|t| t.as_secs()).unwrap_or(0);
        out.stderr(format!("openbox: timed out after {secs}s\n").as_bytes()).await;
        return out.finish(Outcome::Code(124)).await;
    }
    // The early wait may have reached the engine only after the container had exited
    // (then it waits for an exit that never comes): after a grace period, ask plainly.
    let exit_code = match tokio::time::timeout(Duration::from_secs(2), &mut exit.0).await {
        Ok(Ok(Some(code))) => Some(code),
        _ => engine.exit_code(&id).await,
    };
    let outcome = match exit_code {
        Some(code) => Outcome::Code(code.clamp(0, 255) as u32),
        None => {
            out.stderr(b"openbox agent: the Docker engine did not report the container's exit code\n").await;
            Outcome::Code(255)
        }
    };
    out.finish(outcome).await;
}
