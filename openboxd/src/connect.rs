//! From "run this on that target" to an authenticated SSH connection: the one function
//! that walks target → registry mirror → certificate cache → dispatch → dial, and so
//! decides between the warm path (no control-plane call at all) and the cold one.

use std::sync::Arc;

use net::ssh::{Connection, NodeTarget, PtySpec, SshError, Started};
use net::transport::Transport;
use proto::Isolation;
use proto::api::{Dispatch, DispatchRequest, Node, Target};
use russh_sftp::client::SftpSession;
use trust::Certificate;

use crate::Daemon;
use crate::account::Account;
use crate::pool::Key;

/// What a command is for.
#[derive(Clone, Copy)]
pub struct Want<'a> {
    pub target: &'a Target,
    pub session: Option<&'a str>,
    pub isolation: &'a Isolation,
}

impl Want<'_> {
    pub fn key(&self, node_id: &str) -> Key {
        Key { node_id: node_id.to_owned(), session: self.session.map(str::to_owned), isolation: self.isolation.clone() }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Node(#[from] SshError),
    #[error(transparent)]
    Control(#[from] net::control::ControlError),
    #[error("the control plane's certificate authority changed since you logged in; log in again if that is expected")]
    CaChanged,
    #[error("the control plane's answer is not usable: {0}")]
    BadDispatch(String),
    #[error(
        "node {0} is reachable only on the tailnet, and this openboxd is not on it; start openboxd with OPENBOX_MESH_CONTROL=URL (and OPENBOX_MESH_AUTHKEY=KEY the first time)"
    )]
    TailnetOnly(String),
    #[error("node {node} is reachable only on the tailnet: {why}")]
    Mesh { node: String, why: String },
}

/// The node for `want` and a live connection to it, authenticated for `want`.
///
/// Warm path: the mirror names the node (a session stays on the node of its first use),
/// and the pool has a live connection or a fresh certificate for it. Cold path: the
/// control plane picks (or confirms) the node and signs a certificate — also when the
/// node no longer answers where it was (it may have moved).
pub async fn connect(d: &Daemon, acct: &Account, want: Want<'_>) -> Result<(Node, Arc<Connection>), ConnectError> {
    let known = match want.session {
        Some(sid) => {
            acct.session_node(sid).and_then(|id| d.mirror.resolve(&Target::Node(id), want.isolation.kind(), 0))
        }
        None => d.mirror.resolve(want.target, want.isolation.kind(), d.spread()),
    };
    if let Some(node) = known {
        tracing::debug!(node = %node.name, "the fleet's copy here names the node");
        let key = want.key(&node.id);
        let slot = acct.pool.slot(&key);
        let mut s = slot.lock().await;
        if let Some(conn) = s.live() {
            tracing::debug!(node = %node.name, "an open connection to it is used");
            return Ok((node, conn));
        }
        if let Some(cert) = s.fresh_cert() {
            tracing::debug!(node = %node.name, "dialling with a certificate held here");
            match dial(d, acct, &node, cert.clone()).await {
                Ok(conn) => return Ok((node, s.keep(cert, conn))),
                Err(ConnectError::Node(SshError::Unreachable { .. })) => {} // it may have moved: ask where it is now
                // The node no longer takes it (the user's access there changed since it
                // was issued): the control plane decides again, with a new one.
                Err(ConnectError::Node(SshError::AuthRejected { .. })) => s.forget_cert(),
                Err(e) => return Err(e),
            }
        }
        let (node, cert) = dispatch(acct, &Target::Node(node.id.clone()), want).await?;
        s.remember(cert.clone());
        let conn = dial(d, acct, &node, cert.clone()).await?;
        return Ok((node, s.keep(cert, conn)));
    }
    // The mirror cannot pick: the control plane decides, or says why it cannot.
    let (node, cert) = dispatch(acct, want.target, want).await?;
    if let Some(sid) = want.session {
        acct.remember_session(sid, &node.id);
    }
    let slot = acct.pool.slot(&want.key(&node.id));
    let mut s = slot.lock().await;
    if let Some(conn) = s.live() {
        return Ok((node, conn)); // a concurrent call connected meanwhile
    }
    s.remember(cert.clone());
    let conn = dial(d, acct, &node, cert.clone()).await?;
    Ok((node, s.keep(cert, conn)))
}

