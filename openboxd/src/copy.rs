//! `openbox cp`: files to or from a node over SFTP, on a channel of the pooled connection
//! to it (the agent serves SFTP as the user's account). Files stream in pieces — memory
//! stays the same for any size — and keep their modes; a directory goes whole with `-r`.
//! A file is written under its own name and only reported copied once the far side has
//! acknowledged every byte (a full disk is an error, never a success).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::api::{SessionInfo, Target};
use proto::request::{CopyRequest, Place};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use net::halt::{Halt, Stops as _};

use crate::Daemon;
use crate::commands::{Reply, to_json};
use crate::connect::Want;
use crate::io::{CallIo, CallOutput};

/// How much is read and written at a time.
const CHUNK: usize = 256 * 1024;

#[derive(serde::Serialize)]
struct Copied {
    from: String,
    to: String,
    node: String,
    files: u64,
    directories: u64,
    bytes: u64,
}

/// A copy stopped before it was done: by its deadline (exit 124) or its caller.
#[derive(Debug)]
pub struct Stopped {
    pub code: u8,
    why: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for Stopped {}

/// Copies as `req` says, until it is done or `halts` stop it (its deadline from
/// `--timeout`, a signal to the CLI, the CLI gone): then the SFTP channel is closed, which
/// ends the transfer on the node too.
pub async fn copy(d: &Daemon, req: CopyRequest, io: &mut CallIo) -> anyhow::Result<Reply> {
    let mut halts = io.halts.clone().with_deadline(crate::run::deadline(req.timeout_secs));
    let out = &mut io.output;
    let timeout = req.timeout_secs;
    tokio::select! {
        done = copy_now(d, req, out) => done,
        halt = halts.next() => {
            let (code, why) = match halt {
                Halt::Deadline => (
                    crate::run::TIMED_OUT,
                    format!("timed out after {}; the copy was stopped (a file it was writing is incomplete)", timeout.unwrap_or_default()),
                ),
                Halt::Signal(name) => (
                    proto::exec::signal_exit_code(name),
                    format!("interrupted (SIG{name}); the copy was stopped (a file it was writing is incomplete)"),
                ),
                Halt::Gone => (crate::run::TIMED_OUT, "the caller went away; the copy was stopped".to_owned()),
            };
            Err(Stopped { code, why }.into())
        }
    }
}

async fn copy_now(d: &Daemon, req: CopyRequest, out: &mut CallOutput) -> anyhow::Result<Reply> {
    let Some(first) = req.from.first() else { bail!("nothing to copy: give at least one source") };
    let (target, upload) = match (first, &req.to) {
        (Place::Local { .. }, Place::Remote { target, .. }) => (target, true),
        (Place::Remote { target, .. }, Place::Local { .. }) => (target, false),
        _ => bail!("one side of a copy is NODE:PATH, the other a path here"),
    };
    // All from one side, and from one node.
    let same_side = |p: &Place| match (p, upload) {
        (Place::Local { .. }, true) => true,
        (Place::Remote { target: t, .. }, false) => t == target,
        _ => false,
    };
    if !req.from.iter().all(same_side) {
        bail!("the sources of one copy are all here, or all on one node");
    }
    let acct = d.account()?;
    // A session's files: its node, and a certificate for its isolation.
    let (target, isolation) = match &req.session {
        Some(sid) => session_place(d, sid, Some(target)).await?,
        None => (target.clone(), proto::Isolation::Native),
    };
    let want = Want { target: &target, session: req.session.as_deref(), isolation: &isolation };
    // A node out of reach is said as for a command: 255 and why.
    let (node, conn, sftp) = crate::connect::sftp(d, &acct, want)
        .await
        .map_err(|e| Stopped { code: proto::EXIT_OPENBOX_FAILURE, why: e.to_string() })?;
    let mut run = Run {
        sftp,
        node: node.name.clone(),
        session: req.session.clone(),
        progress: Progress::new(req.progress),
        stats: Stats::default(),
    };
    let result = run.all(&req.from, &req.to, req.recursive, out).await;
    run.progress.end(out).await;
    let _ = run.sftp.close().await;
    if let Err(e) = result {
        // The node gone under the copy is said as for a command: 255 and why.
        if let Some(lost) = conn.lost() {
            let why = format!("{lost}; the copy did not finish (a file it was writing is incomplete)");
            return Err(Stopped { code: proto::EXIT_OPENBOX_FAILURE, why }.into());
        }
        return Err(e);
    }
    let copied = Copied {
        from: req.from.iter().map(Place::to_string).collect::<Vec<_>>().join(" "),
        to: req.to.to_string(),
        node: node.name,
        files: run.stats.files,
        directories: run.stats.directories,
        bytes: run.stats.bytes,
    };
    Ok(Reply { json: to_json(&copied), text: String::new(), warnings: Vec::new() })
}

/// Where session `sid` is, and what it runs under — as the control plane's directory
/// says; `named` (the node side of the copy) must be its node.
pub(crate) async fn session_place(
    d: &Daemon,
    sid: &str,
    named: Option<&Target>,
) -> anyhow::Result<(Target, proto::Isolation)> {
    let sessions: Vec<SessionInfo> = d.login()?.client()?.call::<proto::routes::ListSessions>(&[], &()).await?;
    let Some(s) = sessions.into_iter().find(|s| s.id == sid) else {
        bail!("you have no session {sid:?}: start it with a command first (openbox -t TAG -s {sid} … true)");
    };
    let Some(isolation) = s.isolation else { bail!("session {sid:?}: {}", s.state) };
    if let Some(Target::Node(n)) = named
        && n != &s.node_id
        && n != &s.node_name
    {
        bail!("session {sid:?} is on node {}, not {n}", s.node_name);
    }
    Ok((Target::Node(s.node_id), isolation))
}

#[derive(Default)]
struct Stats {
    files: u64,
    directories: u64,
    bytes: u64,
}

struct Run {
    sftp: SftpSession,
    node: String,
    /// The session whose container (or shell) the node side is in.
    session: Option<String>,
    progress: Progress,
    stats: Stats,
}

/// `dir/name` on the node.
fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

/// The last part of a path, as the name a copy takes inside a directory.
fn base(path: &str) -> anyhow::Result<String> {
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        bail!("{path:?} names no file to copy by name; say where it goes in full");
    }
    Ok(name.to_owned())
}

