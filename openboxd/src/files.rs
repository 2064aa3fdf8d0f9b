//! The `file` method: reads, writes, edits, listings and stats of a node's files (or a
//! session container's), for tools that work on files rather than commands — the MCP
//! server's `read_file`, `write_file`, `edit_file`, `list_dir` and `stat`. Each goes over
//! an SFTP channel of the pooled connection, as `openbox cp` does: the agent serves it as
//! the user's account, under the same grants, and records it in the audit.
//!
//! A write never leaves a file half-replaced: the bytes go to a temporary file beside it,
//! which takes the file's place only once every byte is acknowledged.

use std::io::SeekFrom;

use anyhow::{Context as _, bail};
use net::halt::{Halt, Stops as _};
use net::ssh::Output as _;
use proto::files::{
    EDIT_MAX, Entry, FileOp, FileParams, FileStat, LIST_MAX, Listing, READ_MAX, ReadResult, WriteHow, Written,
};
use russh_sftp::client::SftpSession;
use russh_sftp::client::fs::Metadata;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::Daemon;
use crate::commands::to_json;
use crate::connect::Want;
use crate::io::{CallInput, CallIo, CallOutput};

/// How much is read at a time.
const CHUNK: usize = 256 * 1024;
/// A read by lines goes on to count all of a file's lines when it is no larger than this.
const COUNT_ALL_UP_TO: u64 = 8 << 20;
/// The deepest a listing goes.
const DEPTH_MAX: u32 = 8;

/// Does `params.op` until it is done or the call is stopped (deadline, caller gone):
/// then the SFTP channel is closed, which ends it on the node too.
pub async fn file(d: &Daemon, params: FileParams, io: &mut CallIo) -> anyhow::Result<Value> {
    let mut halts = io.halts.clone().with_deadline(crate::run::deadline(params.timeout_secs));
    let input = io.take_input();
    let timeout = params.timeout_secs;
    tokio::select! {
        done = file_now(d, params, input, &mut io.output) => done,
        halt = halts.next() => match halt {
            Halt::Deadline => bail!("timed out after {}; stopped (a file being written keeps its old content)", timeout.unwrap_or_default()),
            Halt::Signal(name) => bail!("interrupted (SIG{name}); stopped"),
            Halt::Gone => bail!("the caller went away; stopped"),
        },
    }
}

async fn file_now(d: &Daemon, params: FileParams, input: CallInput, out: &mut CallOutput) -> anyhow::Result<Value> {
    let acct = d.account()?;
    let (target, isolation) = match (&params.session, &params.target) {
        (Some(sid), named) => crate::copy::session_place(d, sid, named.as_ref()).await?,
        (None, Some(target)) => (target.clone(), proto::Isolation::Native),
        (None, None) => bail!("name a node or a tag (or a session)"),
    };
    let want = Want { target: &target, session: params.session.as_deref(), isolation: &isolation };
    let (node, _conn, sftp) = crate::connect::sftp(d, &acct, want).await?;
    // Shared with the last step of a write, which runs to its end even when the call stops.
    let sftp = std::sync::Arc::new(sftp);
    let on = |path: &str| format!("{}:{path}", node.name);
    let done = match params.op {
        FileOp::Read { path, offset, length, line, count } => {
            let range = match line {
                Some(0) => bail!("lines count from 1"),
                Some(first) => Range::Lines { first, count, max_bytes: length },
                None => Range::Bytes { offset: offset.unwrap_or(0), length },
            };
            read(&sftp, &path, range, out).await.map(|r| to_json(&r)).with_context(|| on(&path))
        }
        FileOp::Write { path, how, mode } => {
            write(&sftp, &path, how, mode, input).await.map(|r| to_json(&r)).with_context(|| on(&path))
        }
        FileOp::Edit { path, old, new, all } => {
            edit(&sftp, &path, &old, &new, all).await.map(|r| to_json(&r)).with_context(|| on(&path))
        }
        FileOp::List { path, depth } => {
            list(&sftp, &path, depth.unwrap_or(1)).await.map(|r| to_json(&r)).with_context(|| on(&path))
        }
        FileOp::Stat { path } => stat(&sftp, &path).await.map(|r| to_json(&r)).with_context(|| on(&path)),
    };
    let _ = sftp.close().await;
    done
}

enum Range {
    Bytes { offset: u64, length: Option<u64> },
    Lines { first: u64, count: Option<u64>, max_bytes: Option<u64> },
}

