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
    /// How much openbox says besides the answer: -1 quiet (no progress lines), 0 as
    /// usual, 1 and more its own log lines for the call too (`-v`, `-vv`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub verbosity: i8,
}

fn is_zero(v: &i8) -> bool {
    *v == 0
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
    /// `openbox cp SRC DST`: files to or from a node, over SFTP.
    Copy(CopyRequest),
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
    /// Start a command as a job (`--detach`): its id is printed at once.
    JobStart {
        run: RunRequest,
        /// Keep its stdin open for `openbox job send`.
        #[serde(default)]
        stdin: bool,
        /// Run it in a terminal of this size (`--terminal ROWSxCOLS`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terminal: Option<TerminalSize>,
    },
    /// The jobs openboxd keeps.
    Jobs,
    /// A job's output so far (and, with `follow`, as it comes until it ends).
    JobLogs {
        id: String,
        #[serde(default)]
        follow: bool,
    },
    /// Wait until a job ends; exit with its code.
    JobWait {
        id: String,
        #[serde(default)]
        timeout_secs: Option<crate::time::Seconds>,
    },
    /// Stop a job on its node.
    JobStop {
        id: String,
    },
    /// The caller's stdin, to a job's; with `close`, the job's stdin is closed after it.
    JobSend {
        id: String,
        #[serde(default)]
        close: bool,
    },
    /// Forget an ended job: its output here and on its node goes.
    JobRemove {
        id: String,
    },
    /// A terminal job's screen: as its node shows it now, or as it was at its end.
    JobScreen {
        id: String,
    },
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
    /// Names for a shell's completion, one per line, from what openboxd knows already
    /// (no control-plane call): empty when it knows none yet.
    Names {
        kind: NameKind,
    },
    /// Show the running openboxd's state.
    DaemonStatus,
    /// Stop the running openboxd.
    DaemonStop,
}

/// What [`Request::Names`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameKind {
    Nodes,
    Tags,
    Sessions,
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
    pub timeout_secs: Option<crate::time::Seconds>,
    /// Keep at most this many bytes of each stream: its head and its tail, with a mark.
    #[serde(default)]
    pub max_output: Option<u64>,
    /// Run it in a pseudo-terminal on the node (`-i`); with no command, a login shell.
    /// Needs the caller's terminal as stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtyRequest>,
    /// Ports forwarded while it runs (`-L`, `-R`); with no command, until the caller stops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
}

/// `openbox cp`: one side here, the other on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// Where from: one place, or a list of them, all on one side (several go into `to`,
    /// which is then a directory that exists, as for scp).
    #[serde(with = "one_or_many")]
    pub from: Vec<Place>,
    pub to: Place,
    /// Directories too, with everything in them.
    pub recursive: bool,
    /// Show progress on stderr (it is a terminal).
    pub progress: bool,
    /// Into or out of this session's container (or shell, for a native session).
    #[serde(default)]
    pub session: Option<String>,
    /// Give up after this long (`--timeout`): the copy is stopped and the call exits 124.
    #[serde(default)]
    pub timeout_secs: Option<crate::time::Seconds>,
}

/// A list on the wire that may be one item alone.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }

    pub fn serialize<T: Serialize, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
        match items {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        let items = match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        if items.is_empty() {
            return Err(serde::de::Error::custom("an empty list: give at least one"));
        }
        Ok(items)
    }
}

/// One side of a copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// A path on this machine, absolute.
    Local { path: String },
    /// A path on a node: absolute, or from the account's home.
    Remote { target: crate::api::Target, path: String },
}

