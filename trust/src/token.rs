//! Bearer tokens: random, prefixed by kind, shown once and stored only as a hash.

use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::Secret;

/// People log in with these.
pub const LOGIN_PREFIX: &str = "obx_";
/// The login tokens a control plane makes for the MCP server it runs for a user (its
/// `/mcp`): what is done with one is marked `mcp` in the audit log. A login token made any
/// other way is hex after `obx_`, so it never starts with this.
pub const MCP_LOGIN_PREFIX: &str = "obx_mcp_";
/// Nodes enroll once with these.
pub const ENROLL_PREFIX: &str = "enroll_";
/// Nodes authenticate heartbeats with these.
pub const NODE_PREFIX: &str = "node_";

/// A fresh token: the prefix and 256 random bits in hex.
pub fn generate(prefix: &str) -> Secret {
    let bytes: [u8; 32] = rand::rng().random();
    Secret::new(format!("{prefix}{}", hex(&bytes)))
}

/// What the control plane stores in place of the token.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A short random id (128 bits, hex) for nodes and requests.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex(&bytes)
}

/// Whether a secret sent equals the one expected, compared by their hashes so that the time
/// taken says nothing about how much of it matched.
pub fn same(sent: &str, expected: &str) -> bool {
    Sha256::digest(sent.as_bytes()) == Sha256::digest(expected.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_unique_and_hash_stably() {
        let a = generate(LOGIN_PREFIX);
        let b = generate(LOGIN_PREFIX);
        assert!(a.expose().starts_with("obx_"));
        assert_eq!(a.expose().len(), 4 + 64);
        assert_ne!(a, b);
        assert_eq!(hash(a.expose()), hash(a.expose()));
        assert_ne!(hash(a.expose()), hash(b.expose()));
        assert_eq!(format!("{a:?}"), "<secret>");
        assert!(same(a.expose(), a.expose()) && !same(a.expose(), b.expose()) && !same("", a.expose()));
    }
}