/// Sends the range's bytes as output on stdout, as they are read.
async fn read(sftp: &SftpSession, path: &str, range: Range, out: &mut CallOutput) -> anyhow::Result<ReadResult> {
    let meta = sftp.metadata(path).await.map_err(anyhow::Error::from)?;
    if meta.is_dir() {
        bail!("is a directory: list it instead");
    }
    let size = meta.size.unwrap_or(0);
    let mut file = sftp.open(path).await?;
    let mut buf = vec![0u8; CHUNK];
    match range {
        Range::Bytes { offset, length } => {
            let length = length.unwrap_or(READ_MAX).min(READ_MAX);
            file.seek(SeekFrom::Start(offset)).await?;
            let (mut sent, mut newlines, mut last) = (0u64, 0u64, None);
            let mut ended = false;
            while sent < length {
                let want = (length - sent).min(CHUNK as u64) as usize;
                let n = file.read(&mut buf[..want]).await?;
                if n == 0 {
                    ended = true;
                    break;
                }
                newlines += count_newlines(&buf[..n]);
                last = Some(buf[n - 1]);
                out.stdout(&buf[..n]).await?;
                sent += n as u64;
            }
            let next_offset = offset + sent;
            let eof = ended || next_offset >= size;
            // All of the file seen: its lines are known (a last line without a newline counts).
            let total_lines = (offset == 0 && eof).then(|| newlines + u64::from(last.is_some_and(|b| b != b'\n')));
            Ok(ReadResult {
                path: path.to_owned(),
                size,
                offset,
                length: sent,
                next_offset,
                eof,
                first_line: None,
                lines: None,
                total_lines,
            })
        }
        Range::Lines { first, count, max_bytes } => {
            let max_bytes = max_bytes.unwrap_or(READ_MAX).min(READ_MAX);
            let count = count.unwrap_or(u64::MAX);
            // `line`: the number of the line the next byte belongs to; `at`: the chunk's
            // offset in the file.
            let (mut line, mut at) = (1u64, 0u64);
            let (mut offset, mut sent, mut sent_lines) = (None::<u64>, 0u64, 0u64);
            let mut done = count == 0;
            let mut last = None;
            loop {
                if done && size > COUNT_ALL_UP_TO {
                    break;
                }
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                last = Some(chunk[n - 1]);
                let mut i = 0;
                while i < n {
                    let end = chunk[i..].iter().position(|b| *b == b'\n').map_or(n, |p| i + p + 1);
                    let whole = chunk[end - 1] == b'\n';
                    if done || line < first {
                        line += u64::from(whole);
                        i = end;
                        continue;
                    }
                    offset.get_or_insert(at + i as u64);
                    let take = (end - i).min((max_bytes - sent) as usize);
                    if take > 0 {
                        out.stdout(&chunk[i..i + take]).await?;
                        sent += take as u64;
                    }
                    if take < end - i {
                        // The byte cap: a line begun counts, cut short; one not begun does not.
                        sent_lines += u64::from(take > 0);
                        done = true;
                        i += take;
                        continue;
                    }
                    if whole {
                        sent_lines += 1;
                        line += 1;
                        done = sent_lines == count;
                    }
                    i = end;
                }
                at += n as u64;
            }
            let seen_all = at >= size || last.is_none();
            // A last line without a newline is a line too.
            let unended = u64::from(last.is_some_and(|b| b != b'\n'));
            if seen_all && !done && unended == 1 && line >= first {
                sent_lines += 1;
            }
            let offset = offset.unwrap_or(size);
            let next_offset = offset + sent;
            Ok(ReadResult {
                path: path.to_owned(),
                size,
                offset,
                length: sent,
                next_offset,
                eof: next_offset >= size,
                first_line: Some(first),
                lines: Some(sent_lines),
                total_lines: seen_all.then_some(line - 1 + unended),
            })
        }
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

/// Writes what `input` brings, as `how` says.
async fn write(
    sftp: &std::sync::Arc<SftpSession>,
    path: &str,
    how: WriteHow,
    mode: Option<u32>,
    mut input: CallInput,
) -> anyhow::Result<Written> {
    use net::ssh::Input as _;
    let existing = sftp.metadata(path).await.ok();
    if existing.as_ref().is_some_and(Metadata::is_dir) {
        bail!("is a directory");
    }
    if how == WriteHow::Create && existing.is_some() {
        bail!("already exists (overwrite or append to it instead)");
    }
    let mode = mode.or(existing.as_ref().and_then(|m| m.permissions)).map(|m| m & 0o7777);
    // Where the bytes go first: the file itself for an append or a new file, else a
    // temporary file beside it.
    let (real, into) = match (how, &existing) {
        (WriteHow::Overwrite, Some(_)) => {
            let real = sftp.canonicalize(path).await?;
            let tmp = temporary_beside(&real);
            (real, tmp)
        }
        _ => (path.to_owned(), path.to_owned()),
    };
    let flags = match how {
        WriteHow::Append => OpenFlags::CREATE | OpenFlags::APPEND | OpenFlags::WRITE,
        _ => OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
    };
    let attrs = FileAttributes { permissions: Some(mode.unwrap_or(0o644)), ..FileAttributes::empty() };
    let mut file = sftp.open_with_flags_and_attributes(&into, flags, attrs).await?;
    let written = async {
        let mut bytes = 0u64;
        while let Some(chunk) = input.next().await {
            file.write_all(&chunk).await?;
            bytes += chunk.len() as u64;
        }
        // Every write acknowledged (or its error heard) before the file counts as written.
        file.flush().await?;
        file.shutdown().await?;
        anyhow::Ok(bytes)
    }
    .await;
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            // A new or temporary file left half-written is removed; an appended one keeps
            // what reached it.
            if how != WriteHow::Append {
                let _ = sftp.remove_file(&into).await;
            }
            return Err(e);
        }
    };
    if let Some(mode) = mode {
        let attrs = FileAttributes { permissions: Some(mode), ..FileAttributes::empty() };
        sftp.set_metadata(&into, attrs).await.context("setting its mode")?;
    }
    if into != real {
        put_in_place(sftp, &into, &real).await?;
    }
    let size = sftp.metadata(&real).await?.size.unwrap_or(bytes);
    Ok(Written { path: path.to_owned(), bytes, size, replaced: None })
}

