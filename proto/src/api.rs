//! The control plane's HTTP API: JSON bodies under `/v1`. Authenticated calls carry
//! `Authorization: Bearer <token>` (a login token for people, the heartbeat secret for nodes).
//! Every error response is an [`ApiError`] body with a fitting status code.

use serde::{Deserialize, Serialize};

use crate::Isolation;
use crate::time::ago;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Where an agent takes its enrollment token from when `--token-file` is not given: an
/// environment variable, unlike an argument, is not visible to other users.
pub const ENROLL_TOKEN_ENV: &str = "OPENBOX_ENROLL_TOKEN";

/// The event a `/v1/events` stream sends, with the whole node list as its data, whenever
/// the registry changes.
pub const EVENT_NODES: &str = "nodes";

/// The event a `/v1/events` stream sends, with the caller's whole session list as its
/// data, at the start and whenever one of their sessions is placed, ends or is removed.
pub const EVENT_SESSIONS: &str = "sessions";

/// With `?changes=true`, a `/v1/events` stream sends the whole node list once (`nodes`),
/// then each change alone: this event, with the node as its data, when one joins, changes,
/// or goes online or offline (or becomes visible to the caller)…
pub const EVENT_NODE: &str = "node";

/// …and this one, with `{"id": ID}`, when one is removed (or no longer visible). Every
/// node event carries its change's number as its SSE `id`; `?since=ID` resumes after it
/// (the whole list is sent again when that is too far back).
pub const EVENT_NODE_REMOVED: &str = "node_removed";

/// The data of an [`EVENT_NODE_REMOVED`] event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRemoved {
    pub id: String,
}

/// `GET /v1/health`: answered without authentication.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `ok` while the control plane serves.
    pub status: String,
    pub version: String,
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
    /// The nodes this user may run on (admins may run anywhere).
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// What an admin lets a user run on: the nodes carrying a tag, or one node, and with which
/// isolation kinds (none listed: any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `Tag` or `Node`; a node is named by id or name when granting, and shown by name.
    pub on: Target,
    #[serde(default)]
    pub isolation: Vec<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, value) = self.on.parts();
        write!(f, "{kind}:{value}")?;
        if !self.isolation.is_empty() {
            write!(f, " ({})", self.isolation.join(", "))?;
        }
        Ok(())
    }
}

/// Where an agent runs and as whom, so that the control plane can tell the nodes that could
/// read its own files (its machine, and its user or root).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHost {
    /// A hash of the machine's id (see `paths::machine`).
    pub machine: String,
    pub uid: u32,
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

/// An enrollment token not used yet (`GET /v1/enroll-tokens`, admins only), known by the
/// start of its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub created_at: u64,
    pub expires_at: u64,
    /// The admin who minted it.
    pub created_by: String,
}

/// A one-time link that opens the dashboard logged in (`POST /v1/web-links`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebLink {
    pub url: String,
    pub expires_at: u64,
}

impl std::fmt::Display for WebLink {
    /// What `openbox dashboard` says.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Open the dashboard, logged in as you (the link works once, for two minutes):\n  {}", self.url)
    }
}

/// A command for the dashboard's console (`POST /v1/console`): run once, its output
/// streamed back as lines of JSON ([`ConsoleEvent`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsoleRequest {
    pub target: Target,
    pub command: String,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub isolation: crate::Isolation,
}

