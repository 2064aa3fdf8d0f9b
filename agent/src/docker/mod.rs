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
use futures_util::{Stream, StreamExt};
use russh::{ChannelReadHalf, Sig};

use engine::Removal;
pub use engine::{Engine, EngineError, Spec};
pub use session::SessionContainer;

use crate::channel::{ChannelOut, Outcome};
use crate::drive::{self, Process, StatusError, Step};

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
    let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()];
    run_container(engine, spec, argv, None, timeout, input, out).await;
}

/// Runs `command` (else a login shell) in a fresh container from `spec` with a terminal
/// of the caller's size (`spec.tty`), then removes the container.
pub async fn run_in_terminal(
    engine: &Engine,
    spec: Spec<'_>,
    command: Option<&str>,
    size: (u32, u32),
    timeout: Option<Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let argv = match command {
        Some(command) => vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()],
        None => vec!["/bin/sh".to_owned(), "-l".to_owned()],
    };
    run_container(engine, spec, argv, Some(size), timeout, input, out).await;
}

async fn run_container(
    engine: &Engine,
    spec: Spec<'_>,
    argv: Vec<String>,
    size: Option<(u32, u32)>,
    timeout: Option<Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let input = crate::channel::messages(input, &out);
    let id = match engine.create(&spec, argv, true).await {
        Ok(id) => id,
        Err(e) => return out.refuse(&format!("{e}; nothing was run")).await,
    };
    let _removal = Removal { engine: engine.clone(), id: id.clone() };
    let attached = match engine.attach(&id).await {
        Ok(a) => a,
        Err(e) => return out.refuse(&format!("{e}; nothing was run")).await,
    };
    let early_exit = AbortOnDrop(tokio::spawn({
        let (engine, id) = (engine.clone(), id.clone());
        async move { engine.wait(&id, "next-exit").await }
    }));
    if let Err(e) = engine.start(&id, spec.image).await {
        return out.refuse(&format!("{e}; nothing was run")).await;
    }
    if let Some((cols, rows)) = size {
        engine.resize(&id, cols, rows).await;
    }
    let container = Container {
        engine: engine.clone(),
        id,
        output: attached.output,
        message: bytes::Bytes::new(),
        output_open: true,
        early_exit: Some(early_exit),
        exit: None,
        limit: spec.hold.process_limit().map(|max| ForkWatch { max, failed: false, told: false }),
    };
    drive::run(container, attached.input, timeout, input, out).await;
}

/// A one-shot's container as the loop drives it: its output comes interleaved on one
/// stream, which ends when the container stops; the exit code is asked for then.
struct Container {
    engine: Engine,
    id: String,
    output: std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    /// The piece of output last handed on.
    message: bytes::Bytes,
    output_open: bool,
    /// The wait for the container's exit, asked before it started.
    early_exit: Option<AbortOnDrop<Option<i64>>>,
    /// The exit code, asked for once the output has ended.
    exit: Option<AbortOnDrop<Option<i64>>>,
    /// The engine's process limit on the container, when it has one.
    limit: Option<ForkWatch>,
}

/// Whether a command under the engine's process limit could not start a process: the
/// engine says nothing, so the command's own words (a fork's `EAGAIN`) are what tell; the
/// caller is then told the limit and the flag that sets it.
struct ForkWatch {
    max: u64,
    failed: bool,
    told: bool,
}

impl ForkWatch {
    fn saw(&mut self, stderr: &[u8]) {
        let text = String::from_utf8_lossy(stderr);
        self.failed |=
            ["Resource temporarily unavailable", "can't fork", "Cannot fork"].iter().any(|w| text.contains(w));
    }
}

impl Process for Container {
    async fn next(&mut self) -> Step<'_> {
        while self.output_open {
            match self.output.next().await {
                Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                    self.message = message;
                    return Step::Stdout(&self.message);
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if let Some(watch) = &mut self.limit {
                        watch.saw(&message);
                    }
                    self.message = message;
                    return Step::Stderr(&self.message);
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    tracing::warn!(container = %self.id, error = %e, "reading container output failed");
                    self.output_open = false;
                }
                None => self.output_open = false,
            }
        }
        if let Some(watch) = &mut self.limit
            && watch.failed
            && !watch.told
        {
            watch.told = true;
            self.message = format!("{}\n", crate::confine::process_limit_hint(watch.max)).into();
            return Step::Stderr(&self.message);
        }
        let exit = self.exit.get_or_insert_with(|| {
            let (engine, id, early) = (self.engine.clone(), self.id.clone(), self.early_exit.take());
            AbortOnDrop(tokio::spawn(async move {
                // The early wait may have reached the engine only after the container had
                // exited (then it waits for an exit that never comes): after a grace
                // period, ask plainly.
                if let Some(mut early) = early
                    && let Ok(Ok(Some(code))) = tokio::time::timeout(Duration::from_secs(2), &mut early.0).await
                {
                    return Some(code);
                }
                engine.exit_code(&id).await
            }))
        });
        Step::Ended(match (&mut exit.0).await {
            Ok(Some(code)) => Ok(Outcome::Code(code.clamp(0, 255) as u32)),
            _ => Err(StatusError::NoExitCode),
        })
    }

    async fn signal(&mut self, sig: &Sig) {
        if let Some(name) = crate::signals::name(sig) {
            self.engine.kill(&self.id, &format!("SIG{name}")).await;
        }
    }

    async fn stop(&mut self) {
        self.engine.kill(&self.id, "SIGKILL").await;
    }

    async fn resize(&mut self, cols: u32, rows: u32) {
        self.engine.resize(&self.id, cols, rows).await;
    }
}