/// `.NAME.openbox-PID-N` beside `path`.
fn temporary_beside(path: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() && path.starts_with('/') { "" } else { dir };
    let prefix = if path.contains('/') { format!("{dir}/") } else { String::new() };
    format!("{prefix}.{name}.openbox-{}-{n}", std::process::id())
}

/// Puts the finished `tmp` where `real` is. SFTP's rename never replaces, so the old file
/// goes first: in between, the whole new content is already safe under `tmp`. The two
/// steps run in a task of their own, so a call stopped between them still ends with the
/// file in place.
async fn put_in_place(sftp: &std::sync::Arc<SftpSession>, tmp: &str, real: &str) -> anyhow::Result<()> {
    let (sftp, tmp, real) = (sftp.clone(), tmp.to_owned(), real.to_owned());
    tokio::spawn(async move {
        sftp.remove_file(&real).await.context("replacing it")?;
        sftp.rename(&tmp, &real).await.with_context(|| format!("replacing it (its new content is in {tmp})"))
    })
    .await
    .context("replacing it")?
}

/// Replaces `old` by `new` in a text file, exactly where `old` occurs once (or, with
/// `all`, everywhere) — the way coding agents edit.
async fn edit(
    sftp: &std::sync::Arc<SftpSession>,
    path: &str,
    old: &str,
    new: &str,
    all: bool,
) -> anyhow::Result<Written> {
    if old.is_empty() {
        bail!("the text to replace is empty: give the exact text that is there now");
    }
    let meta = sftp.metadata(path).await?;
    if meta.is_dir() {
        bail!("is a directory");
    }
    let size = meta.size.unwrap_or(0);
    if size > EDIT_MAX {
        bail!("is {size} bytes; edits are for text files up to {EDIT_MAX} bytes (write it whole instead)");
    }
    let mut file = sftp.open(path).await?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.read_to_end(&mut bytes).await?;
    let Ok(text) = String::from_utf8(bytes) else { bail!("is not UTF-8 text: write it whole instead") };
    let found = text.matches(old).count() as u64;
    match found {
        0 => bail!("the text to replace is not in the file (it must match exactly, whitespace included)"),
        1 => {}
        n if !all => bail!(
            "the text to replace occurs {n} times: include more of the lines around it so it occurs once, or replace all"
        ),
        _ => {}
    }
    let changed = text.replace(old, new);
    let real = sftp.canonicalize(path).await?;
    let tmp = temporary_beside(&real);
    let mode = meta.permissions.unwrap_or(0o644) & 0o7777;
    let attrs = FileAttributes { permissions: Some(mode), ..FileAttributes::empty() };
    let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
    let mut out = sftp.open_with_flags_and_attributes(&tmp, flags, attrs).await?;
    let written = async {
        out.write_all(changed.as_bytes()).await?;
        out.flush().await?;
        out.shutdown().await?;
        let attrs = FileAttributes { permissions: Some(mode), ..FileAttributes::empty() };
        sftp.set_metadata(&tmp, attrs).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = sftp.remove_file(&tmp).await;
        return Err(e);
    }
    put_in_place(sftp, &tmp, &real).await?;
    let size = changed.len() as u64;
    Ok(Written { path: path.to_owned(), bytes: size, size, replaced: Some(found) })
}