/// One line of a console command's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleEvent {
    /// The node it runs on.
    Started {
        node: String,
    },
    Stdout(String),
    Stderr(String),
    /// How it ended: its exit code, and the signal that ended it if one did.
    Exit {
        code: u8,
        signal: Option<String>,
    },
    /// It could not run, or the connection was lost.
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    pub fn this_machine() -> Platform {
        Platform { os: std::env::consts::OS.to_owned(), arch: std::env::consts::ARCH.to_owned() }
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
    /// Where clients dial the agent, `HOST:PORT`; empty when it is on the tailnet only.
    pub addr: String,
    /// Its address on the tailnet, `IP:PORT`, when it serves there.
    #[serde(default)]
    pub mesh_addr: Option<String>,
    /// Tags asked for by the node, added to those the token carries.
    pub tags: Vec<String>,
    pub platform: Platform,
    /// The node's own host public key (OpenSSH format); its private half never leaves it.
    pub host_public_key: String,
    /// The isolation kinds the node can serve, so that it is dispatched to for them from
    /// the moment it is enrolled (see [`crate::isolation::KINDS`]).
    #[serde(default = "native_only")]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub host: Option<AgentHost>,
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

/// `POST /v1/enroll/mesh`: the fleet's tailnet, for a node about to enroll with this token
/// (the token stays unused).
#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollMeshRequest {
    pub token: String,
}

/// The tailnet a control plane hands to its nodes before they enroll (`POST
/// /v1/enroll/mesh`) and to its users at login (`GET /v1/mesh`), so that they join it with
/// no settings of their own.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshSettings {
    /// The coordination server (Headscale, or Tailscale's).
    pub control_url: String,
    /// A reusable auth key for that server; a secret.
    pub auth_key: String,
}

impl std::fmt::Debug for MeshSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSettings").field("control_url", &self.control_url).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub addr: String,
    #[serde(default)]
    pub mesh_addr: Option<String>,
    pub platform: Platform,
    pub version: String,
    /// When the node's current host certificate expires, so the CA can renew it in time.
    pub host_cert_valid_before: u64,
    /// Sent once on a clean shutdown, so the registry shows the node offline at once.
    #[serde(default)]
    pub stopping: bool,
    /// The node's live sessions, and those that ended since the last heartbeat.
    #[serde(default)]
    pub sessions: Vec<SessionReport>,
    /// The isolation kinds the node can serve right now (see [`crate::isolation::KINDS`]).
    #[serde(default = "native_only")]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub host: Option<AgentHost>,
    /// What the node ran since the executions it last had recorded (at most
    /// [`MAX_EXECUTIONS_PER_HEARTBEAT`]).
    #[serde(default)]
    pub executions: Vec<Execution>,
}

/// The states a node reports a session in.
pub const SESSION_STATES: [&str; 4] = ["active", "exited", "reaped", "ended"];

/// A word a node reports about itself (its OS, architecture, version): printable ASCII
/// without spaces or quotes, at most 64 bytes, so that no table or log shows more than it
/// says.
pub fn check_reported_word(field: &str, value: &str) -> Result<(), crate::Invalid> {
    let ok = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '`' | '\\' | '<' | '>');
    if value.is_empty() || value.len() > 64 || !value.chars().all(ok) {
        return Err(crate::Invalid::Reported(format!(
            "{field} {value:?} must be 1 to 64 printable characters without spaces or quotes"
        )));
    }
    Ok(())
}

/// An address a node reports (`HOST:PORT`, or empty for a node on the tailnet only).
pub fn check_reported_addr(field: &str, value: &str) -> Result<(), crate::Invalid> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '[' | ']' | '%');
    if value.len() > 255 || !value.chars().all(ok) {
        return Err(crate::Invalid::Reported(format!("{field} {value:?} is not a HOST:PORT address")));
    }
    Ok(())
}

