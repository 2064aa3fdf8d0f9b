//! The CLI identity: which control plane (and its TLS key, when pinned), as whom, with
//! which token, the CA key it answered with at login, and the user's own key pair (generated here; only the public half is sent).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use net::control::Endpoint;
use proto::output::LoginWho;
use serde::{Deserialize, Serialize};
use trust::{PrivateKey, PublicKey, Secret};

#[derive(Serialize, Deserialize)]
struct Stored {
    /// Server and user: the part the CLI reads too, to list contexts.
    #[serde(flatten)]
    who: LoginWho,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<tls::Fingerprint>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    insecure_http: bool,
    token: String,
    ca_public_key: String,
}

#[derive(Clone)]
pub struct Login {
    pub server: Endpoint,
    pub user: String,
    pub token: Secret,
    pub ca: PublicKey,
}

impl Login {
    pub fn load() -> anyhow::Result<Login> {
        let path = paths::login_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let context = paths::context();
                if context.is_default() {
                    bail!("not logged in: run `openbox login --server URL` (or `openbox up` for a local fleet)")
                }
                bail!("not logged in (context {context}): run `openbox login --context {context} --server URL`")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let s: Stored =
            serde_json::from_str(&text).with_context(|| format!("{} is damaged; log in again", path.display()))?;
        Ok(Login {
            server: Endpoint { url: s.who.server, fingerprint: s.fingerprint, insecure_http: s.insecure_http },
            user: s.who.user,
            token: Secret::new(s.token),
            ca: trust::parse_public_key(&s.ca_public_key)?,
        })
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let s = Stored {
            who: LoginWho { server: self.server.url.clone(), user: self.user.clone() },
            fingerprint: self.server.fingerprint,
            insecure_http: self.server.insecure_http,
            token: self.token.expose().to_owned(),
            ca_public_key: self.ca.to_openssh()?,
        };
        paths::write_private(&paths::login_file(), serde_json::to_string_pretty(&s)?.as_bytes())
            .context("saving the login")
    }

    pub fn remove() -> std::io::Result<()> {
        match std::fs::remove_file(paths::login_file()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn client(&self) -> anyhow::Result<net::control::Client> {
        Ok(crate::mesh::control_client(&self.server, Some(self.token.clone()))?)
    }
}

/// The user's key pair, created on first use.
pub fn user_key() -> anyhow::Result<Arc<PrivateKey>> {
    let path = paths::user_key();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Arc::new(PrivateKey::from_openssh(&text).with_context(|| format!("{} is damaged", path.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = trust::generate_key();
            let text = key.to_openssh(trust::ssh_key_line_ending())?;
            paths::write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            let public = key.public_key().to_openssh()?;
            std::fs::write(path.with_extension("pub"), format!("{public}\n"))?;
            Ok(Arc::new(key))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
