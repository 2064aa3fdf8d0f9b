//! What the CLI asks openboxd to do. The CLI validates its flags into one [`Request`];
//! openboxd carries it out with the CLI's stdin, stdout and stderr and answers with an exit
//! code.

use serde::{Deserialize, Serialize};

use crate::Isolation;
use crate::api::Target;

/// `openbox node add`: make a machine reachable over SSH a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeAddRequest {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub login: SshLogin,
    /// The `known_hosts` file that vouches for (and records) the host's key.
    pub known_hosts: String,
    /// `SHA256:…`: the host key the user expects.
    #[serde(default)]
    pub host_key_fingerprint: Option<String>,
    /// Take a host `known_hosts` does not know, and record it.
    #[serde(default)]
    pub accept_new: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The node joins the fleet's tailnet rather than serving on a TCP port.
    #[serde(default)]
    pub mesh: bool,
    /// Where release binaries for other platforms are (`openbox-agent-OS-ARCH`).
    #[serde(default)]
    pub from: Option<String>,
    /// Install again even when the machine is already a node.
    #[serde(default)]
    pub reinstall: bool,
    /// The port the node's agent listens on.
    pub agent_port: u16,
}

/// How `openbox node add` logs in to the machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshLogin {
    Password(Redacted),
    /// A private key file (absolute path).
    Key(String),
    /// The keys an SSH agent holds, at this socket.
    Agent(String),
}

/// A secret carried in a request: never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The environment variable through which the CLI hands a one-shot call to openboxd.
pub const CALL_ENV: &str = "OPENBOX_CALL";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    pub request: Request,
    /// Print machine-readable JSON instead of text.
    #[serde(default)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Run(RunRequest),
    FanOut(FanOutRequest),
    Login {
        server: String,
        token: String,
        /// The control plane's TLS key, pinned: `SHA256:…`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// Plain http to an address other than loopback or the tailnet.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        insecure_http: bool,
    },
    Logout,
    Whoami,
    /// A one-time link that opens the web dashboard logged in.
    Dashboard,
    UserAdd {
        name: String,
    },
    UserList,
    UserRemove {
        name: String,
    },
    UserToken {
        name: String,
    },
    /// Let a user run on the nodes of a tag, or on one node.
    UserGrant {
        name: String,
        grant: crate::api::Grant,
    },
    /// Take back what a grant on this tag or node gave.
    UserRevoke {
        name: String,
        on: Target,
    },
    NodeToken {
        tags: Vec<String>,
        ttl_secs: u64,
    },
    NodeAdd(NodeAddRequest),
    /// `openbox skill`: openbox's instructions for AI coding agents, in each one's format.
    Skill {
        /// `claude`, `cursor`, `copilot`, `codex`, `opencode`.
        agents: Vec<String>,
        /// The project directory (absolute), or the home directory with `global`.
        dir: String,
        #[serde(default)]
        global: bool,
        /// Print instead of writing.
        #[serde(default)]
        print: bool,
    },
    Nodes {
        tag: Option<String>,
    },
    NodeRemove {
        node: String,
    },
    NodeTag {
        node: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    NodeRename {
        node: String,
        name: String,
    },
    Up(UpRequest),
    Down,
    /// The caller's persistent sessions.
    Sessions,
    /// End a persistent session (its shell on the node is stopped).
    SessionRemove {
        id: String,
    },
    /// The control plane's audit log (admins only), newest last.
    Audit {
        user: Option<String>,
        node: Option<String>,
        /// Only entries from the last this many seconds.
        since_secs: Option<u64>,
    },
    /// Show the running openboxd's state.
    DaemonStatus,
    /// Stop the running openboxd.
    DaemonStop,
}

/// A command to run: on which node, in which session and isolation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    pub target: Target,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub isolation: Isolation,
    /// Command words; joined with spaces and run by the node's `sh -c`, as ssh does.
    pub command: Vec<String>,
    /// Stop the command after this many seconds (exit 124; a session survives).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Keep at most this many bytes of each stream: its head and its tail, with a mark.
    #[serde(default)]
    pub max_output: Option<u64>,
    /// Run it in a pseudo-terminal on the node (`-i`); with no command, a login shell.
    /// Needs the caller's terminal as stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtyRequest>,
}

/// A pseudo-terminal for a run: the caller's terminal type (its size is read from the
/// terminal itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyRequest {
    /// The caller's `TERM`, e.g. `xterm-256color`.
    pub term: String,
}

/// `openbox -t TAG --all CMD`: the command on every node carrying all the tags.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanOutRequest {
    pub tags: Vec<String>,
    #[serde(default)]
    pub isolation: Isolation,
    pub command: Vec<String>,
    /// Per node.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// At most this many nodes at once.
    pub fanout: usize,
    /// Each line as `name: line`.
    pub prefix: bool,
    /// Each node's output together at the end, nodes of identical output merged.
    pub group: bool,
    /// Per node and stream, as for a run.
    #[serde(default)]
    pub max_output: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpRequest {
    /// Control plane listen address for the embedded fleet.
    pub control_addr: String,
}
