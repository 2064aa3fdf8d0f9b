//! openboxd's JSON-RPC 2.0 API on its Unix socket: one JSON object per line, each way.
//! `docs/rpc.md` is the reference; these are the types behind it.
//!
//! A connection starts with `hello`, which checks the protocol version. Requests may be
//! pipelined behind it: the daemon answers `hello` first and stops there on a mismatch.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::request::{Call, RunRequest};

/// Bumped whenever a method, parameter or notification changes incompatibly.
pub const PROTOCOL: u32 = 2;

/// The methods and notifications, by the names they travel under.
pub mod method {
    pub const HELLO: &str = "hello";
    /// A CLI call, with the caller's descriptors.
    pub const CLI: &str = "cli";
    pub const RUN: &str = "run";
    /// Notification to the daemon: bytes for a running command's stdin.
    pub const STDIN: &str = "stdin";
    /// Notification to the daemon: the caller of a running call was signalled
    /// ([`super::CallSignal`]); the signal goes to its command.
    pub const SIGNAL: &str = "signal";
    /// Notification from the daemon: bytes of a running command's stdout or stderr.
    pub const OUTPUT: &str = "output";
    pub const NODES: &str = "nodes";
    /// The caller's sessions.
    pub const SESSIONS: &str = "sessions";
    /// Ends one session: `{"id": SID}`.
    pub const SESSION_END: &str = "session_end";
    /// Follow the fleet: `event` notifications from then on.
    pub const SUBSCRIBE: &str = "subscribe";
    /// Notification from the daemon: one change in the fleet ([`super::EventNote`]).
    pub const EVENT: &str = "event";
    pub const WHOAMI: &str = "whoami";
    pub const STATUS: &str = "status";
    pub const SHUTDOWN: &str = "shutdown";
    /// One file operation on a node ([`crate::files::FileParams`]).
    pub const FILE: &str = "file";
    /// `openbox cp` ([`crate::request::CopyRequest`]): between this machine and a node.
    pub const COPY: &str = "copy";
    /// Start a job ([`crate::jobs::JobStartParams`]); list them; read, wait for, stop,
    /// feed (`stdin` notifications) and forget one.
    pub const JOB_START: &str = "job_start";
    pub const JOBS: &str = "jobs";
    pub const JOB_READ: &str = "job_read";
    pub const JOB_WAIT: &str = "job_wait";
    pub const JOB_STOP: &str = "job_stop";
    pub const JOB_SEND: &str = "job_send";
    pub const JOB_FORGET: &str = "job_forget";
    /// A terminal job's screen ([`crate::jobs::Screen`]).
    pub const JOB_SCREEN: &str = "job_screen";
}

/// JSON-RPC error codes (the standard ones, and openbox's in the server range).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// `hello` was skipped, or asked for another protocol version.
    pub const PROTOCOL_MISMATCH: i64 = -32000;
    /// The request was understood but failed (not logged in, node unreachable, …).
    pub const FAILED: i64 = -32001;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub jsonrpc: String,
    /// Absent for notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

impl Request {
    pub fn new(id: Option<Value>, method: &str, params: Value) -> Request {
        Request { jsonrpc: "2.0".into(), id, method: method.into(), params }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: String,
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    pub fn ok(id: Value, result: Value) -> Response {
        Response { jsonrpc: "2.0".into(), id, result: Some(result), error: None }
    }

    pub fn err(id: Value, code: i64, message: impl Into<String>) -> Response {
        Response {
            jsonrpc: "2.0".into(),
            id,
            result: None,
            error: Some(RpcError { code, message: message.into(), data: None }),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    #[serde(default)]
    pub client: String,
    /// The client's release, when it is one of openbox's own: a daemon of another release
    /// answers as for another protocol, so that an upgraded CLI replaces an old openboxd.
    /// Scripts leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// The answer to `hello`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
}

/// The `data` of a protocol-mismatch error, so that the client can stop the daemon it
/// cannot talk to. Read from daemons of any version: every field but `protocol` may be
/// missing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mismatch {
    pub protocol: u32,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// `session_end` parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionEndParams {
    /// The session's id.
    pub id: String,
}

/// `nodes` parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodesParams {
    /// Only nodes carrying this tag.
    #[serde(default)]
    pub tag: Option<String>,
}

/// `whoami` result (also what `openbox login --json` and `whoami --json` print).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Whoami {
    pub server: String,
    pub user: String,
    pub admin: bool,
    /// The context this login belongs to (`default` unless `--context` or
    /// `OPENBOX_CONTEXT` chose another).
    #[serde(default = "default_context")]
    pub context: String,
}