/// Asks the control plane for a node and a user certificate for this account's key.
async fn dispatch(acct: &Account, target: &Target, want: Want<'_>) -> Result<(Node, Certificate), ConnectError> {
    let bad = |e: &dyn std::fmt::Display| ConnectError::BadDispatch(e.to_string());
    let request = DispatchRequest {
        target: target.clone(),
        session: want.session.map(str::to_owned),
        isolation: want.isolation.clone(),
        public_key: acct.key.public_key().to_openssh().map_err(|e| bad(&e))?,
    };
    let client = crate::mesh::control_client(&acct.login.server, Some(acct.login.token.clone()))?;
    let asked = std::time::Instant::now();
    let d: Dispatch = client.call::<proto::routes::Dispatch>(&[], &request).await?;
    let took_ms = asked.elapsed().as_millis();
    tracing::debug!(node = %d.node.name, took_ms, "the control plane chose the node and signed a certificate");
    if trust::parse_public_key(&d.ca_public_key).map_err(|e| bad(&e))? != acct.login.ca {
        return Err(ConnectError::CaChanged);
    }
    Ok((d.node, trust::parse_certificate(&d.cert).map_err(|e| bad(&e))?))
}

/// A way to a node: its direct address, or its address on the tailnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    Direct,
    Tailnet,
}

/// How long a first way may take to answer when there is another to try.
const FIRST_WAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The ways to `node` in the order to try them (see [`order`]).
fn ways(d: &Daemon, node: &Node) -> Vec<Way> {
    let joining = d.mesh.as_ref().is_some_and(|m| m.joining());
    order(!node.addr.is_empty(), node.mesh_addr.is_some() && d.mesh.is_some(), joining, d.way_that_worked(&node.id))
}

/// The order to try a node's ways in: the one that `worked` last first; else the tailnet
/// when there is one to use, and the direct address first while this openboxd is still
/// `joining` its tailnet (a node with one is not kept waiting for the join).
fn order(direct: bool, tailnet: bool, joining: bool, worked: Option<Way>) -> Vec<Way> {
    let mut ways = match (direct, tailnet) {
        (true, true) if joining => vec![Way::Direct, Way::Tailnet],
        (true, true) => vec![Way::Tailnet, Way::Direct],
        (true, false) => vec![Way::Direct],
        (false, true) => vec![Way::Tailnet],
        (false, false) => Vec::new(),
    };
    if let Some(i) = worked.and_then(|w| ways.iter().position(|x| *x == w)) {
        ways[..=i].rotate_right(1);
    }
    ways
}