impl Place {
    /// `NODE:PATH`, `tag:TAG:PATH`, or a local path (one with a `/` before any `:` — as
    /// `./a:b` — is local, as for scp). A local path is made absolute against `cwd`.
    pub fn parse(text: &str, cwd: &std::path::Path) -> Result<Place, String> {
        let local = || Place::Local { path: cwd.join(text).display().to_string() };
        let Some((host, rest)) = text.split_once(':') else { return Ok(local()) };
        if host.contains('/') {
            return Ok(local());
        }
        let (target, path) = match host {
            "tag" => match rest.split_once(':') {
                Some((tag, path)) => {
                    crate::check_name("tag", tag).map_err(|e| e.to_string())?;
                    (crate::api::Target::Tag(tag.to_owned()), path)
                }
                None => return Err(format!("{text:?}: a tag place is tag:TAG:PATH")),
            },
            "" => return Err(format!("{text:?}: name the node before the colon (NODE:PATH)")),
            node => (crate::api::Target::Node(node.to_owned()), rest),
        };
        Ok(Place::Remote { target, path: if path.is_empty() { ".".into() } else { path.to_owned() } })
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local { path } => f.write_str(path),
            Place::Remote { target: crate::api::Target::Tag(t), path } => write!(f, "tag:{t}:{path}"),
            Place::Remote { target: crate::api::Target::Node(n), path } => write!(f, "{n}:{path}"),
        }
    }
}

/// Which way a forward goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// `-L`: a listener here, connections made from the node.
    Local,
    /// `-R`: a listener on the node's loopback, connections made from here.
    Remote,
}

/// A port forward, as `ssh -L/-R [BIND:]PORT:HOST:HOSTPORT` spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub direction: Direction,
    /// Where the listener listens (`-L`: on this machine; `-R`: the node's loopback).
    pub bind: String,
    /// Its port (0 for `-R`: any free one, told back).
    pub port: u16,
    /// Where each connection goes: seen from the node for `-L`, from here for `-R`.
    pub host: String,
    pub host_port: u16,
}

impl Forward {
    /// Parses `[BIND:]PORT:HOST:HOSTPORT` (an IPv6 address in brackets).
    pub fn parse(direction: Direction, spec: &str) -> Result<Forward, String> {
        let flag = match direction {
            Direction::Local => "-L",
            Direction::Remote => "-R",
        };
        let bad = |why: &str| {
            format!("{flag} {spec:?}: {why}; the form is [BIND:]PORT:HOST:HOSTPORT, e.g. 8080:localhost:80")
        };
        let mut parts = Vec::new();
        let mut rest = spec;
        while !rest.is_empty() {
            let (part, after) = match rest.strip_prefix('[') {
                Some(inner) => {
                    let end = inner.find(']').ok_or_else(|| bad("an unclosed ["))?;
                    (&inner[..end], inner[end + 1..].strip_prefix(':').unwrap_or(&inner[end + 1..]))
                }
                None => match rest.split_once(':') {
                    Some((part, after)) => (part, after),
                    None => (rest, ""),
                },
            };
            parts.push(part);
            rest = after;
        }
        let port =
            |text: &str, what: &str| text.parse::<u16>().map_err(|_| bad(&format!("{what} {text:?} is not a port")));
        let (bind, port_text, host, host_port) = match parts[..] {
            [bind, p, host, hp] => (bind, p, host, hp),
            [p, host, hp] => ("127.0.0.1", p, host, hp),
            _ => return Err(bad("it needs three or four parts")),
        };
        let forward = Forward {
            direction,
            bind: if bind.is_empty() || bind == "localhost" { "127.0.0.1".into() } else { bind.to_owned() },
            port: port(port_text, "port")?,
            host: host.to_owned(),
            host_port: port(host_port, "port")?,
        };
        if forward.host.is_empty() || forward.host_port == 0 {
            return Err(bad("HOST:HOSTPORT must name where connections go"));
        }
        if direction == Direction::Local && forward.port == 0 {
            return Err(bad("the local port must not be 0"));
        }
        if direction == Direction::Remote
            && !matches!(forward.bind.parse::<std::net::IpAddr>(), Ok(ip) if ip.is_loopback())
        {
            return Err(bad("the node listens on its loopback only (BIND 127.0.0.1 or ::1)"));
        }
        Ok(forward)
    }
}

impl std::fmt::Display for Forward {
    /// As `127.0.0.1:8080 -> localhost:80`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = |h: &str| if h.contains(':') { format!("[{h}]") } else { h.to_owned() };
        write!(f, "{}:{} -> {}:{}", host(&self.bind), self.port, host(&self.host), self.host_port)
    }
}

/// A job's terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

impl TerminalSize {
    /// The largest terminal a job gets (its screen is kept in memory on the node).
    pub const MAX_ROWS: u16 = 500;
    pub const MAX_COLS: u16 = 1000;

