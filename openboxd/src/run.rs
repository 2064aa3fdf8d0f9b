//! Running a command on a node: [`connect`] finds the node and a connection (warm or
//! cold), then the command runs on a channel of its own with the call's streams.

use std::future::Future;
use std::time::Duration;

use net::halt::{Halt, Halts, Stops as _};
use net::ssh::{ExitStatus, PtySpec, SshError};
use proto::api::Target;
use proto::request::RunRequest;
use proto::time::Seconds;

use crate::Daemon;
use crate::cap::{Capped, Truncated};
use crate::connect::{ConnectError, StartError, Want, What, connect, start};
use crate::io::{CallInput, CallIo, CallOutput};
use crate::terminal::Terminal;

/// Exit code openbox uses for its own failures.
pub const FAILED: u8 = proto::EXIT_OPENBOX_FAILURE;

/// How a run ended, for the caller's exit.
pub struct Outcome {
    pub exit_code: u8,
    pub signal: Option<String>,
    pub truncated: Truncated,
    /// The node it ran on, once one was reached.
    pub node: Option<String>,
}

impl Outcome {
    fn failed(exit_code: u8) -> Outcome {
        Outcome { exit_code, signal: None, truncated: Truncated::default(), node: None }
    }
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

/// The exit code of a call whose deadline passed, as `timeout(1)` gives.
pub const TIMED_OUT: u8 = 124;

/// How long after a call's deadline openboxd stops it itself: a node that answers has
/// stopped the command by then (it is told the same deadline) and said how; one that
/// does not answer holds the call no longer than this past it.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// The call's deadline (`--timeout`) as openboxd holds it: from now, with the grace.
pub fn deadline(timeout: Option<Seconds>) -> Option<tokio::time::Instant> {
    timeout.map(|t| tokio::time::Instant::now() + t.0 + DEADLINE_GRACE)
}

/// `OPENBOX_TIMEOUT` for the agent: what is left of the deadline, to the millisecond.
pub fn agent_timeout(deadline: Option<tokio::time::Instant>) -> Option<String> {
    let left = deadline?.saturating_duration_since(tokio::time::Instant::now()).saturating_sub(DEADLINE_GRACE);
    Some(proto::exec::timeout_value(left))
}

/// How a halt that ended the wait for a node shows as an error.
pub(crate) fn halt_error(halt: Halt) -> SshError {
    match halt {
        Halt::Gone => SshError::Cancelled,
        Halt::Deadline => SshError::TimedOut,
        Halt::Signal(name) => SshError::Interrupted(name),
    }
}

/// Runs `req` with the call's streams (in a pseudo-terminal, the caller's terminal, when it
/// asks for one); failures are reported on the call's stderr as one line and exit 255. The
/// call's halts stop it early (the caller gone or signalled); its `--timeout` is a deadline
/// for the whole call, connecting included, held here whatever state the node is in.
pub async fn run(d: &Daemon, req: RunRequest, io: &mut CallIo) -> Outcome {
    let timeout_secs = req.timeout_secs;
    let mut halts = io.halts.clone().with_deadline(deadline(timeout_secs));
    let input = io.take_input();
    let output = &mut io.output;
    match run_inner(d, req, input, io.terminal.as_ref(), output, &mut halts).await {
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
            Outcome { exit_code: status.exit_code(), signal, truncated, node: Some(node_name) }
        }
        // A cancelled call has nobody to tell, nor to write to.
        Err(RunError::Ssh(SshError::Cancelled)) => {
            output.abandon();
            Outcome::failed(FAILED)
        }
        Err(RunError::Ssh(SshError::TimedOut)) => {
            output.eprint(&format!("openbox: timed out after {}\n", timeout_secs.unwrap_or_default())).await;
            Outcome::failed(TIMED_OUT)
        }
        // The caller was signalled and the command did not end within a moment of it: it
        // was stopped, and the call ends as if the signal had killed it.
        Err(RunError::Ssh(SshError::Interrupted(name))) => Outcome::failed(proto::exec::signal_exit_code(name)),
        // An output failure is told by `conclude`.
        Err(RunError::Ssh(SshError::Output(_))) => Outcome::failed(FAILED),
        Err(e) => {
            output.eprint(&format!("openbox: {e}\n")).await;
            Outcome::failed(FAILED)
        }
    }
}