/// Text a node reports that may hold anything printable (a certificate's key id, how a
/// command ended): no control characters, at most `max` bytes.
fn check_reported_text(field: &str, value: &str, max: usize) -> Result<(), crate::Invalid> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(crate::Invalid::Reported(format!(
            "{field} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

impl Platform {
    /// What a node reports of its platform, checked (see [`check_reported_word`]).
    pub fn check(&self) -> Result<(), crate::Invalid> {
        check_reported_word("platform", &self.os)?;
        check_reported_word("arch", &self.arch)
    }
}

impl Heartbeat {
    /// Everything the node reports, checked: a node's words reach tables, logs and the
    /// audit, so a heartbeat with anything that does not look as it should is refused whole.
    pub fn check(&self) -> Result<(), crate::Invalid> {
        self.platform.check()?;
        check_reported_word("version", &self.version)?;
        check_reported_addr("addr", &self.addr)?;
        for s in &self.sessions {
            crate::check_name("session user", &s.user)?;
            crate::check_name("session id", &s.id)?;
            if !SESSION_STATES.contains(&s.state.as_str()) {
                return Err(crate::Invalid::Reported(format!(
                    "session state {:?} is not one of {}",
                    s.state,
                    SESSION_STATES.join(", ")
                )));
            }
        }
        if self.executions.len() > MAX_EXECUTIONS_PER_HEARTBEAT {
            return Err(crate::Invalid::Reported(format!(
                "a heartbeat reports at most {MAX_EXECUTIONS_PER_HEARTBEAT} executions"
            )));
        }
        self.executions.iter().try_for_each(Execution::check)
    }
}

/// How many executions one heartbeat carries at most (the rest wait for the next).
pub const MAX_EXECUTIONS_PER_HEARTBEAT: usize = 500;

/// What a node ran for a user — a command, a login shell or a file transfer — as the node
/// itself reports it for the audit log: what the caller said it would run is a claim, this
/// is what ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The node's own id for the record (kept once, however often it is sent).
    pub id: String,
    /// The certificate's user.
    pub user: String,
    /// The certificate's key id (the dispatch that minted it).
    pub key_id: String,
    pub isolation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// One of [`EXECUTION_KINDS`].
    pub kind: String,
    /// SHA-256 of the command line, hex (commands only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_sha256: Option<String>,
    /// The command line itself, when the fleet records commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Unix seconds.
    pub started_at: u64,
    pub duration_ms: u64,
    /// How it ended: an exit code, `signal NAME`, `refused: …`, `unknown: …`.
    pub exit: String,
}

/// What an [`Execution`] was: a command, a login shell in a terminal, a file transfer.
pub const EXECUTION_KINDS: [&str; 3] = ["command", "shell", "sftp"];

impl Execution {
    pub fn check(&self) -> Result<(), crate::Invalid> {
        crate::check_name("execution id", &self.id)?;
        crate::check_name("execution user", &self.user)?;
        check_reported_text("key id", &self.key_id, 256)?;
        self.isolation.parse::<crate::Isolation>()?;
        if let Some(s) = &self.session {
            crate::check_name("session id", s)?;
        }
        if !EXECUTION_KINDS.contains(&self.kind.as_str()) {
            return Err(crate::Invalid::Reported(format!("execution kind {:?} is not known", self.kind)));
        }
        if let Some(h) = &self.command_sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(crate::Invalid::Reported("command_sha256 must be 64 hex digits".into()));
        }
        if self.command.as_ref().is_some_and(|c| c.len() > 64 * 1024) {
            return Err(crate::Invalid::Reported("a reported command line is at most 64 KiB".into()));
        }
        check_reported_text("exit", &self.exit, 256)
    }
}

fn native_only() -> Vec<String> {
    vec!["native".to_owned()]
}

/// The kinds in `said` that this version knows how to dispatch, in [`crate::isolation::KINDS`]
/// order; anything else a node says is ignored.
pub fn known_capabilities(said: &[String]) -> Vec<String> {
    crate::isolation::KINDS.iter().filter(|k| said.iter().any(|c| c == *k)).map(|k| k.to_string()).collect()
}

/// What a node says about one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    pub user: String,
    pub id: String,
    /// `active`, `exited` (the shell exited), `reaped` (idle too long) or `ended` (removed).
    pub state: String,
    pub last_used: u64,
}