async fn list(sftp: &SftpSession, path: &str, depth: u32) -> anyhow::Result<Listing> {
    if depth == 0 || depth > DEPTH_MAX {
        bail!("depth is from 1 (the directory's own entries) to {DEPTH_MAX}");
    }
    let meta = sftp.metadata(path).await?;
    if !meta.is_dir() {
        bail!("is not a directory (stat it instead)");
    }
    let mut entries = Vec::new();
    let mut truncated = false;
    // Breadth first, each directory's entries sorted by name.
    let mut todo = std::collections::VecDeque::from([(String::new(), 1u32)]);
    'dirs: while let Some((rel, level)) = todo.pop_front() {
        let dir = if rel.is_empty() { path.to_owned() } else { join(path, &rel) };
        let mut found: Vec<_> = match sftp.read_dir(&dir).await {
            Ok(found) => found.collect(),
            // A subdirectory that cannot be read is listed, not entered.
            Err(_) if !rel.is_empty() => continue,
            Err(e) => return Err(e.into()),
        };
        found.sort_by_key(|e| e.file_name());
        for e in found {
            let name = if rel.is_empty() { e.file_name() } else { format!("{rel}/{}", e.file_name()) };
            let meta = e.metadata();
            let kind = kind_of(&meta);
            if kind == "dir" && level < depth {
                todo.push_back((name.clone(), level + 1));
            }
            if entries.len() == LIST_MAX {
                truncated = true;
                break 'dirs;
            }
            entries.push(Entry {
                name,
                kind: kind.to_owned(),
                size: meta.size.unwrap_or(0),
                mode: octal(meta.permissions),
                modified: meta.mtime.map(u64::from),
            });
        }
    }
    Ok(Listing { path: path.to_owned(), entries, truncated })
}

async fn stat(sftp: &SftpSession, path: &str) -> anyhow::Result<FileStat> {
    let meta = sftp.symlink_metadata(path).await?;
    let kind = kind_of(&meta);
    let target = if kind == "symlink" { sftp.read_link(path).await.ok() } else { None };
    // A link is described by what it points to, when that is there.
    let shown = if kind == "symlink" { sftp.metadata(path).await.unwrap_or(meta) } else { meta };
    Ok(FileStat {
        path: path.to_owned(),
        kind: kind.to_owned(),
        size: shown.size.unwrap_or(0),
        mode: octal(shown.permissions),
        modified: shown.mtime.map(u64::from),
        target,
    })
}

fn kind_of(meta: &Metadata) -> &'static str {
    if meta.is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "dir"
    } else if meta.is_regular() {
        "file"
    } else {
        "other"
    }
}

fn octal(permissions: Option<u32>) -> String {
    format!("{:04o}", permissions.unwrap_or(0) & 0o7777)
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_file_sits_beside_its_file() {
        let pid = std::process::id();
        assert!(temporary_beside("/home/a/notes.txt").starts_with(&format!("/home/a/.notes.txt.openbox-{pid}-")));
        assert!(temporary_beside("/top").starts_with(&format!("/.top.openbox-{pid}-")));
        assert!(temporary_beside("rel.txt").starts_with(&format!(".rel.txt.openbox-{pid}-")));
    }

    #[test]
    fn modes_show_as_four_octal_digits() {
        assert_eq!(octal(Some(0o100644)), "0644");
        assert_eq!(octal(Some(0o4755)), "4755");
        assert_eq!(octal(None), "0000");
    }
}