/// One command's run as one JSON object on stdout (`openbox --json -t T CMD`): its output,
/// exit code, signal, duration and what the cap cut — openbox's own messages in `error`.
/// The whole output is held until the command ends (bound it with `--max-output`).
pub async fn run_json(d: &Daemon, req: RunRequest, io: &mut CallIo) -> u8 {
    let began = std::time::Instant::now();
    let caller = std::mem::replace(&mut io.output, CallOutput::buffer());
    let outcome = run(d, req, io).await;
    let CallOutput::Buffer(held) = std::mem::replace(&mut io.output, caller) else { unreachable!("put there above") };
    let mut value = serde_json::json!({
        "node": outcome.node,
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "truncated": outcome.truncated,
        "duration_ms": began.elapsed().as_millis() as u64,
    });
    for (name, bytes) in [("stdout", &held.stdout), ("stderr", &held.stderr)] {
        match std::str::from_utf8(bytes) {
            Ok(text) => value[name] = text.into(),
            // Not text: the exact bytes, never replacement characters.
            Err(_) => {
                use base64::Engine as _;
                value[format!("{name}_base64")] = base64::engine::general_purpose::STANDARD.encode(bytes).into();
            }
        }
    }
    let notes = String::from_utf8_lossy(&held.notes);
    let notes: Vec<&str> = notes.lines().map(|l| l.strip_prefix("openbox: ").unwrap_or(l)).collect();
    if !notes.is_empty() {
        value["error"] = notes.join("; ").into();
    }
    io.output.print(&format!("{}\n", serde_json::to_string_pretty(&value).expect("serializable"))).await;
    outcome.exit_code
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
    halts: &mut Halts,
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
        let (node, conn) = tokio::select! {
            connected = with_progress(d, output, connect(d, &acct, want)) => connected.map_err(StartError::from)?,
            halt = halts.next() => return Err(RunError::Ssh(halt_error(halt))),
        };
        let (forwards, said, mut notices) = tokio::select! {
            started = crate::forward::Forwards::start(conn, &node.name, &req.forwards) => started?,
            halt = halts.next() => return Err(RunError::Ssh(halt_error(halt))),
        };
        if command.is_none() && pty.is_none() {
            // Nothing to run: hold the forwards until the caller goes away or is stopped.
            for line in said {
                output.eprint(&format!("openbox: forwarding {line}\n")).await;
            }
            output.eprint("openbox: Ctrl-C to stop\n").await;
            loop {
                tokio::select! {
                    halt = halts.next() => {
                        forwards.stop().await;
                        return Err(RunError::Ssh(halt_error(halt)));
                    }
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
    let what = What { command: command.as_deref(), pty: pty.as_ref(), subsystem: None };
    // Connecting counts against the deadline too, and a caller that is gone or stopped
    // meanwhile starts nothing.
    let deadline = halts.deadline();
    let starting = async {
        let timeout = agent_timeout(deadline);
        let env: Vec<(&str, &str)> = timeout.iter().map(|t| (proto::exec::TIMEOUT_ENV, t.as_str())).collect();
        start(d, &acct, want, what, &env).await
    };
    let (node, mut started) = tokio::select! {
        started = with_progress(d, output, starting) => started?,
        halt = halts.next() => return Err(RunError::Ssh(halt_error(halt))),
    };
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
    let status = started.finish_until(input, &mut capped, halts).await;
    let truncated = capped.finish().await;
    if let Some(forwards) = forwards {
        forwards.stop().await;
    }
    Ok((status?, node.name, truncated))
}

impl From<StartError> for RunError {
    fn from(e: StartError) -> RunError {
        match e {
            StartError::Connect(e) => RunError::Connect(e),
            StartError::Ssh(e) => RunError::Ssh(e),
        }
    }
}
