//! Running a command on a node. Warm path: resolve the target from the registry mirror,
//! take the pooled connection (its certificate still good), open a channel — no
//! control-plane round trip. Cold path: ask the control plane to dispatch.

use std::future::Future;

use anyhow::bail;
use net::ssh::{ExitStatus, SshError};
use proto::api::{Node, Target};
use proto::request::RunRequest;

use crate::Daemon;
use crate::io::{CallInput, CallOutput};
use crate::mirror::Resolved;
use crate::pool::{Key, dispatch};

/// Exit code openbox uses for its own failures.
pub const FAILED: u8 = proto::EXIT_OPENBOX_FAILURE;

/// How a run ended, for the caller's exit.
pub struct Outcome {
    pub exit_code: u8,
    pub signal: Option<String>,
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
        Ok((status, node)) => {
            let signal = match &status {
                ExitStatus::Signal { name, .. } => {
                    output
                        .eprint(&format!("openbox: remote command on {} was killed by signal {name}\n", node.name))
                        .await;
                    Some(name.clone())
                }
                ExitStatus::Code(_) => None,
            };
            Outcome { exit_code: status.exit_code(), signal }
        }
        Err(e) => {
            // A cancelled call has nobody to tell; an output failure is told by `conclude`.
            if !matches!(e.downcast_ref::<SshError>(), Some(SshError::Cancelled | SshError::Output(_))) {
                output.eprint(&format!("openbox: {e:#}\n")).await;
            }
            Outcome { exit_code: FAILED, signal: None }
        }
    }
}

async fn run_inner(
    d: &Daemon,
    req: RunRequest,
    input: CallInput,
    output: &mut CallOutput,
    cancel: impl Future<Output = ()>,
) -> anyhow::Result<(ExitStatus, Node)> {
    if req.command.is_empty() {
        bail!("no command given: openbox -t TAG CMD [ARGS…]");
    }
    let login = d.login()?;
    let key_pair = d.key()?;
    // A session stays on the node of its first use; otherwise the mirror picks.
    let known = match &req.session {
        Some(sid) => d.session_node(sid).map(|id| d.mirror.resolve(&Target::Node(id), req.isolation.kind(), 0)),
        None => Some(d.mirror.resolve(&req.target, req.isolation.kind(), d.spread())),
    };
    let node = match known {
        Some(Resolved::Node(node)) => node,
        _ => {
            let (node, cert) = dispatch(&login, &key_pair, &req.target, req.session.as_deref(), &req.isolation).await?;
            let key = Key { node_id: node.id.clone(), session: req.session.clone(), isolation: req.isolation.clone() };
            d.pool.remember(&key, cert, node.addr.clone()).await;
            if let Some(sid) = &req.session {
                d.remember_session(sid, &node.id);
            }
            node
        }
    };
    let key = Key { node_id: node.id.clone(), session: req.session.clone(), isolation: req.isolation.clone() };
    let command = req.command.join(" ");

    // A pooled connection can die without our noticing (the agent restarted): then the
    // command never started, and one retry on a fresh connection is safe.
    let mut retried = false;
    let started = loop {
        let conn = d.pool.connection(&login, &key_pair, &key, Some(node.addr.clone())).await?;
        let timeout = req.timeout_secs.map(|t| t.to_string());
        let env: Vec<(&str, &str)> = timeout.iter().map(|t| (proto::exec::TIMEOUT_ENV, t.as_str())).collect();
        match conn.start(&command, &env).await {
            Ok(started) => break started,
            Err(SshError::Stale { .. }) if !retried => {
                tracing::info!(node = %node.id, "pooled connection was dead; retrying on a new one");
                d.pool.discard(&key, &conn).await;
                retried = true;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let status = started.finish(input, output, cancel).await?;
    Ok((status, node))
}