impl Run {
    /// Copies each of `from` to `to` (checked to be one side of the copy each). Several go
    /// into `to`, which must be a directory that exists, as for scp.
    async fn all(&mut self, from: &[Place], to: &Place, recursive: bool, out: &mut CallOutput) -> anyhow::Result<()> {
        let several = from.len() > 1;
        match to {
            Place::Remote { path: remote, .. } => {
                let into_dir = self.sftp.metadata(remote).await.is_ok_and(|m| m.is_dir());
                if !into_dir && (several || remote.ends_with('/')) {
                    bail!(self.no_remote_dir(remote, several));
                }
                for place in from {
                    if let Place::Local { path } = place {
                        self.upload(Path::new(path), remote, into_dir, recursive, out).await?;
                    }
                }
            }
            Place::Local { path } => {
                let local = Path::new(path);
                let into_dir = local.is_dir();
                if !into_dir && (several || path.ends_with('/')) {
                    let why = if several { "several sources go into a directory that exists" } else { "make it first" };
                    bail!("{}: no such directory here; {why}", path.trim_end_matches('/'));
                }
                for place in from {
                    if let Place::Remote { path: remote, .. } = place {
                        self.download(remote, local, into_dir, recursive, out).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The error for a directory on the node that a copy needs and that is not there, with
    /// the command that makes it where the copy looks (in the session's container, for one).
    fn no_remote_dir(&self, dir: &str, several: bool) -> String {
        let dir = dir.trim_end_matches('/');
        let why = if several { "several sources go into a directory that exists; " } else { "" };
        let mut place = format!("-n {}", service::shell_word(&self.node));
        if let Some(sid) = &self.session {
            place.push_str(&format!(" -s {}", service::shell_word(sid)));
        }
        format!(
            "{}:{dir}: no such directory there; {why}make it first: openbox {place} mkdir -p {}",
            self.node,
            service::shell_word(dir)
        )
    }

    /// Why writing `dst` on the node failed, when it is that its directory is missing.
    async fn missing_parent(&self, dst: &str) -> Option<String> {
        let parent = match dst.trim_end_matches('/').rsplit_once('/') {
            Some(("", _)) | None => return None,
            Some((parent, _)) => parent,
        };
        self.sftp.metadata(parent).await.is_err().then(|| self.no_remote_dir(parent, false))
    }

    /// Copies `local` (a file, or with `recursive` a directory) to `remote` — inside it,
    /// when it is a directory (`into_dir`).
    async fn upload(
        &mut self,
        local: &Path,
        remote: &str,
        into_dir: bool,
        recursive: bool,
        out: &mut CallOutput,
    ) -> anyhow::Result<()> {
        let meta = std::fs::metadata(local).with_context(|| format!("{}", local.display()))?;
        if meta.is_dir() && !recursive {
            bail!("{} is a directory: add -r to copy it and everything in it", local.display());
        }
        let dest = if into_dir { join(remote, &base(&local.display().to_string())?) } else { remote.to_owned() };
        let mut todo = vec![(local.to_path_buf(), dest)];
        while let Some((src, dst)) = todo.pop() {
            let meta = std::fs::metadata(&src).with_context(|| format!("{}", src.display()))?;
            if meta.is_dir() {
                if !self.sftp.metadata(&dst).await.is_ok_and(|m| m.is_dir())
                    && let Err(e) = self.sftp.create_dir(&dst).await
                {
                    if let Some(why) = self.missing_parent(&dst).await {
                        bail!(why);
                    }
                    return Err(e).with_context(|| format!("{}:{dst}: making the directory", self.node));
                }
                self.set_mode(&dst, meta.permissions().mode()).await?;
                self.stats.directories += 1;
                let mut entries: Vec<_> = std::fs::read_dir(&src)
                    .with_context(|| format!("{}", src.display()))?
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("{}", src.display()))?;
                entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
                for e in entries {
                    let name = e.file_name().to_string_lossy().into_owned();
                    todo.push((e.path(), join(&dst, &name)));
                }
            } else {
                self.put(&src, &dst, &meta, out).await?;
            }
        }
        Ok(())
    }

    async fn put(
        &mut self,
        src: &Path,
        dst: &str,
        meta: &std::fs::Metadata,
        out: &mut CallOutput,
    ) -> anyhow::Result<()> {
        let there = format!("{}:{dst}", self.node);
        let mut file = tokio::fs::File::open(src).await.with_context(|| format!("{}", src.display()))?;
        let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
        let attrs = FileAttributes { permissions: Some(meta.permissions().mode() & 0o7777), ..FileAttributes::empty() };
        let mut remote = match self.sftp.open_with_flags_and_attributes(dst, flags, attrs).await {
            Ok(f) => f,
            Err(e) => match self.missing_parent(dst).await {
                Some(why) => bail!(why),
                None => return Err(e).with_context(|| there.clone()),
            },
        };
        self.progress.start(&src.display().to_string(), meta.len());
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.with_context(|| format!("{}", src.display()))?;
            if n == 0 {
                break;
            }
            remote.write_all(&buf[..n]).await.with_context(|| there.clone())?;
            self.stats.bytes += n as u64;
            self.progress.add(n as u64, out).await;
        }
        // Every write acknowledged (or its error heard) before the file counts as copied.
        remote.flush().await.with_context(|| there.clone())?;
        remote.shutdown().await.with_context(|| there.clone())?;
        self.set_mode(dst, meta.permissions().mode()).await?;
        self.stats.files += 1;
        Ok(())
    }

    /// The mode exactly, whatever the node's umask made of it.
    async fn set_mode(&self, dst: &str, mode: u32) -> anyhow::Result<()> {
        let attrs = FileAttributes { permissions: Some(mode & 0o7777), ..FileAttributes::empty() };
        self.sftp.set_metadata(dst, attrs).await.with_context(|| format!("{}:{dst}: setting its mode", self.node))
    }

    /// Copies `remote` (a file, or with `recursive` a directory) to `local` — inside it,
    /// when it is a directory (`into_dir`).
    async fn download(
        &mut self,
        remote: &str,
        local: &Path,
        into_dir: bool,
        recursive: bool,
        out: &mut CallOutput,
    ) -> anyhow::Result<()> {
        let node = self.node.clone();
        let there = |p: &str| format!("{node}:{p}");
        let meta = self.sftp.metadata(remote).await.with_context(|| there(remote))?;
        if meta.is_dir() && !recursive {
            bail!("{} is a directory: add -r to copy it and everything in it", there(remote));
        }
        let dest = if into_dir { local.join(base(remote)?) } else { local.to_path_buf() };
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
            bail!("{}: no such directory here; make it first", parent.display());
        }
        let mut todo = vec![(remote.to_owned(), dest)];
        while let Some((src, dst)) = todo.pop() {
            let meta = self.sftp.metadata(&src).await.with_context(|| there(&src))?;
            let mode = meta.permissions.unwrap_or(0o644) & 0o7777;
            if meta.is_dir() {
                match std::fs::create_dir(&dst) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists || !dst.is_dir() => {
                        return Err(e).with_context(|| format!("{}: making the directory", dst.display()));
                    }
                    _ => {}
                }
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("{}", dst.display()))?;
                self.stats.directories += 1;
                let mut names: Vec<String> =
                    self.sftp.read_dir(&src).await.with_context(|| there(&src))?.map(|e| e.file_name()).collect();
                names.sort_by(|a, b| b.cmp(a));
                for name in names {
                    todo.push((join(&src, &name), dst.join(&name)));
                }
            } else {
                self.get(&src, &dst, mode, meta.size.unwrap_or(0), out).await?;
            }
        }
        Ok(())
    }