/// The one place openboxd dials a node. When a way does not connect (refused,
/// unreachable, no answer within moments) the other is tried; the one that worked is
/// remembered for the node and tried first next time.
async fn dial(d: &Daemon, acct: &Account, node: &Node, cert: Certificate) -> Result<Connection, ConnectError> {
    let ways = ways(d, node);
    if ways.is_empty() {
        return Err(ConnectError::TailnetOnly(node.name.clone()));
    }
    let mut failed = None;
    for (i, way) in ways.iter().enumerate() {
        let more = i + 1 < ways.len();
        let (via, addr) = match way {
            Way::Direct => (Transport::Tcp, node.addr.clone()),
            Way::Tailnet => match d.mesh.as_ref().expect("a tailnet way needs one").node().await {
                Ok(tailnet) => (Transport::Tailnet(tailnet), node.mesh_addr.clone().unwrap_or_default()),
                Err(why) => {
                    failed = Some(ConnectError::Mesh { node: node.name.clone(), why });
                    continue;
                }
            },
        };
        let target =
            NodeTarget { node_id: node.id.clone(), name: node.name.clone(), addr, via, ca: acct.login.ca.clone() };
        let full = net::ssh::connect_timeout(&target.via);
        let limit = if more { FIRST_WAY_TIMEOUT.min(full) } else { full };
        let dialled = std::time::Instant::now();
        match net::ssh::dial_within(&target, limit).await {
            Ok(mut conn) => {
                conn.authenticate(&acct.login.user, acct.key.clone(), cert).await?;
                let took_ms = dialled.elapsed().as_millis();
                tracing::debug!(node = %node.name, addr = %target.addr, ?way, took_ms, "connected and authenticated");
                if i > 0 {
                    tracing::info!(node = %node.id, ?way, "reached over another way than the first tried");
                }
                d.remember_way(&node.id, *way);
                return Ok(conn);
            }
            Err(e @ SshError::Unreachable { .. }) if more => {
                tracing::info!(node = %node.id, ?way, error = %e, "not reached this way; trying the other");
                failed = Some(e.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(failed.expect("a way was tried"))
}

/// What to start on a channel: a command, or (in a terminal) the login shell; in a
/// terminal when `pty` is given.
#[derive(Clone, Copy)]
pub struct What<'a> {
    pub command: Option<&'a str>,
    pub pty: Option<&'a PtySpec>,
    /// An SSH subsystem instead of a command (a session's job).
    pub subsystem: Option<&'a str>,
}

/// Connects for `want` and starts `command` there. A pooled connection can die without our
/// noticing (the agent restarted): then the command never started, and one retry on a
/// fresh connection is safe.
pub async fn start(
    d: &Daemon,
    acct: &Account,
    want: Want<'_>,
    what: What<'_>,
    env: &[(&str, &str)],
) -> Result<(Node, Started), StartError> {
    let mut retried = false;
    loop {
        let (node, conn) = connect(d, acct, want).await?;
        let started = match (what.pty, what.command, what.subsystem) {
            (_, _, Some(name)) => conn.start_subsystem(name, env).await,
            (Some(pty), command, None) => conn.start_in_pty(command, env, pty).await,
            (None, Some(command), None) => conn.start(command, env).await,
            (None, None, None) => unreachable!("a shell is started only in a terminal"),
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

/// Connects for `want` and opens an SFTP session there — once more on a fresh connection
/// when a pooled one turns out dead, as for [`start`]: nothing was done on it yet.
pub async fn sftp(
    d: &Daemon,
    acct: &Account,
    want: Want<'_>,
) -> Result<(Node, Arc<Connection>, SftpSession), StartError> {
    let mut retried = false;
    loop {
        let (node, conn) = connect(d, acct, want).await?;
        match conn.sftp().await {
            Ok(sftp) => return Ok((node, conn, sftp)),
            Err(SshError::Stale { .. }) if !retried => {
                tracing::info!(node = %node.id, "pooled connection was dead; opening SFTP on a new one");
                acct.pool.discard(&want.key(&node.id), &conn).await;
                retried = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tailnet_goes_first_unless_still_joining_and_what_worked_last_goes_first() {
        use Way::{Direct, Tailnet};
        assert_eq!(order(true, true, false, None), [Tailnet, Direct]);
        assert_eq!(order(true, true, true, None), [Direct, Tailnet], "not kept waiting for the join");
        assert_eq!(order(true, true, true, Some(Tailnet)), [Tailnet, Direct], "remembered");
        assert_eq!(order(true, true, false, Some(Direct)), [Direct, Tailnet]);
        assert_eq!(order(true, false, false, Some(Tailnet)), [Direct], "a way it no longer has");
        assert_eq!(order(false, true, false, None), [Tailnet]);
        assert!(order(false, false, false, None).is_empty());
    }
}