/// A session in the directory, as `openbox sessions` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub node_id: String,
    pub node_name: String,
    /// `None` when the stored isolation no longer parses (then `state` says so).
    pub isolation: Option<Isolation>,
    pub created_at: u64,
    pub last_used: u64,
    /// `active`, `exited`, `reaped`, or an `error: …` that says what is wrong with it.
    pub state: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// A renewed host certificate, when the current one is past half its life.
    pub host_cert: Option<String>,
    /// Users removed lately: the node refuses their certificates and ends their sessions.
    #[serde(default)]
    pub revoked_users: Vec<RevokedUser>,
    /// Users whose access was narrowed lately (a grant taken back or changed): the node
    /// refuses their certificates issued before then.
    #[serde(default)]
    pub cert_cutoffs: Vec<CertCutoff>,
    /// The `record_id`s of the executions the heartbeat reported that are now in the
    /// audit log: the node forgets them.
    #[serde(default)]
    pub executions_recorded: Vec<String>,
    /// Whether the fleet records command lines themselves (`openbox control
    /// --audit-commands`), not only their SHA-256.
    #[serde(default)]
    pub audit_commands: bool,
}

/// A user whose certificates issued before `cutoff` (Unix seconds) no node accepts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CertCutoff {
    pub name: String,
    /// The `user@openbox` extension of its certificates.
    pub incarnation: String,
    pub cutoff: u64,
}

/// A user removed from the fleet, as the certificates it was given name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RevokedUser {
    pub name: String,
    /// The `user@openbox` extension of its certificates.
    pub incarnation: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub platform: Platform,
    /// Where clients dial it directly, `HOST:PORT`; empty when it is on the tailnet only.
    pub addr: String,
    /// Its address on the tailnet, `IP:PORT`, when it is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_addr: Option<String>,
    pub online: bool,
    pub last_seen: Option<u64>,
    pub created_at: u64,
    /// The isolation kinds it reported it can serve: `native`, `docker`, `nspawn`.
    #[serde(default = "native_only")]
    pub capabilities: Vec<String>,
    /// Its agent runs on the control plane's machine as the control plane's user or root,
    /// so it could read the control plane's files: only admins, and users granted this
    /// node by name, may run there.
    #[serde(default)]
    pub shares_control: bool,
    /// When its host certificate ends (Unix seconds): the one it presented at its last
    /// heartbeat, or the one renewed in the reply. A node renews it at half its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cert_expires: Option<u64>,
}

impl Node {
    pub fn can_run(&self, kind: &str) -> bool {
        self.capabilities.iter().any(|c| c == kind)
    }
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

impl Target {
    /// `("tag", TAG)` or `("node", NODE)`: how a grant on it is stored, addressed and shown.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Target::Tag(t) => ("tag", t),
            Target::Node(n) => ("node", n),
        }
    }
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

/// One line of the audit log (`GET /v1/audit`, admins only): a dispatch, or a change to
/// users, nodes, tokens or sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: u64,
    /// Who did it (`(enrollment)` for a node enrolling with a token).
    pub user: String,
    /// `dispatch` (`detail` is `web console` for one from the dashboard), `user.add`,
    /// `user.remove`, `user.token`, `node.token`, `node.token.remove`, `node.enroll`,
    /// `node.update`, `node.remove`, `session.remove`, `user.grant`, `user.revoke`,
    /// `web.login`.
    pub action: String,
    pub node_id: Option<String>,
    pub isolation: Option<String>,
    pub session: Option<String>,
    /// The key id of the certificate a dispatch minted (the agent logs it with each command).
    pub key_id: Option<String>,
    /// The address the request came from.
    pub source: Option<String>,
    pub command_sha256: Option<String>,
    /// The command line itself, only when the control plane records commands.
    pub command: Option<String>,
    /// What changed (a name, tags); for `exec`, what ran when it was not a command
    /// (`shell`, `sftp`).
    pub detail: Option<String>,
    /// For `exec`: the node's own id for the record, so one sent twice is kept once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    /// For `exec`: how long it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// For `exec`: how it ended (`0`, `127`, `signal TERM`, `refused: …`, `unknown: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dispatch {
    pub node: Node,
    /// The user certificate (OpenSSH format), valid for a few minutes.
    pub cert: String,
    pub ca_public_key: String,
    pub request_id: String,
}

