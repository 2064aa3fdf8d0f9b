//! Running a command on a node: [`connect`] finds the node and a connection (warm or
//! cold), then the command runs on a channel of its own with the call's streams.

use std::future::Future;

use net::ssh::{ExitStatus, PtySpec, SshError, Started};
use proto::api::{Node, Target};
use proto::request::RunRequest;

use crate::Daemon;
use crate::account::Account;
use crate::cap::{Capped, Truncated};
use crate::connect::{ConnectError, Want, connect};
use crate::io::{CallInput, CallOutput};
use crate::terminal::Terminal;

/// Exit code openbox uses for its own failures.
pub const FAILED: u8 = proto::EXIT_OPENBOX_FAILURE;

/// How a run ended, for the caller's exit.
pub struct Outcome {
    pub exit_code: u8,
    pub signal: Option<String>,
    pub truncated: Truncated,
}

/// Why a command did not run to its end.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("no command given: openbox -t TAG CMD [ARGS…]")]
    NoCommand,
    #[error("a terminal (-i) needs one: stdin is not a terminal")]
    NoTerminal,
    #[error("cannot put the terminal in raw mode: {0}")]
    RawMode(std::io::Error),
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    /// Not logged in, or the login or key could not be read (already worded for people).
    #[error("{0:#}")]
    Account(anyhow::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// Runs `req` (in a pseudo-terminal, with `terminal` the caller's, when it asks for
/// one); failures are reported on the call's stderr as one line and exit 255.
pub async fn run(
    d: &Daemon,
    req: RunRequest,
    input: CallInput,
    terminal: Option<&Terminal>,
    output: &mut CallOutput,
    cancel: impl Future<Output = ()>,
) -> Outcome {
    match run_inner(d, req, input, terminal, output, cancel).await {
        Ok((status, node_name, truncated)) => {
            let signal = match &status {
                ExitStatus::Signal { name, .. } => {
                    output
                        .eprint(&format!("openbox: remote command on {node_name} was killed by signal {name}\n"))
                        .await;
                    Some(name.clone())
                }
                ExitStatus::Code(_) => None,
            };
            Outcome { exit_code: status.exit_code(), signal, truncated }
        }
        // A cancelled call has nobody to tell, nor to write to.
        Err(RunError::Ssh(SshError::Cancelled)) => {
            output.abandon();
            Outcome { exit_code: FAILED, signal: None, truncated: Truncated::default() }
        }
        // An output failure is told by `conclude`.
        Err(RunError::Ssh(SshError::Output(_))) => {
            Outcome { exit_code: FAILED, signal: None, truncated: Truncated::default() }
        }
        Err(e) => {
            output.eprint(&format!("openbox: {e}\n")).await;
            Outcome { exit_code: FAILED, signal: None, truncated: Truncated::default() }
        }
    }
}

/// Awaits `connecting`; if it takes more than a moment while this openboxd is still
/// joining its tailnet, says so on the call's stderr (the wait is that, most likely).
async fn with_progress<T>(d: &Daemon, output: &mut CallOutput, connecting: impl Future<Output = T>) -> T {
    tokio::pin!(connecting);
    tokio::select! {
        done = &mut connecting => return done,
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    }
    if let Some(mesh) = d.mesh.as_ref().filter(|m| m.joining()) {
        output.eprint(&format!("openbox: joining the tailnet at {} …\n", mesh.control_url())).await;
    }
    connecting.await
}

async fn run_inner(
    d: &Daemon,
    req: RunRequest,
    input: CallInput,
    terminal: Option<&Terminal>,
    output: &mut CallOutput,
    cancel: impl Future<Output = ()>,
) -> Result<(ExitStatus, String, Truncated), RunError> {
    // A terminal runs the login shell when no command is given; forwards alone are held.
    if req.command.is_empty() && req.tty.is_none() && req.forwards.is_empty() {
        return Err(RunError::NoCommand);
    }
    let pty = match (&req.tty, terminal) {
        (Some(tty), Some(t)) if t.is_tty() => {
            let (cols, rows) = t.size();
            Some(PtySpec { term: tty.term.clone(), cols, rows })
        }
        (Some(_), _) => return Err(RunError::NoTerminal),
        (None, _) => None,
    };
    let acct = d.account().map_err(RunError::Account)?;
    let command = (!req.command.is_empty()).then(|| req.command.join(" "));
    // Forwards first, for the command to use; it then runs on their node.
    let mut target = req.target.clone();
    let forwards = if req.forwards.is_empty() {
        None
    } else {
        let want = Want { target: &req.target, session: None, isolation: &req.isolation };
        let (node, conn) = with_progress(d, output, connect(d, &acct, want)).await.map_err(StartError::from)?;
        let (forwards, said, mut notices) = crate::forward::Forwards::start(conn, &node.name, &req.forwards).await?;
        if command.is_none() && pty.is_none() {
            // Nothing to run: hold the forwards until the caller goes away.
            for line in said {
                output.eprint(&format!("openbox: forwarding {line}\n")).await;
            }
            output.eprint("openbox: Ctrl-C to stop\n").await;
            tokio::pin!(cancel);
            loop {
                tokio::select! {
                    () = &mut cancel => return Err(RunError::Ssh(SshError::Cancelled)),
                    Some(notice) = notices.recv() => output.eprint(&notice).await,
                }
            }
        }
        // A port the node chose is worth saying; the rest the caller wrote.
        for line in said.iter().filter(|l| req.forwards.iter().any(|f| f.port == 0) && l.starts_with("-R")) {
            output.eprint(&format!("openbox: forwarding {line}\n")).await;
        }
        target = Target::Node(node.id.clone());
        Some(forwards)
    };
    let want = Want { target: &target, session: req.session.as_deref(), isolation: &req.isolation };
    let timeout = req.timeout_secs.map(|t| t.to_string());
    let env: Vec<(&str, &str)> = timeout.iter().map(|t| (proto::exec::TIMEOUT_ENV, t.as_str())).collect();

    let what = What { command: command.as_deref(), pty: pty.as_ref() };
    let (node, mut started) = with_progress(d, output, start(d, &acct, want, what, &env)).await?;
    // Raw from here until the guard drops, however the call ends.
    let _raw = match (&pty, terminal) {
        (Some(_), Some(t)) => {
            if let Ok(resizes) = t.resizes() {
                started = started.with_resizes(resizes);
            }
            Some(t.raw().map_err(RunError::RawMode)?)
        }
        _ => None,
    };
    let mut capped = Capped::new(output, req.max_output);
    let status = started.finish(input, &mut capped, cancel).await;
    let truncated = capped.finish().await;
    if let Some(forwards) = forwards {
        forwards.stop().await;
    }
    Ok((status?, node.name, truncated))
}

/// What to start on a channel: a command, or (in a terminal) the login shell; in a
/// terminal when `pty` is given.
#[derive(Clone, Copy)]
pub(crate) struct What<'a> {
    pub command: Option<&'a str>,
    pub pty: Option<&'a PtySpec>,
}

/// Connects for `want` and starts `command` there. A pooled connection can die without our
/// noticing (the agent restarted): then the command never started, and one retry on a
/// fresh connection is safe.
pub(crate) async fn start(
    d: &Daemon,
    acct: &Account,
    want: Want<'_>,
    what: What<'_>,
    env: &[(&str, &str)],
) -> Result<(Node, Started), StartError> {
    let mut retried = false;
    loop {
        let (node, conn) = connect(d, acct, want).await?;
        let started = match (what.pty, what.command) {
            (Some(pty), command) => conn.start_in_pty(command, env, pty).await,
            (None, Some(command)) => conn.start(command, env).await,
            (None, None) => unreachable!("a shell is started only in a terminal"),
        };
        match started {
            Ok(started) => return Ok((node, started)),
            Err(SshError::Stale { .. }) if !retried => {
                tracing::info!(node = %node.id, "pooled connection was dead; retrying on a new one");
                acct.pool.discard(&want.key(&node.id), &conn).await;
                retried = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

impl From<StartError> for RunError {
    fn from(e: StartError) -> RunError {
        match e {
            StartError::Connect(e) => RunError::Connect(e),
            StartError::Ssh(e) => RunError::Ssh(e),
        }
    }
}
