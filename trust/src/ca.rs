use proto::Isolation;
use proto::cert::{EXT_ADMIN, EXT_ISOLATION, EXT_NODE, EXT_SESSION, EXT_USER};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::{Secret, TrustError};

/// A fresh ed25519 key pair, for the CA, a node's host key or a user's key.
pub fn generate_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("ed25519 generation cannot fail")
}

/// What a user certificate vouches for: who, on which node, under which isolation and
/// session, for which request, and for how long.
#[derive(Clone, Debug)]
pub struct UserCertSpec<'a> {
    pub user: &'a str,
    /// The user's incarnation (see [`proto::cert::EXT_USER`]).
    pub incarnation: &'a str,
    pub node_id: &'a str,
    pub request_id: &'a str,
    pub isolation: &'a Isolation,
    pub session: Option<&'a str>,
    /// Whether the user is an admin (see [`proto::cert::EXT_ADMIN`]).
    pub admin: bool,
    pub public_key: &'a PublicKey,
    pub valid_after: u64,
    pub valid_before: u64,
}

/// The fleet's certificate authority: one ed25519 key.
pub struct Ca {
    key: PrivateKey,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("public_key", &self.public_key_openssh()).finish()
    }
}

impl Ca {
    pub fn generate() -> Ca {
        Ca { key: generate_key() }
    }

    /// Loads a CA key kept in OpenSSH private-key format.
    pub fn from_openssh(text: &str) -> Result<Ca, TrustError> {
        let key = PrivateKey::from_openssh(text)?;
        Ok(Ca { key })
    }

    /// The CA key in OpenSSH private-key format, for storing at mode 0600.
    pub fn to_openssh(&self) -> Result<Secret, TrustError> {
        Ok(Secret::new(self.key.to_openssh(LineEnding::LF)?.to_string()))
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    pub fn public_key_openssh(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// A host certificate whose only principal is the node id.
    pub fn sign_host(
        &self,
        host_key: &PublicKey,
        node_id: &str,
        valid_after: u64,
        valid_before: u64,
    ) -> Result<ssh_key::Certificate, TrustError> {
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), host_key.key_data().clone(), valid_after, valid_before)?;
        b.cert_type(CertType::Host)?;
        b.key_id(format!("openbox-node:{node_id}"))?;
        b.valid_principal(node_id)?;
        Ok(b.sign(&self.key)?)
    }

    /// A user certificate for one dispatch; see [`UserCertSpec`].
    pub fn sign_user(&self, spec: &UserCertSpec<'_>) -> Result<ssh_key::Certificate, TrustError> {
        let mut b = Builder::new_with_random_nonce(
            &mut rand::rng(),
            spec.public_key.key_data().clone(),
            spec.valid_after,
            spec.valid_before,
        )?;
        b.cert_type(CertType::User)?;
        b.key_id(format!("openbox-user:{}:req:{}", spec.user, spec.request_id))?;
        b.valid_principal(spec.user)?;
        b.extension("permit-pty", "")?;
        // Forwarding reaches the node's own network: only with a native grant there.
        if *spec.isolation == proto::Isolation::Native && spec.session.is_none() {
            b.extension(proto::cert::PERMIT_PORT_FORWARDING, "")?;
        }
        b.extension(EXT_NODE, spec.node_id)?;
        b.extension(EXT_ISOLATION, spec.isolation.to_string())?;
        b.extension(EXT_USER, spec.incarnation)?;
        if let Some(session) = spec.session {
            b.extension(EXT_SESSION, session)?;
        }
        if spec.admin {
            b.extension(EXT_ADMIN, "")?;
        }
        Ok(b.sign(&self.key)?)
    }
}