    async fn get(
        &mut self,
        src: &str,
        dst: &PathBuf,
        mode: u32,
        size: u64,
        out: &mut CallOutput,
    ) -> anyhow::Result<()> {
        let there = format!("{}:{src}", self.node);
        let mut remote = self.sftp.open(src).await.with_context(|| there.clone())?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(dst)
            .with_context(|| format!("{}", dst.display()))?;
        let mut file = tokio::fs::File::from_std(file);
        self.progress.start(&there, size);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = remote.read(&mut buf).await.with_context(|| there.clone())?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).await.with_context(|| format!("{}", dst.display()))?;
            self.stats.bytes += n as u64;
            self.progress.add(n as u64, out).await;
        }
        file.flush().await.with_context(|| format!("{}", dst.display()))?;
        file.sync_data().await.with_context(|| format!("{}", dst.display()))?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}", dst.display()))?;
        let _ = remote.shutdown().await;
        self.stats.files += 1;
        Ok(())
    }
}

/// A progress line on stderr (a terminal): the file, how much of it, and the rate.
struct Progress {
    on: bool,
    name: String,
    size: u64,
    done: u64,
    started: Instant,
    shown: Option<Instant>,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress { on, name: String::new(), size: 0, done: 0, started: Instant::now(), shown: None }
    }

    fn start(&mut self, name: &str, size: u64) {
        (self.name, self.size, self.done, self.started) = (name.to_owned(), size, 0, Instant::now());
    }

    async fn add(&mut self, n: u64, out: &mut CallOutput) {
        self.done += n;
        if !self.on || self.shown.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && self.done < self.size {
            return;
        }
        self.shown = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let pct = (self.done * 100).checked_div(self.size).unwrap_or(100);
        let line = format!(
            "\r\x1b[K{}  {} / {}  {pct:>3}%  {}/s",
            self.name,
            human(self.done),
            human(self.size),
            human((self.done as f64 / secs) as u64)
        );
        out.eprint(&line).await;
    }

    /// Ends the line, if one was shown.
    async fn end(&self, out: &mut CallOutput) {
        if self.on && self.shown.is_some() {
            out.eprint("\n").await;
        }
    }
}

/// Bytes for people: 1.5 GiB.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}