/// A running container to start a command in (a session's), and for whom.
pub struct Entry<'a> {
    pub engine: &'a Engine,
    pub container: &'a str,
    pub env: &'a [(&'a str, &'a str)],
    /// The local account to run as (none: the image's user).
    pub login: Option<&'a crate::run_as::Login>,
}

/// Runs `command` (else a login shell) in the running container of `entry` with a
/// terminal of the caller's size.
pub async fn exec_in_terminal(
    entry: Entry<'_>,
    command: Option<&str>,
    pty: &crate::pty::PtyRequest,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let input = crate::channel::messages(input, &out);
    match start_in_terminal(entry, command, pty).await {
        Ok((exec, stdin)) => drive::run(exec, stdin, None, input, out).await,
        Err(why) => out.refuse(&why).await,
    }
}

/// Starts `command` (or a login shell) in the session's container with a terminal: the
/// exec, for the loop to drive, and its input.
pub async fn start_in_terminal(
    entry: Entry<'_>,
    command: Option<&str>,
    pty: &crate::pty::PtyRequest,
) -> Result<(Exec, impl tokio::io::AsyncWrite + Unpin + Send + 'static), String> {
    let Entry { engine, container, env, login } = entry;
    let argv = match command {
        Some(command) => vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()],
        None => vec!["/bin/sh".to_owned(), "-l".to_owned()],
    };
    let env = env.iter().map(|(k, v)| format!("{k}={v}")).chain([format!("TERM={}", pty.term)]).collect();
    let user = login.map(|l| format!("{}:{}", l.uid, l.gid));
    let (exec_id, output, stdin) =
        engine.exec_in_terminal(container, argv, env, user).await.map_err(|e| format!("{e}; nothing was run"))?;
    engine.resize_exec(&exec_id, pty.cols, pty.rows).await;
    Ok((Exec { engine: engine.clone(), id: exec_id, output, message: bytes::Bytes::new(), output_open: true }, stdin))
}

/// A command started in a session's container with a terminal, as the loop drives it.
pub struct Exec {
    engine: Engine,
    id: String,
    output: engine::ExecOutput,
    message: bytes::Bytes,
    output_open: bool,
}

/// The process of exec `id` on this host, while it runs (an engine elsewhere does not say).
async fn exec_host_pid(engine: &Engine, id: &str) -> Option<u32> {
    engine.exec_state(id).await.1.filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
}

impl Process for Exec {
    async fn next(&mut self) -> Step<'_> {
        while self.output_open {
            match self.output.next().await {
                Some(Ok(
                    LogOutput::StdOut { message } | LogOutput::Console { message } | LogOutput::StdErr { message },
                )) => {
                    self.message = message;
                    return Step::Stdout(&self.message);
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(_)) | None => self.output_open = false,
            }
        }
        // The engine may take a moment to record the exit once the output has ended.
        for _ in 0..100 {
            if let (Some(code), _) = self.engine.exec_state(&self.id).await {
                return Step::Ended(Ok(Outcome::Code(code.clamp(0, 255) as u32)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Step::Ended(Err(StatusError::NoExitCode))
    }

    async fn signal(&mut self, sig: &Sig) {
        if let (Some(pid), Some(s)) = (exec_host_pid(&self.engine, &self.id).await, crate::signals::to_signal(sig)) {
            crate::procs::signal(pid, s);
        }
    }

    async fn stop(&mut self) {
        // Everything it started too (a subshell, the program it runs): they hold the
        // terminal open, and the exec's output with it.
        if let Some(pid) = exec_host_pid(&self.engine, &self.id).await {
            for p in crate::procs::descendants(pid) {
                crate::procs::signal(p, rustix::process::Signal::KILL);
            }
            crate::procs::signal(pid, rustix::process::Signal::KILL);
        }
    }

    async fn resize(&mut self, cols: u32, rows: u32) {
        self.engine.resize_exec(&self.id, cols, rows).await;
    }
}
