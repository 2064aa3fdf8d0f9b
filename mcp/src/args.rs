//! What each tool takes, and what it answers: strict (an argument a tool does not know is
//! refused, with the list of those it does), described for the client's model, and turned
//! into openboxd requests here.

use proto::api::Target;
use rmcp::schemars;
use serde::{Deserialize, Serialize};

/// What the MCP client sees of a run's output at most, per stream, unless it asks.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;
/// A `run` gives up after this long unless told otherwise (clients time out near 60 s).
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// What `read_file` returns at most unless asked.
pub const DEFAULT_READ: u64 = 1 << 20;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Run on an online node carrying this tag (give `tag`, `node` or `session`).
    pub tag: Option<String>,
    /// Run on this node, by name or id.
    pub node: Option<String>,
    /// The command line, run by the node's `sh -c` (quote as for a shell).
    pub command: String,
    /// A persistent session: same node, same shell; `cd` and exported variables carry over. Repeat its `isolation` on every call.
    pub session: Option<String>,
    /// `native` (default), `docker:IMAGE` or `nspawn:DIR`.
    pub isolation: Option<String>,
    /// Stop the command after this many seconds (exit 124). Default 60 for `run`, none for `start`; 0 means no limit.
    pub timeout_secs: Option<u64>,
    /// Keep at most this many bytes of each stream (head and tail, with a mark between). Default 1048576.
    pub max_output: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAllArgs {
    /// Run on every online node carrying all of these tags (at least one).
    pub tags: Vec<String>,
    pub command: String,
    /// `native` (default), `docker:IMAGE` or `nspawn:DIR`, on every node.
    pub isolation: Option<String>,
    /// Per node, in seconds. Default 60; 0 means no limit.
    pub timeout_secs: Option<u64>,
    /// Per node and stream, in bytes. Default 1048576.
    pub max_output: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodesArgs {
    /// Only nodes carrying this tag.
    pub tag: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// The session's name.
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    /// The job id `start` returned.
    pub job: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// The job id `start` returned.
    pub job: String,
    /// Byte offset in stdout to read from (the `stdout_next` of the last read). Default 0.
    pub stdout_offset: Option<u64>,
    /// Byte offset in stderr to read from. Default 0.
    pub stderr_offset: Option<u64>,
    /// At most this many bytes of each stream. Default 65536, at most 16777216.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// Run on an online node carrying this tag (give `tag`, `node` or `session`).
    pub tag: Option<String>,
    /// Run on this node, by name or id.
    pub node: Option<String>,
    /// The command line, run by the node's `sh -c` (quote as for a shell).
    pub command: String,
    /// Run it in this session (it waits for the job between calls); default: a session of its own.
    pub session: Option<String>,
    /// `native` (default), `docker:IMAGE` or `nspawn:DIR`.
    pub isolation: Option<String>,
    /// Stop the job after this many seconds (exit 124). Default: no limit.
    pub timeout_secs: Option<u64>,
    /// Keep the job's stdin open for `write_stdin` (else it reads end of input at once).
    pub stdin: Option<bool>,
    /// Run it in a terminal of this size, for an interactive program (an editor, a REPL, a
    /// prompt): `screen` shows what it shows, `send_keys` types into it.
    pub terminal: Option<proto::jobs::TerminalSize>,
}

impl StartArgs {
    /// The command part, as for `run`; whether stdin stays open; the terminal.
    pub fn run(self) -> (RunArgs, bool, Option<proto::jobs::TerminalSize>) {
        let StartArgs { tag, node, command, session, isolation, timeout_secs, stdin, terminal } = self;
        let run = RunArgs { tag, node, command, session, isolation, timeout_secs, max_output: None };
        (run, stdin.unwrap_or(false), terminal)
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinArgs {
    /// The job id `start` returned.
    pub job: String,
    /// Text to write.
    pub text: Option<String>,
    /// Bytes to write, base64-encoded.
    pub data_base64: Option<String>,
    /// Close the job's stdin after this.
    pub close: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysArgs {
    /// The job id `start` returned (a job started with `terminal`).
    pub job: String,
    /// What to type, in order: each item is text typed as is, or one key by name — Enter,
    /// Tab, Escape, Backspace, Up, Down, Left, Right, Home, End, PageUp, PageDown, Delete,
    /// Space, or Ctrl-X for a letter X (Ctrl-C interrupts). E.g. ["i", "hello", "Escape", ":wq", "Enter"].
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// The job id `start` returned.
    pub job: String,
    /// Wait at most this many seconds (at most 50, so the tool call itself never times out). Default 50.
    pub seconds: Option<u64>,
}

/// Where a file is: a node (by name or tag), or a session's node and container.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// The node, by name or id (or give `tag` or `session`).
    pub node: Option<String>,
    /// Any online node carrying this tag.
    pub tag: Option<String>,
    /// A session: its node, inside its container when it has one.
    pub session: Option<String>,
    /// Absolute, or from the account's home.
    pub path: String,
    /// Bytes from here (default 0). Give `line` instead to read by lines.
    pub offset: Option<u64>,
    /// At most this many bytes (default 1048576, at most 134217728).
    pub length: Option<u64>,
    /// Read by lines: from this line (1 is the first).
    pub line: Option<u64>,
    /// With `line`: this many lines (default: to the end, within `length` bytes).
    pub count: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    pub node: Option<String>,
    pub tag: Option<String>,
    pub session: Option<String>,
    /// Absolute, or from the account's home. Its directory must exist.
    pub path: String,
    /// The text to write (give this or `content_base64`).
    pub content: Option<String>,
    /// The bytes to write, base64-encoded (for binary files).
    pub content_base64: Option<String>,
    /// `overwrite` (default: the whole file is replaced at once), `create` (fail if it exists) or `append`.
    pub how: Option<String>,
    /// Permission bits as octal text, e.g. "0755". Default: an existing file's own, else 0644.
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFileArgs {
    pub node: Option<String>,
    pub tag: Option<String>,
    pub session: Option<String>,
    pub path: String,
    /// The exact text now in the file, whitespace included; it must occur exactly once (include surrounding lines to make it unique).
    pub old_text: String,
    /// What replaces it.
    pub new_text: String,
    /// Replace every occurrence instead of requiring exactly one.
    pub replace_all: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDirArgs {
    pub node: Option<String>,
    pub tag: Option<String>,
    pub session: Option<String>,
    /// The directory: absolute, or from the account's home ("." is the home).
    pub path: String,
    /// How many levels: 1 (default) is the directory's own entries, at most 8.
    pub depth: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatArgs {
    pub node: Option<String>,
    pub tag: Option<String>,
    pub session: Option<String>,
    pub path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyArgs {
    pub node: Option<String>,
    pub tag: Option<String>,
    pub session: Option<String>,
    /// The path on this machine (where the MCP server runs); relative to its working directory.
    pub local_path: String,
    /// The path on the node: absolute, or from the account's home.
    pub remote_path: String,
    /// Directories too, with everything in them.
    pub recursive: Option<bool>,
    /// Give up after this many seconds. Default: none.
    pub timeout_secs: Option<u64>,
}

/// Exactly one of `tag` and `node`, or neither when `session` names the node.
pub fn target(tag: Option<String>, node: Option<String>, session: bool) -> Result<Option<Target>, String> {
    match (tag, node) {
        (Some(t), None) => Ok(Some(Target::Tag(t))),
        (None, Some(n)) => Ok(Some(Target::Node(n))),
        (None, None) if session => Ok(None),
        (Some(_), Some(_)) => Err("give `tag` or `node`, not both".into()),
        (None, None) => Err("say where: give `node` (a name from list_nodes), `tag`, or `session`".into()),
    }
}

/// `timeout_secs` as openboxd takes it: 0 is no limit.
/// A tool's `timeout_secs`: none when 0, else the one given or the tool's default.
pub fn timeout(given: Option<u64>, default: Option<u64>) -> Option<proto::time::Seconds> {
    match given {
        Some(0) => None,
        Some(t) => Some(proto::time::Seconds::from_secs(t)),
        None => default.map(proto::time::Seconds::from_secs),
    }
}

pub fn isolation(given: Option<&str>) -> Result<proto::Isolation, String> {
    given.unwrap_or("native").parse().map_err(|e: proto::Invalid| e.to_string())
}

/// The `truncated` part of a run's answer.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct Truncated {
    pub stdout: bool,
    pub stderr: bool,
}

/// One finished command.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct RunOut {
    /// The remote exit code; 128+N after signal N, 124 after `timeout_secs`, 255 when openbox could not run it.
    pub exit_code: u8,
    /// The signal that ended it, if one did (e.g. "KILL").
    pub signal: Option<String>,
    /// Its stdout as text (absent when it was not UTF-8 text: then `stdout_base64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// Which streams `max_output` cut (head and tail kept, with a mark between).
    pub truncated: Truncated,
    pub duration_ms: u64,
    /// What to do next, when there is advice (e.g. after a timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// One node's part of a `run_all`.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct NodeRun {
    pub node: String,
    /// Why it did not run there (offline, refused, unreachable); else the fields of a run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub run: Option<RunOut>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RunAllOut {
    pub results: Vec<NodeRun>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct NodesOut {
    /// Each: name, id, online, tags, platform, isolation kinds offered.
    pub nodes: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SessionsOut {
    /// Each: id, node, isolation, created, last used, state.
    pub sessions: Vec<serde_json::Value>,
}

/// A read: where it was in the file, and the text (binary comes as content of its own).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FileRead {
    #[serde(flatten)]
    pub read: proto::files::ReadResult,
    /// The text read (absent for binary: then the content is an image or a base64 resource).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For binary content: its MIME type as far as known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Copied {
    pub from: String,
    pub to: String,
    pub node: String,
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct JobsOut {
    pub jobs: Vec<proto::jobs::JobInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_a_tag_a_node_or_a_session() {
        assert_eq!(target(Some("gpu".into()), None, false), Ok(Some(Target::Tag("gpu".into()))));
        assert_eq!(target(None, None, true), Ok(None));
        assert!(target(None, None, false).unwrap_err().contains("give `node`"));
        assert!(target(Some("a".into()), Some("b".into()), false).is_err());
    }

    #[test]
    fn zero_seconds_is_no_limit() {
        assert_eq!(timeout(Some(0), Some(60)), None);
        assert_eq!(timeout(None, Some(60)), Some(proto::time::Seconds::from_secs(60)));
        assert_eq!(timeout(Some(5), None), Some(proto::time::Seconds::from_secs(5)));
    }

    #[test]
    fn unknown_arguments_are_refused() {
        let bad = serde_json::from_value::<RunAllArgs>(serde_json::json!({"tags": ["a"], "command": "x", "bogus": 1}));
        assert!(bad.unwrap_err().to_string().contains("unknown field `bogus`"));
    }
}
