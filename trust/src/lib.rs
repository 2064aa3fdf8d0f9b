//! Certificates and tokens: how openbox decides who may run what where.
//!
//! One CA key signs two kinds of certificate. A node's *host* certificate names its node id;
//! a person's *user* certificate names the user, the node, the isolation and the session,
//! and lives for minutes. [`verify_user_cert`] and [`verify_host_cert`] are the only ways a
//! certificate is accepted, and each check they make is explicit.
//!
//! Pure: this crate does no I/O and keeps no clock; callers pass `now`.

mod ca;
pub mod known_hosts;
mod secret;
pub mod token;
mod verify;

pub use ca::{Ca, UserCertSpec, generate_key};
pub use secret::Secret;
pub use ssh_key::{Certificate, PrivateKey, PublicKey};
pub use verify::{UserGrant, verify_host_cert, verify_user_cert};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the certificate is a {found} certificate where a {wanted} certificate is needed")]
    WrongType { wanted: &'static str, found: &'static str },
    #[error("the certificate was not issued by this fleet's certificate authority")]
    WrongCa,
    #[error("the certificate's signature does not verify")]
    BadSignature,
    #[error("the certificate expired at {valid_before} (now {now})")]
    Expired { valid_before: u64, now: u64 },
    #[error("the certificate is not valid until {valid_after} (now {now})")]
    NotYetValid { valid_after: u64, now: u64 },
    #[error("the certificate is for {found:?}, not {wanted:?}")]
    PrincipalMismatch { wanted: String, found: Vec<String> },
    #[error("the certificate's {name} is invalid: {why}")]
    BadExtension { name: String, why: String },
    #[error("the certificate carries critical option {0:?}, which openbox does not know")]
    UnknownCriticalOption(String),
    #[error("key error: {0}")]
    Key(#[from] ssh_key::Error),
}

/// Parses an OpenSSH public key line, naming what was expected on failure.
pub fn parse_public_key(text: &str) -> Result<PublicKey, TrustError> {
    Ok(PublicKey::from_openssh(text.trim())?)
}

/// Parses an OpenSSH certificate line.
pub fn parse_certificate(text: &str) -> Result<Certificate, TrustError> {
    Ok(Certificate::from_openssh(text.trim())?)
}

/// The line ending openbox writes keys with.
pub fn ssh_key_line_ending() -> ssh_key::LineEnding {
    ssh_key::LineEnding::LF
}
