//! Running a command on a node: [`connect`] finds the node and a connection (warm or
//! cold), then the command runs on a channel of its own with the call's streams.

use std::future::Future;

use net::ssh::{ExitStatus, SshError, Started};
use proto::api::Node;
use proto::request::RunRequest;

use crate::Daemon;
use crate::account::Account;
use crate::cap::{Capped, Truncated};
use crate::connect::{ConnectError, Want, connect};
use crate::io::{CallInput, CallOutput};

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
    /// Not logged in, or the login or key could not be read (already worded for people).
    #[error("{0:#}")]
    Account(anyhow::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// Runs `req`; failures are reported on the call's stderr as one line and exit 255.
pub async fn run(
    d: &Daemon,
    req: RunRequest,
    input: CallInput,
    output: &mut CallOutput,
    cancel: impl Future<Output = ()>,
) -> Outcome {
    match run_inner(d, req, input, output, cancel).await {
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
    output: &mut CallOutput,
    cancel: impl Future<Output = ()>,
) -> Result<(ExitStatus, String, Truncated), RunError> {
    if req.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    let acct = d.account().map_err(RunError::Account)?;
    let command = req.command.join(" ");
    let want = Want {
        target: &req.target,
        session: req.session.as_deref(),
        isolation: &req.isolation,
        command: Some(&command),
    };
    let timeout = req.timeout_secs.map(|t| t.to_string());
    let env: Vec<(&str, &str)> = timeout.iter().map(|t| (proto::exec::TIMEOUT_ENV, t.as_str())).collect();

    let (node, started) = with_progress(d, output, start(d, &acct, want, &command, &env)).await?;
    let mut capped = Capped::new(output, req.max_output);
    let status = started.finish(input, &mut capped, cancel).await;
    let truncated = capped.finish().await;
    Ok((status?, node.name, truncated))
}

/// Connects for `want` and starts `command` there. A pooled connection can die without our
/// noticing (the agent restarted): then the command never started, and one retry on a
/// fresh connection is safe.
pub(crate) async fn start(
    d: &Daemon,
    acct: &Account,
    want: Want<'_>,
    command: &str,
    env: &[(&str, &str)],
) -> Result<(Node, Started), StartError> {
    let mut retried = false;
    loop {
        let (node, conn) = connect(d, acct, want).await?;
        match conn.start(command, env).await {
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