    /// Whether a terminal of `rows` × `cols` may be, or what to give instead.
    pub fn check(rows: u32, cols: u32) -> Result<(), String> {
        let fits = |n: u32, max: u16| (1..=u32::from(max)).contains(&n);
        if fits(rows, Self::MAX_ROWS) && fits(cols, Self::MAX_COLS) {
            return Ok(());
        }
        Err(format!(
            "a terminal of {rows}×{cols} cannot be: give 1 to {} rows and 1 to {} columns",
            Self::MAX_ROWS,
            Self::MAX_COLS
        ))
    }
}

#[cfg(test)]
mod forward_tests {
    use super::*;

    #[test]
    fn copy_places_read_as_scp_reads_them() {
        let cwd = std::path::Path::new("/home/me");
        let node = |n: &str, p: &str| Place::Remote { target: crate::api::Target::Node(n.into()), path: p.into() };
        // One source travels as a place, several as a list; both are read.
        let to = Place::Local { path: "/d".into() };
        let req = |from: Vec<Place>| CopyRequest {
            from,
            to: to.clone(),
            recursive: false,
            progress: false,
            session: None,
            timeout_secs: None,
        };
        for from in [vec![node("a", "/x")], vec![node("a", "/x"), node("a", "/y")]] {
            let json = serde_json::to_value(req(from.clone())).unwrap();
            assert_eq!(json["from"].is_array(), from.len() > 1, "{json}");
            assert_eq!(serde_json::from_value::<CopyRequest>(json).unwrap().from, from);
        }
        let empty =
            serde_json::json!({"from": [], "to": {"local": {"path": "/d"}}, "recursive": false, "progress": false});
        assert!(serde_json::from_value::<CopyRequest>(empty).is_err());
        assert_eq!(Place::parse("box:/etc/hosts", cwd).unwrap(), node("box", "/etc/hosts"));
        assert_eq!(Place::parse("box:", cwd).unwrap(), node("box", "."));
        assert_eq!(
            Place::parse("tag:gpu:data/x", cwd).unwrap(),
            Place::Remote { target: crate::api::Target::Tag("gpu".into()), path: "data/x".into() }
        );
        assert_eq!(Place::parse("a.txt", cwd).unwrap(), Place::Local { path: "/home/me/a.txt".into() });
        assert_eq!(Place::parse("./a:b", cwd).unwrap(), Place::Local { path: "/home/me/./a:b".into() });
        assert_eq!(Place::parse("/x/y:z", cwd).unwrap(), Place::Local { path: "/x/y:z".into() });
        assert!(Place::parse(":x", cwd).is_err());
        assert!(Place::parse("tag:gpu", cwd).is_err());
    }

    #[test]
    fn forwards_parse_as_ssh_spells_them_and_bad_ones_say_the_form() {
        let l = Forward::parse(Direction::Local, "8080:localhost:80").unwrap();
        assert_eq!((l.bind.as_str(), l.port, l.host.as_str(), l.host_port), ("127.0.0.1", 8080, "localhost", 80));
        let l = Forward::parse(Direction::Local, "0.0.0.0:8080:[::1]:80").unwrap();
        assert_eq!((l.bind.as_str(), l.host.as_str()), ("0.0.0.0", "::1"));
        let r = Forward::parse(Direction::Remote, "0:127.0.0.1:5432").unwrap();
        assert_eq!((r.port, r.host_port), (0, 5432));
        assert_eq!(r.to_string(), "127.0.0.1:0 -> 127.0.0.1:5432");
        for bad in ["8080", "8080:80", "x:localhost:80", "8080:localhost:99999", "0:localhost:80", "1:2:3:4:5"] {
            let e = Forward::parse(Direction::Local, bad).unwrap_err();
            assert!(e.contains("[BIND:]PORT:HOST:HOSTPORT"), "{bad}: {e}");
        }
        assert!(Forward::parse(Direction::Remote, "0.0.0.0:80:localhost:80").unwrap_err().contains("loopback only"));
    }
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
    pub timeout_secs: Option<crate::time::Seconds>,
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
    /// Control plane listen address for the embedded fleet; without one, the address the
    /// last `up` was given (127.0.0.1:7683 the first time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_addr: Option<String>,
}
