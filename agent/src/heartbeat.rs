//! Heartbeats: tell the control plane this node is alive, authenticated with the node's own
//! secret, and take a renewed host certificate when one comes back.

use std::sync::Arc;
use std::time::Duration;

use proto::api::{Heartbeat, HeartbeatReply, Platform};

use crate::server::Shared;

/// Where this node can be dialled: directly (empty when not) and on the tailnet; and the
/// tailnet node that reaches a control plane at a tailnet address.
#[derive(Clone)]
pub struct Addrs {
    pub addr: String,
    pub mesh_addr: Option<String>,
    pub tailnet: Option<Arc<tailnet::Node>>,
}

/// How a heartbeat loop ended.
pub enum Stop {
    /// The control plane removed this node; its identity is no longer valid.
    Revoked(String),
}

/// Sends one heartbeat through `client`, made on first use and kept, so that its connection
/// stays open from one beat to the next.
async fn beat(
    shared: &Shared,
    addrs: &Addrs,
    client: &mut Option<net::control::Client>,
    stopping: bool,
) -> Result<HeartbeatReply, net::control::ControlError> {
    let id = shared.identity();
    let client = match client {
        Some(client) => client,
        None => client.insert(crate::control::client(
            &id.server,
            Some(id.heartbeat_secret.clone()),
            addrs.tailnet.as_ref(),
        )?),
    };
    let hb = Heartbeat {
        node_id: id.node_id.clone(),
        addr: addrs.addr.clone(),
        mesh_addr: addrs.mesh_addr.clone(),
        platform: Platform::this_machine(),
        version: proto::VERSION.to_owned(),
        host_cert_valid_before: id.host_cert.valid_before(),
        stopping,
        sessions: shared.sessions.reports(),
        capabilities: shared.runtimes.capabilities().await,
        host: Some(crate::control::this_host()),
        executions: shared.journal.to_report(),
    };
    client.call::<proto::routes::Heartbeat>(&[], &hb).await
}

/// Sends a heartbeat every `every`, and at once when a session ends, until the node is
/// revoked, calling `ready` after the first one (so the registry has this start's address before anyone is told to dial it).
/// Failures to reach the control plane are logged and retried: the node keeps serving
/// callers who hold valid certificates.
pub async fn run(
    shared: Arc<Shared>,
    addrs: Addrs,
    every: Duration,
    agent_dir: std::path::PathBuf,
    ready: impl FnOnce(),
) -> Stop {
    let mut warned = false;
    let mut lapsed = false;
    let mut ready = Some(ready);
    let mut client = None;
    loop {
        // Said once when it lapses, and once when a renewal mends it.
        let valid_before = shared.identity().host_cert.valid_before();
        if valid_before <= proto::time::control_now() && !lapsed {
            tracing::error!(
                "this node's host certificate expired {}: callers refuse this node until its control plane renews it, at the next heartbeat that reaches it",
                proto::time::ago(proto::time::control_now(), Some(valid_before))
            );
            lapsed = true;
        }
        match beat(&shared, &addrs, &mut client, false).await {
            Ok(reply) => {
                if warned {
                    tracing::info!("control plane reachable again");
                    warned = false;
                }
                shared.revoke(reply.revoked_users).await;
                shared.access.cut_off(reply.cert_cutoffs);
                shared.journal.recorded(&reply.executions_recorded);
                shared.journal.record_commands(reply.audit_commands);
                if let Some(text) = reply.host_cert {
                    match trust::parse_certificate(&text) {
                        Ok(cert) => {
                            if std::mem::take(&mut lapsed) {
                                tracing::info!(
                                    "host certificate renewed after it had expired; callers accept this node again"
                                );
                            }
                            shared.renew_host_cert(cert);
                            if let Err(e) = shared.identity().save(&agent_dir) {
                                tracing::error!(error = %format!("{e:#}"), "could not save the renewed host certificate");
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the control plane sent an unreadable host certificate");
                        }
                    }
                }
            }
            Err(e) if e.status() == Some(410) => return Stop::Revoked(e.to_string()),
            Err(e) if e.status() == Some(401) => {
                if !warned {
                    tracing::error!(error = %e, "the control plane does not accept this node (was its registry reset?); enroll it again with a new token");
                    warned = true;
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "heartbeat failed; still serving, will retry");
                    warned = true;
                }
            }
        }
        if let Some(r) = ready.take() {
            r();
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.sessions.ended.notified() => {}
        }
    }
}

/// Tells the control plane this node is stopping, so it shows offline at once.
pub async fn say_goodbye(shared: &Shared, addrs: &Addrs) {
    let _ = tokio::time::timeout(Duration::from_secs(2), beat(shared, addrs, &mut None, true)).await;
}
