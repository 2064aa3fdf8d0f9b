//! The agent's client of its control plane: over the tailnet when the control plane is at
//! a tailnet address, else as its endpoint says (TLS pinned, or plain HTTP on loopback).

use std::sync::Arc;

/// A client for this node's control plane, authenticated with `secret` (the heartbeat
/// secret) when given.
pub fn client(
    server: &net::control::Endpoint,
    secret: Option<trust::Secret>,
    tailnet: Option<&Arc<tailnet::Node>>,
) -> Result<net::control::Client, net::control::ControlError> {
    let client = net::control::Client::new(server, secret)?;
    Ok(match tailnet {
        Some(node) => client.with_tailnet(Arc::new(node.clone())),
        None => client,
    })
}

/// This machine and the user the agent runs as, so that the control plane knows whether
/// this node could read its files.
pub fn this_host() -> proto::api::AgentHost {
    proto::api::AgentHost { machine: paths::machine(), uid: rustix::process::geteuid().as_raw() }
}
