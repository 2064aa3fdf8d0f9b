//! The control plane's HTTP API: JSON bodies under `/v1`. Authenticated calls carry
//! `Authorization: Bearer <token>` (a login token for people, the heartbeat secret for nodes).
//! Every error response is an [`ApiError`] body with a fitting status code.

use serde::{Deserialize, Serialize};

use crate::Isolation;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
    /// The CA's public key (OpenSSH format), so clients can verify host certificates.
    pub ca_public_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewUser {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserCreated {
    pub name: String,
    /// Shown once; the control plane keeps only its hash.
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub admin: bool,
    pub created_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewEnrollToken {
    pub tags: Vec<String>,
    pub ttl_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollToken {
    /// Shown once; single use.
    pub token: String,
    pub tags: Vec<String>,
    pub expires_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    pub fn this_machine() -> Platform {
        Platform {
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    /// A name the operator chose; enrollment fails if another node has it.
    pub name: Option<String>,
    /// The name to use when none was chosen (the host name); made unique with a suffix.
    #[serde(default)]
    pub default_name: Option<String>,
    /// Where clients dial the agent, `HOST:PORT`.
    pub addr: String,
    /// Tags asked for by the node, added to those the token carries.
    pub tags: Vec<String>,
    pub platform: Platform,
    /// The node's own host public key (OpenSSH format); its private half never leaves it.
    pub host_public_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub node_id: String,
    pub name: String,
    pub host_cert: String,
    pub ca_public_key: String,
    /// Authenticates this node's heartbeats; shown once.
    pub heartbeat_secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub addr: String,
    pub platform: Platform,
    pub version: String,
    /// When the node's current host certificate expires, so the CA can renew it in time.
    pub host_cert_valid_before: u64,
    /// Sent once on a clean shutdown, so the registry shows the node offline at once.
    #[serde(default)]
    pub stopping: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// A renewed host certificate, when the current one is past half its life.
    pub host_cert: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub platform: Platform,
    pub addr: String,
    pub online: bool,
    pub last_seen: Option<u64>,
    pub created_at: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeUpdate {
    pub name: Option<String>,
    #[serde(default)]
    pub add_tags: Vec<String>,
    #[serde(default)]
    pub remove_tags: Vec<String>,
}

/// Which node a command is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Any node carrying this tag, online ones first.
    Tag(String),
    /// Exactly this node, by id or name.
    Node(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tag(t) => write!(f, "tag {t:?}"),
            Target::Node(n) => write!(f, "node {n:?}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub target: Target,
    pub session: Option<String>,
    pub isolation: Isolation,
    /// The caller's own public key (OpenSSH format), which the certificate will vouch for.
    pub public_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dispatch {
    pub node: Node,
    /// The user certificate (OpenSSH format), valid for a few minutes.
    pub cert: String,
    pub ca_public_key: String,
    pub request_id: String,
}
