//! A session's job: a command the node runs in the session's shell whether or not anyone
//! is connected — openboxd may restart, the laptop sleep — its output kept in the agent's
//! directory (`jobs/USER/SESSION/ID/`, private) until its owner has read it and says to
//! forget it. Every operation names the job by id, and only the user incarnation that
//! started it reaches it.
//!
//! The job holds its session while it runs, as a command does: the session is busy, not
//! reaped, and other calls to it wait their turn. Its input, signals and stop reach it
//! as a caller's would, through the same framing; only its output goes to files here.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use crate::channel::{ChannelOut, Outcome};

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Its exit status (124 after its deadline; 128+N after signal N).
    Code(u32),
    /// It could not go on, and why (its shell ended, the agent restarted).
    Lost(String),
}

/// How far a job's output has come, and whether it ended.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub stdout: u64,
    pub stderr: u64,
    pub ended: Option<End>,
}

/// A job the agent knows: its files, how far it is, and (while it runs) its input.
pub struct Running {
    pub id: String,
    /// The incarnation of the user who started it.
    pub owner: Option<String>,
    pub dir: PathBuf,
    pub progress: watch::Sender<Progress>,
    /// Input, signals and `Close` (stop) for the job's framed command.
    pub input: mpsc::UnboundedSender<russh::ChannelMsg>,
    /// A job in a terminal: its screen, kept current from its output.
    pub screen: Option<Screen>,
}

/// A terminal's screen, as its output draws it.
pub type Screen = Arc<std::sync::Mutex<vt100::Parser>>;

/// A fresh screen of the terminal's size.
pub fn new_screen(pty: &crate::pty::PtyRequest) -> Screen {
    let dim =
        |n: u32| std::num::NonZeroU16::new(u16::try_from(n).unwrap_or(u16::MAX)).unwrap_or(std::num::NonZeroU16::MIN);
    Arc::new(std::sync::Mutex::new(vt100::Parser::new(dim(pty.rows), dim(pty.cols), 0)))
}

/// What the screen shows now.
pub fn snapshot(screen: &Screen) -> proto::jobs::Screen {
    let parser = screen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let screen = parser.screen();
    let (rows, cols) = screen.size();
    let (row, col) = screen.cursor_position();
    proto::jobs::Screen {
        rows: rows.get(),
        cols: cols.get(),
        lines: screen.rows(0, cols.get()).map(|l| l.trim_end().to_owned()).collect(),
        cursor: [row, col],
        cursor_hidden: screen.hide_cursor(),
    }
}

const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";
/// Written when the job ends: an [`End`].
const ENDED: &str = "ended.json";
/// The incarnation of the user who started it.
const OWNER: &str = "owner";

/// Where `user`'s job `job` in session `session` keeps its output, under the agent's `jobs`.
pub fn dir_of(jobs: &Path, user: &str, session: &str, job: &str) -> PathBuf {
    jobs.join(user).join(session).join(job)
}

/// Makes a job's directory, private, with empty output and its owner written down.
pub fn prepare(dir: &Path, owner: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::File::create_new(dir.join(STDOUT))?;
    std::fs::File::create_new(dir.join(STDERR))?;
    std::fs::write(dir.join(OWNER), owner.unwrap_or_default())?;
    Ok(())
}

/// Whether the job in `dir` was started by `owner` (the same incarnation of its user).
pub fn owned_by(dir: &Path, owner: Option<&str>) -> bool {
    std::fs::read_to_string(dir.join(OWNER)).is_ok_and(|o| o == owner.unwrap_or_default())
}

/// Writes down how the job ended, beside its output.
pub fn write_end(dir: &Path, end: &End) {
    let text = serde_json::to_vec(end).expect("serializable");
    if let Err(e) = paths::write_private(&dir.join(ENDED), &text) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not write down how a job ended");
    }
}

/// A job the agent no longer runs, as its files say: how far its output came, and how it
/// ended — lost, when it never said (the agent stopped under it).
pub fn from_disk(dir: &Path) -> Option<Progress> {
    let len = |name| std::fs::metadata(dir.join(name)).ok().map(|m| m.len());
    let (stdout, stderr) = (len(STDOUT)?, len(STDERR)?);
    let ended = std::fs::read(dir.join(ENDED)).ok().and_then(|t| serde_json::from_slice(&t).ok());
    let ended = ended.unwrap_or_else(|| End::Lost("the node's agent stopped while it ran".into()));
    Some(Progress { stdout, stderr, ended: Some(ended) })
}

/// The job's output, as it comes: appended to its files, and its progress told.
pub struct Spool {
    stdout: tokio::sync::Mutex<tokio::fs::File>,
    stderr: tokio::sync::Mutex<tokio::fs::File>,
    progress: watch::Sender<Progress>,
    /// A terminal's screen, drawn from its output (all on stdout).
    screen: Option<Screen>,
}

