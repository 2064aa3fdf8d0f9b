//! Enrollment: this node becomes one of the fleet's with a single-use token. The host key
//! is made here and only its public half is sent; the control plane returns the node's
//! identity ([`Identity`]).

use anyhow::Context as _;
use net::control::Endpoint;
use proto::api::{EnrollMeshRequest, EnrollRequest, Enrolled, MeshSettings, Platform};
use trust::Secret;

use crate::identity::Identity;

/// What enrollment asks for.
pub struct EnrollParams<'a> {
    pub server: &'a Endpoint,
    pub token: &'a str,
    pub name: Option<String>,
    pub addr: String,
    pub mesh_addr: Option<String>,
    pub tags: Vec<String>,
    /// The isolation kinds it can serve now.
    pub capabilities: Vec<String>,
    /// The tailnet node, to reach a control plane at a tailnet address.
    pub tailnet: Option<std::sync::Arc<tailnet::Node>>,
}

/// Enrolls this node: generates its host key here, sends only the public half, and
/// returns the identity the control plane issued.
pub async fn enroll(p: EnrollParams<'_>) -> anyhow::Result<Identity> {
    let host_key = trust::generate_key();
    let client = crate::control::client(p.server, None, p.tailnet.as_ref())?;
    let req = EnrollRequest {
        token: p.token.to_owned(),
        name: p.name,
        default_name: hostname(),
        addr: p.addr,
        mesh_addr: p.mesh_addr,
        tags: p.tags,
        platform: Platform::this_machine(),
        host_public_key: host_key.public_key().to_openssh()?,
        capabilities: p.capabilities,
        host: Some(crate::control::this_host()),
    };
    let e: Enrolled = client.call::<proto::routes::Enroll>(&[], &req).await.context("enrollment failed")?;
    Ok(Identity {
        node_id: e.node_id,
        name: e.name,
        server: p.server.clone(),
        heartbeat_secret: Secret::new(e.heartbeat_secret),
        ca: trust::parse_public_key(&e.ca_public_key)?,
        host_cert: trust::parse_certificate(&e.host_cert)?,
        host_key,
        enrolled_with: Some(trust::token::hash(p.token)),
    })
}

/// The fleet's tailnet, if its control plane holds one: asked before enrolling with
/// `token` (which stays unused), so that the node can join it first.
pub async fn fleet_mesh(server: &Endpoint, token: &str) -> anyhow::Result<Option<MeshSettings>> {
    let client = net::control::Client::new(server, None)?;
    let req = EnrollMeshRequest { token: token.to_owned() };
    client.call::<proto::routes::EnrollMesh>(&[], &req).await.context("enrollment failed")
}

/// This machine's host name, made into a valid node name.
fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| {
        std::process::Command::new("hostname").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    })?;
    let name: String =
        raw.trim().split('.').next()?.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    proto::check_name("node name", &name).ok().map(|_| name)
}
