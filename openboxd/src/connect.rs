//! From "run this on that target" to an authenticated SSH connection: the one function
//! that walks target → registry mirror → certificate cache → dispatch → dial, and so
//! decides between the warm path (no control-plane call at all) and the cold one.

use std::sync::Arc;

use net::ssh::{Connection, NodeTarget, SshError};
use net::transport::Transport;
use proto::Isolation;
use proto::api::{Dispatch, DispatchRequest, Node, Target};
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
        let key = want.key(&node.id);
        let slot = acct.pool.slot(&key);
        let mut s = slot.lock().await;
        if let Some(conn) = s.live() {
            return Ok((node, conn));
        }
        if let Some(cert) = s.fresh_cert() {
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
    let d: Dispatch = client.post("/v1/dispatch", &request).await?;
    if trust::parse_public_key(&d.ca_public_key).map_err(|e| bad(&e))? != acct.login.ca {
        return Err(ConnectError::CaChanged);
    }
    Ok((d.node, trust::parse_certificate(&d.cert).map_err(|e| bad(&e))?))
}

/// The one place openboxd dials a node: over the tailnet when both are on it, else at the
/// node's direct address.
async fn dial(d: &Daemon, acct: &Account, node: &Node, cert: Certificate) -> Result<Connection, ConnectError> {
    let (via, addr) = match (&node.mesh_addr, &d.mesh) {
        // A node with a direct address is not kept waiting for a tailnet still joining.
        (Some(_), Some(mesh)) if mesh.joining() && !node.addr.is_empty() => (Transport::Tcp, node.addr.clone()),
        (Some(mesh_addr), Some(mesh)) => match mesh.node().await {
            Ok(tailnet) => (Transport::Tailnet(tailnet), mesh_addr.clone()),
            Err(_) if !node.addr.is_empty() => (Transport::Tcp, node.addr.clone()),
            Err(why) => return Err(ConnectError::Mesh { node: node.name.clone(), why }),
        },
        (Some(_), None) if node.addr.is_empty() => return Err(ConnectError::TailnetOnly(node.name.clone())),
        _ => (Transport::Tcp, node.addr.clone()),
    };
    let target = NodeTarget { node_id: node.id.clone(), addr, via, ca: acct.login.ca.clone() };
    let mut conn = net::ssh::dial(&target).await?;
    conn.authenticate(&acct.login.user, acct.key.clone(), cert).await?;
    Ok(conn)
}
