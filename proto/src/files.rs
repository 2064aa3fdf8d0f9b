//! openboxd's `file` method: one file operation on a node (or in a session's container),
//! over the same SFTP channel as `openbox cp`, under the same grants and audit. Bytes
//! travel beside the request, never inside it: a read's as `output` notifications (on
//! `stdout`), a write's as `stdin` notifications — so a file of any size fits the
//! socket's one-line-per-message framing.

use serde::{Deserialize, Serialize};

use crate::api::Target;

/// The most bytes one read returns (more is read with `offset`).
pub const READ_MAX: u64 = 128 << 20;
/// The largest file `edit` rewrites (it holds the whole text in memory).
pub const EDIT_MAX: u64 = 16 << 20;
/// The most entries one `list` returns.
pub const LIST_MAX: usize = 5000;

/// `file` parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileParams {
    /// Which node; may be left out when `session` is given (it names its node).
    #[serde(default)]
    pub target: Option<Target>,
    /// In this session's container (or on its node, for a native session).
    #[serde(default)]
    pub session: Option<String>,
    #[serde(flatten)]
    pub op: FileOp,
    /// Give up after this long: the operation is stopped (a file being written is left
    /// as it was; writes go to a temporary file first).
    #[serde(default)]
    pub timeout_secs: Option<crate::time::Seconds>,
}

/// What to do with the file at `path` (absolute, or from the account's home).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileOp {
    /// Bytes `[offset, offset+length)`, or `count` lines from line `line` (1-based).
    Read {
        path: String,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        length: Option<u64>,
        #[serde(default)]
        line: Option<u64>,
        #[serde(default)]
        count: Option<u64>,
    },
    /// The bytes sent in `stdin` notifications (until `eof`) become the file.
    Write {
        path: String,
        #[serde(default)]
        how: WriteHow,
        /// Permission bits for a new file (an existing one keeps its own unless given).
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Replaces `old` with `new`: `old` must occur exactly once, unless `all`.
    Edit {
        path: String,
        old: String,
        new: String,
        #[serde(default)]
        all: bool,
    },
    /// A directory's entries, `depth` levels down (1: only its own).
    List {
        path: String,
        #[serde(default)]
        depth: Option<u32>,
    },
    Stat {
        path: String,
    },
}

/// How a write treats a file that is already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteHow {
    /// Replace it (whole: written beside it, then put in its place).
    #[default]
    Overwrite,
    /// Fail if it exists.
    Create,
    /// Add to its end (create it when missing).
    Append,
}

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FileStat {
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    /// Permission bits, as octal text (`"0644"`).
    pub mode: String,
    /// Last modified, Unix seconds.
    #[serde(default)]
    pub modified: Option<u64>,
    /// Where a symbolic link points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What a read returned (its bytes came as `output` notifications).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReadResult {
    pub path: String,
    /// The whole file's size.
    pub size: u64,
    /// Where the bytes sent start, and how many there are.
    pub offset: u64,
    pub length: u64,
    /// Where to go on from (`offset` of the next read); `eof` when nothing is left.
    pub next_offset: u64,
    pub eof: bool,
    /// For a read by lines: the first line sent, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
    /// The file's number of lines, when the read saw all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lines: Option<u64>,
}

/// What a write or an edit did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Written {
    pub path: String,
    /// Bytes written by this call, and the file's size after it.
    pub bytes: u64,
    pub size: u64,
    /// For an edit: how many places were replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<u64>,
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Entry {
    /// Relative to the directory listed (`sub/file` below depth 1).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub mode: String,
    #[serde(default)]
    pub modified: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
    /// More entries were there than [`LIST_MAX`].
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_carry_the_operation_beside_the_target() {
        let p: FileParams = serde_json::from_value(serde_json::json!({
            "target": {"node": "n1"}, "op": "read", "path": "/etc/hostname", "line": 2, "count": 3
        }))
        .unwrap();
        assert!(matches!(p.op, FileOp::Read { line: Some(2), count: Some(3), .. }), "{p:?}");
    }
}