/// Why a target could not be resolved to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    NoSuchNode(String),
    NoSuchTag {
        tag: String,
        known: Vec<String>,
    },
    /// Every matching node is offline: (name, last seen) of each.
    Offline {
        target: Target,
        nodes: Vec<(String, Option<u64>)>,
        now: u64,
    },
    /// No online matching node can serve this isolation kind: (name, what it can) of each.
    Incapable {
        target: Target,
        kind: String,
        nodes: Vec<(String, Vec<String>)>,
    },
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::NoSuchNode(n) => write!(f, "no node with id or name {n:?}; `openbox nodes` lists them"),
            ResolveError::NoSuchTag { tag, known } => {
                let known = if known.is_empty() { "none yet".to_owned() } else { known.join(", ") };
                write!(f, "no node carries tag {tag:?}; tags in this fleet: {known}")
            }
            ResolveError::Offline { target: Target::Node(_), nodes, now } => {
                let (name, seen) = &nodes[0];
                write!(f, "node {name} is offline (last seen {})", ago(*now, *seen))
            }
            ResolveError::Offline { target: Target::Tag(tag), nodes, now } => {
                let seen: Vec<String> = nodes.iter().map(|(n, s)| format!("{n} last seen {}", ago(*now, *s))).collect();
                write!(f, "every node tagged {tag:?} is offline ({})", seen.join("; "))
            }
            ResolveError::Incapable { target, kind, nodes } => {
                let can: Vec<String> = nodes.iter().map(|(n, c)| format!("{n} offers {}", c.join(", "))).collect();
                let what = match target {
                    Target::Node(_) => "node".to_owned(),
                    Target::Tag(tag) => format!("online node tagged {tag:?}"),
                };
                let hint = match kind.as_str() {
                    "docker" => "; a node offers docker when its agent reaches a Docker-API engine (DOCKER_HOST)",
                    "nspawn" => "; a node offers nspawn when its agent runs as root with systemd-nspawn installed",
                    _ => "",
                };
                write!(f, "no {what} can run {kind} isolation ({}){hint}", can.join("; "))
            }
        }
    }
}