impl Spool {
    pub async fn open(dir: &Path, progress: watch::Sender<Progress>, screen: Option<Screen>) -> std::io::Result<Spool> {
        let append = |name| {
            let path = dir.join(name);
            async move { tokio::fs::OpenOptions::new().append(true).open(path).await }
        };
        Ok(Spool {
            stdout: tokio::sync::Mutex::new(append(STDOUT).await?),
            stderr: tokio::sync::Mutex::new(append(STDERR).await?),
            progress,
            screen,
        })
    }

    async fn write(&self, stderr: bool, data: &[u8]) -> bool {
        let file = if stderr { &self.stderr } else { &self.stdout };
        let mut file = file.lock().await;
        if let Some(screen) = self.screen.as_ref().filter(|_| !stderr) {
            screen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).process(data);
        }
        if let Err(e) = file.write_all(data).await {
            // A full disk: the job goes on; what it says meanwhile is lost, and logged.
            tracing::warn!(error = %e, bytes = data.len(), "a job's output could not be kept");
            return true;
        }
        let _ = file.flush().await;
        self.progress.send_modify(
            |p| {
                if stderr { p.stderr += data.len() as u64 } else { p.stdout += data.len() as u64 }
            },
        );
        true
    }
}

impl crate::channel::Out for Spool {
    async fn stdout(&self, data: &[u8]) -> bool {
        self.write(false, data).await
    }

    async fn stderr(&self, data: &[u8]) -> bool {
        self.write(true, data).await
    }
}

/// Sends the job's output from the given offsets as the channel's stdout and stderr,
/// following it as it grows, until it ended and all is sent: then the channel's exit
/// status is the job's (a lost job: 255, and why on stderr). Returns early when the
/// caller goes away.
pub async fn read(dir: &Path, mut progress: watch::Receiver<Progress>, from: (u64, u64), out: ChannelOut) {
    let (mut at_out, mut at_err) = from;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let now = progress.borrow_and_update().clone();
        for (name, at, upto, stderr) in
            [(STDOUT, &mut at_out, now.stdout, false), (STDERR, &mut at_err, now.stderr, true)]
        {
            if *at >= upto {
                continue;
            }
            let Ok(mut file) = tokio::fs::File::open(dir.join(name)).await else {
                return out.refuse("the job's output is gone").await;
            };
            if file.seek(SeekFrom::Start(*at)).await.is_err() {
                return out.refuse("the job's output could not be read").await;
            }
            while *at < upto {
                let want = ((upto - *at) as usize).min(buf.len());
                let n = match file.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let sent = if stderr { out.stderr(&buf[..n]).await } else { out.stdout(&buf[..n]).await };
                if !sent {
                    return; // the caller went away; the job goes on
                }
                *at += n as u64;
            }
        }
        if let Some(end) = &now.ended
            && at_out >= now.stdout
            && at_err >= now.stderr
        {
            return match end {
                End::Code(code) => out.finish(Outcome::Code(*code)).await,
                End::Lost(why) => out.refuse(&format!("{}{why}", proto::exec::JOB_LOST)).await,
            };
        }
        if progress.changed().await.is_err() {
            // Its runner is gone (it ended and was dropped): what the files say is final.
            match from_disk(dir) {
                Some(last) => {
                    let (tx, rx) = watch::channel(last);
                    drop(tx);
                    progress = rx;
                }
                None => return out.refuse("the job's output is gone").await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_spool_keeps_both_streams_and_says_how_far_they_came() {
        let top = tempfile::tempdir().unwrap();
        let dir = &top.path().join("job");
        prepare(dir, Some("bob-1")).unwrap();
        assert!(owned_by(dir, Some("bob-1")) && !owned_by(dir, Some("bob-2")) && !owned_by(dir, None));
        assert!(prepare(dir, Some("bob-1")).is_err(), "a job's directory is never made twice");
        let (tx, rx) = watch::channel(Progress::default());
        let spool = Spool::open(dir, tx, None).await.unwrap();
        use crate::channel::Out as _;
        spool.stdout(b"out 1\n").await;
        spool.stderr(b"err\n").await;
        spool.stdout(b"out 2\n").await;
        let p = rx.borrow().clone();
        assert_eq!((p.stdout, p.stderr), (12, 4));
        assert_eq!(std::fs::read(dir.join(STDOUT)).unwrap(), b"out 1\nout 2\n");

        // Once it ended it is read from the files, as after a restart.
        let gone = from_disk(dir).unwrap();
        assert_eq!(gone.ended, Some(End::Lost("the node's agent stopped while it ran".into())));
        write_end(dir, &End::Code(3));
        let done = from_disk(dir).unwrap();
        assert_eq!((done.stdout, done.stderr, done.ended), (12, 4, Some(End::Code(3))));
    }
}