/// What an answer from before contexts existed is about.
fn default_context() -> String {
    "default".into()
}

/// `shutdown` result (also `openbox daemon stop --json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

/// How a `run` exchanges its standard streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioMode {
    /// As JSON messages: `output` notifications from the daemon, `stdin` notifications to it.
    #[default]
    Frames,
    /// As the three file descriptors sent with the request (SCM_RIGHTS): the daemon reads
    /// and writes them directly.
    Fds,
}

/// `run` parameters: what to run, as the CLI asks for it, and how its streams travel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunParams {
    #[serde(flatten)]
    pub run: RunRequest,
    #[serde(default)]
    pub stdio: StdioMode,
    /// With `frames`: whether `stdin` notifications will follow. Otherwise the command's
    /// stdin is empty from the start.
    #[serde(default)]
    pub stdin: bool,
}

/// `output` notification: a chunk of the command's stdout or stderr, base64-encoded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Output {
    /// The id of the `run` request it belongs to.
    pub id: Value,
    pub stream: String,
    pub data: String,
}

/// `stdin` notification from the client: bytes for the command (base64), or `eof: true`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stdin {
    pub id: Value,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub eof: bool,
}

/// `signal` notification from the client: the call `id` (a `cli` or `run` request) should
/// have its command sent `signal` (`INT`, `TERM` or `HUP`); the call then ends as the
/// command does, or is stopped after a moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallSignal {
    pub id: Value,
    pub signal: String,
}

/// The signals a caller may pass on to its call.
pub const CALL_SIGNALS: [&str; 3] = ["INT", "TERM", "HUP"];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The code to exit with: the remote code, 128+N for signal N, 255 for openbox's own failure.
    pub exit_code: u8,
    /// The signal that killed the remote command, if one did.
    #[serde(default)]
    pub signal: Option<String>,
    /// Which streams `max_output` cut (their head and tail were kept).
    #[serde(default)]
    pub truncated: Truncated,
}

/// Which of a command's streams lost bytes to its output cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    pub stdout: bool,
    pub stderr: bool,
}

/// `subscribe` result: the fleet as openboxd's mirror holds it now (`None` before the
/// control plane's first word on it); `event` notifications follow from here on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscribed {
    pub nodes: Option<Vec<crate::api::Node>>,
    pub sessions: Option<Vec<crate::api::SessionInfo>>,
    /// Whether the mirror is connected to the control plane right now.
    pub live: bool,
}

/// One change in the fleet, as seen by openboxd's mirror of the control plane's registry:
/// only nodes the user may run on, and the user's own sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetEvent {
    /// A node appeared: it enrolled, or the user was granted it.
    NodeJoined {
        node: crate::api::Node,
    },
    /// A node went: it was removed, or the user's grant for it was.
    NodeLeft {
        node: crate::api::Node,
    },
    NodeOnline {
        node: crate::api::Node,
    },
    NodeOffline {
        node: crate::api::Node,
    },
    NodeTagsChanged {
        node: crate::api::Node,
        previous_tags: Vec<String>,
    },
    NodeRenamed {
        node: crate::api::Node,
        previous_name: String,
    },
    /// A session's shell exited or was reaped, or the session was removed.
    SessionEnded {
        session: crate::api::SessionInfo,
    },
    /// This subscriber fell behind and `count` events were dropped: list again to catch up.
    Missed {
        count: u64,
    },
}

/// `event` notification: a change, for the `subscribe` request `id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventNote {
    pub id: Value,
    #[serde(flatten)]
    pub event: FleetEvent,
}

/// `cli`: a CLI call carried out with the caller's file descriptors (sent with the request).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CliParams {
    pub call: Call,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CliResult {
    pub exit_code: u8,
}

/// The tailnet node openboxd holds, if it has one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeshStatus {
    pub control_url: String,
    pub up: bool,
    /// Its tailnet addresses, once up.
    pub ips: Vec<String>,
    /// Why joining failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// The socket this daemon serves.
    pub socket: String,
    pub protocol: u32,
    pub pid: u32,
    /// The context this daemon serves: each has its own openboxd, login and socket.
    #[serde(default = "default_context")]
    pub context: String,
    pub logged_in: bool,
    pub server: Option<String>,
    pub user: Option<String>,
    /// Open SSH connections to nodes.
    pub connections: usize,
    /// Whether the live registry feed from the control plane is connected.
    pub registry_live: bool,
    /// Nodes in the local mirror of the registry.
    pub nodes: usize,
    #[serde(default)]
    pub mesh: Option<MeshStatus>,
}