/// Picks the node for `target` from a registry listing: an exact node (by id, else name),
/// or one of the online nodes carrying the tag, chosen by `spread` (any number; it spreads
/// calls over the candidates). The node must offer the isolation `kind`. Shared by the
/// control plane and openboxd's registry mirror so both choose alike. The listing may hold
/// the nodes or references to them (a caller that filters a large registry copies nothing).
pub fn resolve<'a, N: std::borrow::Borrow<Node>>(
    listing: &'a [N],
    target: &Target,
    kind: &str,
    now: u64,
    spread: usize,
) -> Result<&'a Node, ResolveError> {
    let nodes = || listing.iter().map(std::borrow::Borrow::borrow);
    let incapable = |nodes: &[&Node]| ResolveError::Incapable {
        target: target.clone(),
        kind: kind.to_owned(),
        nodes: nodes.iter().map(|n| (n.name.clone(), n.capabilities.clone())).collect(),
    };
    match target {
        Target::Node(n) => {
            let node = nodes()
                .find(|x| &x.id == n)
                .or_else(|| nodes().find(|x| &x.name == n))
                .ok_or_else(|| ResolveError::NoSuchNode(n.clone()))?;
            if node.online {
                if !node.can_run(kind) {
                    return Err(incapable(&[node]));
                }
                Ok(node)
            } else {
                Err(ResolveError::Offline {
                    target: target.clone(),
                    nodes: vec![(node.name.clone(), node.last_seen)],
                    now,
                })
            }
        }
        Target::Tag(tag) => {
            let tagged: Vec<&Node> = nodes().filter(|n| n.tags.contains(tag)).collect();
            if tagged.is_empty() {
                let mut known: Vec<String> = nodes().flat_map(|n| n.tags.iter().cloned()).collect();
                known.sort_unstable();
                known.dedup();
                return Err(ResolveError::NoSuchTag { tag: tag.clone(), known });
            }
            let online: Vec<&Node> = tagged.iter().copied().filter(|n| n.online).collect();
            if online.is_empty() {
                let nodes = tagged.iter().map(|n| (n.name.clone(), n.last_seen)).collect();
                return Err(ResolveError::Offline { target: target.clone(), nodes, now });
            }
            let capable: Vec<&Node> = online.iter().copied().filter(|n| n.can_run(kind)).collect();
            if capable.is_empty() {
                return Err(incapable(&online));
            }
            Ok(capable[spread % capable.len()])
        }
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    fn node(id: &str, tags: &[&str], online: bool) -> Node {
        Node {
            id: id.into(),
            name: format!("n-{id}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            platform: Platform { os: "linux".into(), arch: "x86_64".into() },
            addr: "127.0.0.1:1".into(),
            mesh_addr: None,
            online,
            last_seen: Some(100),
            created_at: 1,
            capabilities: vec!["native".into()],
            shares_control: false,
            host_cert_expires: None,
        }
    }

    #[test]
    fn a_tag_resolves_only_to_online_nodes_carrying_it() {
        let nodes = [node("a", &["x"], false), node("b", &["x"], true), node("c", &["y"], true)];
        for spread in 0..4 {
            assert_eq!(resolve(&nodes, &Target::Tag("x".into()), "native", 100, spread).unwrap().id, "b");
        }
    }

    #[test]
    fn unknown_tags_list_the_known_ones_and_offline_ones_say_so() {
        let nodes = [node("a", &["x"], false), node("c", &["y", "x"], false)];
        let e = resolve(&nodes, &Target::Tag("z".into()), "native", 100, 0).unwrap_err();
        assert_eq!(e.to_string(), "no node carries tag \"z\"; tags in this fleet: x, y");
        let e = resolve(&nodes, &Target::Tag("x".into()), "native", 130, 0).unwrap_err();
        assert_eq!(e.to_string(), "every node tagged \"x\" is offline (n-a last seen 30s ago; n-c last seen 30s ago)");
        assert_eq!(
            resolve(&nodes, &Target::Node("n-c".into()), "native", 100, 0).unwrap_err().to_string(),
            "node n-c is offline (last seen 0s ago)"
        );
    }

    #[test]
    fn a_tag_resolves_only_to_nodes_offering_the_isolation_and_says_what_each_offers() {
        let mut docker = node("d", &["x"], true);
        docker.capabilities.push("docker".into());
        let nodes = [node("a", &["x"], true), docker];
        for spread in 0..4 {
            assert_eq!(resolve(&nodes, &Target::Tag("x".into()), "docker", 100, spread).unwrap().id, "d");
        }
        let e = resolve(&nodes, &Target::Tag("x".into()), "nspawn", 100, 0).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "no online node tagged \"x\" can run nspawn isolation (n-a offers native; n-d offers native, docker)"
            ),
            "{e}"
        );
        let e = resolve(&nodes, &Target::Node("n-a".into()), "docker", 100, 0).unwrap_err();
        assert!(e.to_string().starts_with("no node can run docker isolation (n-a offers native)"), "{e}");
    }
}

/// Whether the control plane can serve (`GET /v1/ready`): its database answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/nodes`: only the nodes carrying this tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `GET /v1/audit`: which entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only entries from the last this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/mesh`: `key=none` asks which tailnet only, no key (the caller is on it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `GET /v1/events`: the whole lists as they change, or each change numbered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Each change alone, numbered, after the whole list once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changes: bool,
    /// Resume after this change (implies `changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

/// `GET /v1/console/terminal`: what the dashboard's terminal asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalQuery {
    /// `node:NAME` or `tag:TAG`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    pub cols: u32,
    pub rows: u32,
}
