//! The node's identity, kept in the agent directory: the host key (which never leaves the
//! node), and what enrollment (`crate::enroll`) returned — node id, host certificate, CA
//! key, heartbeat secret.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use net::control::Endpoint;
use serde::{Deserialize, Serialize};
use trust::{Certificate, PrivateKey, PublicKey, Secret};

#[derive(Serialize, Deserialize)]
struct Stored {
    node_id: String,
    name: String,
    server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<tls::Fingerprint>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    insecure_http: bool,
    heartbeat_secret: String,
    ca_public_key: String,
    host_cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enrolled_with: Option<String>,
}

/// Everything the agent needs to prove who it is and to check who calls it.
#[derive(Clone)]
pub struct Identity {
    pub node_id: String,
    pub name: String,
    /// The control plane, and its TLS key when pinned.
    pub server: Endpoint,
    pub heartbeat_secret: Secret,
    pub ca: PublicKey,
    pub host_key: PrivateKey,
    pub host_cert: Certificate,
    /// The hash of the enrollment token this node enrolled with: a start given that token
    /// again (a service's token file) is a restart, any other token a second node.
    pub enrolled_with: Option<String>,
}

fn identity_file(dir: &Path) -> PathBuf {
    paths::agent_identity(dir)
}

fn host_key_file(dir: &Path) -> PathBuf {
    paths::agent_host_key(dir)
}

impl Identity {
    /// The stored identity, if this node has enrolled.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Identity>> {
        let text = match std::fs::read_to_string(identity_file(dir)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading the node identity"),
        };
        let s: Stored = serde_json::from_str(&text).context("the node identity file is damaged")?;
        let key_text = std::fs::read_to_string(host_key_file(dir)).context("reading the host key")?;
        Ok(Some(Identity {
            node_id: s.node_id,
            name: s.name,
            server: Endpoint { url: s.server, fingerprint: s.fingerprint, insecure_http: s.insecure_http },
            heartbeat_secret: Secret::new(s.heartbeat_secret),
            ca: trust::parse_public_key(&s.ca_public_key)?,
            host_key: PrivateKey::from_openssh(&key_text).context("the host key file is damaged")?,
            host_cert: trust::parse_certificate(&s.host_cert)?,
            enrolled_with: s.enrolled_with,
        }))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let key = self.host_key.to_openssh(trust::ssh_key_line_ending()).context("encoding the host key")?;
        paths::write_private(&host_key_file(dir), key.as_bytes()).context("writing the host key")?;
        let s = Stored {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            server: self.server.url.clone(),
            fingerprint: self.server.fingerprint,
            insecure_http: self.server.insecure_http,
            heartbeat_secret: self.heartbeat_secret.expose().to_owned(),
            ca_public_key: self.ca.to_openssh()?,
            host_cert: self.host_cert.to_openssh()?,
            enrolled_with: self.enrolled_with.clone(),
        };
        paths::write_private(&identity_file(dir), serde_json::to_string_pretty(&s)?.as_bytes())
            .context("writing the node identity")
    }

    /// Forgets the identity (after the control plane revoked it).
    pub fn forget(dir: &Path) {
        let _ = std::fs::remove_file(identity_file(dir));
        let _ = std::fs::remove_file(host_key_file(dir));
    }
}
