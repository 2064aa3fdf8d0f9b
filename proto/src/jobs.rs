//! Jobs: commands that run on a node whether or not anyone is connected, owned by openboxd (`openbox
//! --detach`, `openbox jobs`, `openbox job …`, the MCP server's `start`, `read`, `wait`,
//! `stop`, `write_stdin`, `list_jobs`).

use serde::{Deserialize, Serialize};

use crate::request::RunRequest;
pub use crate::request::TerminalSize;

/// A job as openboxd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobInfo {
    pub id: String,
    /// The node it runs on, by name and id.
    pub node: String,
    pub node_id: String,
    /// The session it runs in (one of its own unless started in a named one).
    pub session: String,
    pub command: String,
    /// `native`, `docker:IMAGE` or `nspawn:DIR`.
    pub isolation: String,
    /// When it started, Unix seconds.
    pub started: u64,
    /// `running`, `exited` (see `exit_code`) or `lost` (see `error`).
    pub state: String,
    /// Its exit status once it exited: 128+N after signal N, 124 after its timeout.
    #[serde(default)]
    pub exit_code: Option<u8>,
    /// When it ended, Unix seconds.
    #[serde(default)]
    pub ended: Option<u64>,
    /// Why it was lost; or, while it runs, why its node cannot be reached right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether its stdin is open for `job send` / `write_stdin`.
    #[serde(default)]
    pub stdin: bool,
    /// It runs in a terminal of this size (`job screen` / `screen` show it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<TerminalSize>,
    /// Bytes of each stream received so far, and of those, bytes no longer kept (the
    /// middle of a long output: its head and tail are kept).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

/// `job_start`: a command to start as a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStartParams {
    #[serde(flatten)]
    pub run: RunRequest,
    /// Keep its stdin open for `job_send` (else it is empty).
    #[serde(default)]
    pub stdin: bool,
    /// Run it in a terminal of this size (its stdin is open then: keys go there).
    #[serde(default)]
    pub terminal: Option<TerminalSize>,
}

/// A job's terminal screen as the node sees it now (`job_screen`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Screen {
    pub rows: u16,
    pub cols: u16,
    /// Its lines, top to bottom, without trailing blanks.
    pub lines: Vec<String>,
    /// Where the cursor is: row and column, from 0.
    pub cursor: [u16; 2],
    /// Whether the program hid its cursor.
    pub cursor_hidden: bool,
}

/// `job_read`: a job's output from these offsets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobReadParams {
    pub id: String,
    #[serde(default)]
    pub stdout_offset: u64,
    #[serde(default)]
    pub stderr_offset: u64,
    /// At most this many bytes of each stream (default 65536).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// What `job_read` returns: the bytes (base64) and where to go on from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRead {
    pub job: JobInfo,
    pub stdout: String,
    pub stderr: String,
    /// Where the bytes returned start: past the offset asked for when bytes there were
    /// dropped (`*_from` minus the offset were).
    pub stdout_from: u64,
    pub stderr_from: u64,
    pub stdout_next: u64,
    pub stderr_next: u64,
    /// More output is there to read now.
    pub more: bool,
}

/// `job_wait`: until the job ends, at most `timeout_secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobWaitParams {
    pub id: String,
    #[serde(default)]
    pub timeout_secs: Option<crate::time::Seconds>,
}

/// `job_stop`, `job_forget`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobParams {
    pub id: String,
}

/// `job_send`: the bytes in `stdin` notifications; with `close`, the job's stdin is
/// closed after them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSendParams {
    pub id: String,
    #[serde(default)]
    pub close: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_is_at_least_one_cell_and_at_most_the_bounds() {
        assert!(TerminalSize::check(24, 80).is_ok());
        assert!(TerminalSize::check(500, 1000).is_ok());
        for (rows, cols) in [(0, 80), (24, 0), (501, 80), (24, 1001), (65535, 65535)] {
            let why = TerminalSize::check(rows, cols).unwrap_err();
            assert!(why.contains("1 to 500 rows and 1 to 1000 columns"), "{why}");
        }
    }
}
