//! Persistent shells, one per (user, session id): `cd` and `export` in one command are seen
//! by the next. The shell reads commands from a pipe; each command is followed by a
//! marker line carrying a fresh random nonce and the exit status, on stdout (and a marker
//! on stderr), so output streams live and the status is exact. Output that imitates a
//! marker cannot know the nonce. Commands on one session run one at a time, in order.
//!
//! Under isolation the shell is the first process of the session's container (Docker or
//! nspawn), so the same framing works there and the container lives as long as the shell.
//!
//! This module is the registry: which shell serves which session, taking turns, and
//! reaping. `shell` starts, signals and ends a shell; `framing` runs one command in it.

pub(crate) mod framing;
mod job;
mod shell;
mod stdin;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::Isolation;
use proto::api::SessionReport;

use crate::channel::{ChannelOut, Messages, Out, Outcome};
use crate::run_as::Login;
use crate::runtimes::Sandbox;
use framing::{Framed, run_framed};
use shell::{Shell, spawn_shell, stop_shell};

type Key = (String, String);

/// Why a session's previous shell is gone; told to the next caller.
#[derive(Clone, Debug)]
enum Ended {
    /// With its status, when it is known.
    Exited(Option<i32>),
    Reaped(Duration),
    Removed,
    /// It did not answer after a command was stopped, and was ended.
    Unresponsive,
    /// The agent stopped (or died) while the shell lived.
    AgentRestarted,
}

impl Ended {
    /// What the next caller is told; `None` when a new shell is what the caller asked for
    /// (the session was removed).
    fn told(&self) -> Option<String> {
        Some(match self {
            Ended::Exited(Some(code)) => format!("its shell exited (status {code})"),
            Ended::Exited(None) => "its shell exited".to_owned(),
            Ended::Reaped(after) => format!("its shell was ended after {}s idle", after.as_secs()),
            Ended::Unresponsive => "its shell did not answer after a command was stopped, and was ended".to_owned(),
            Ended::AgentRestarted => "its shell ended when the node's agent stopped".to_owned(),
            Ended::Removed => return None,
        })
    }
}

/// One session as the agent keeps it on disk, so that after a restart its shell is taken
/// up again, or its next use is told it is gone rather than finding a new one unawares.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Remembered {
    user: String,
    id: String,
    owner: Option<String>,
    /// The isolation its shell was signed for, as text.
    #[serde(default)]
    isolation: String,
    #[serde(default)]
    confined: bool,
    #[serde(default)]
    created: u64,
    /// Its shell, when one on this host can be taken up.
    #[serde(default)]
    shell: Option<shell::Kept>,
}

#[derive(Default)]
struct Slot {
    shell: Option<Shell>,
    /// The incarnation of the user whose shell it is: a name removed and added again is
    /// another user, who never gets the removed one's shell.
    owner: Option<String>,
    /// The isolation its shell was signed for.
    isolation: Isolation,
    /// Whether its shell runs confined (its user was not an admin).
    confined: bool,
    ended: Option<Ended>,
    created: u64,
    last_used: u64,
    /// Monotonic time of last use, for reaping.
    idle_since: Option<Instant>,
    /// Terminals open in its container (`-i`) and file transfers into it: it is in use
    /// while there are any.
    terminals: usize,
}

/// What of a session's container cannot be had from this host (by its id).
#[derive(Debug, thiserror::Error)]
pub enum NotHere {
    #[error("session {0}'s container files cannot be reached from here (its engine runs elsewhere)")]
    Files(String),
    #[error("session {0}'s container cannot be entered from here")]
    Container(String),
}

/// Where a session's terminal is opened: its Docker container, or its nspawn container
/// (by the host pid of its first process).
enum Place {
    Docker(crate::docker::Engine, String),
    Nspawn(crate::procs::Proc),
}

/// Where a session's files are, for file transfer into it.
pub enum Files {
    /// The node's own (a native session).
    Host,
    /// Under the root of this process on the node (its container's first process).
    Root(crate::procs::Proc),
}

/// One command for a session.
pub struct Job<'a> {
    pub command: &'a str,
    /// The isolation it was signed for; must match the session's.
    pub isolation: &'a Isolation,
    /// What a shell started for it runs under here.
    pub sandbox: &'a Sandbox,
    /// The incarnation of the user it runs for.
    pub owner: Option<&'a str>,
    /// Environment for a shell started for it.
    pub env: &'a [(&'a str, &'a str)],
    pub timeout: Option<Duration>,
    /// The local account a shell started for it runs as (none: the agent's own).
    pub login: Option<&'a Login>,
}

/// How a job starts: its id, whether its stdin stays open, and the terminal it runs in
/// (then its stdin is open for keys, and its screen is kept).
pub struct JobStart<'a> {
    pub id: &'a str,
    pub stdin: bool,
    pub terminal: Option<crate::pty::PtyRequest>,
}

/// A job's program in a terminal of its own, beside its session's shell.
enum TerminalProgram {
    Pty(crate::pty::InPty, pty_process::OwnedWritePty),
    Docker(crate::docker::Exec, std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
}

impl TerminalProgram {
    /// Starts the job's command in a terminal where the session's shell is: on this host
    /// as the job's account, or in the shell's container.
    async fn start(host: &shell::ShellHost, job: &Job<'_>, pty: &crate::pty::PtyRequest) -> Result<Self, String> {
        let spawn = match host {
            shell::ShellHost::Container(c) => {
                let entry =
                    crate::docker::Entry { engine: &c.engine, container: &c.id, env: job.env, login: job.login };
                let (exec, input) = crate::docker::start_in_terminal(entry, Some(job.command), pty).await?;
                return Ok(TerminalProgram::Docker(exec, Box::pin(input)));
            }
            shell::ShellHost::Process { root, nspawn: true, .. } => {
                // Never on this host instead: a container whose init is not known is refused.
                let Some(init) = (*root).filter(|init| init.is_running()) else {
                    return Err("the session's container is not running; end the session and start it again".into());
                };
                let (cmd, fresh) = shell::enter_nspawn(init.pid, Some(job.command), job.env);
                let env = crate::pty::Env::Fresh(fresh);
                crate::pty::Spawn { cmd, env, arg0: None, login: None, tree: crate::procs::Tree::Group }
            }
            shell::ShellHost::Process { nspawn: false, .. } => {
                let mut cmd = crate::exec::native_shell(job.env, job.login);
                cmd.arg("-c").arg(job.command);
                let env = crate::pty::Env::Inherit;
                crate::pty::Spawn { cmd, env, arg0: None, login: job.login, tree: crate::procs::Tree::Group }
            }
        };
        let (process, input) = crate::pty::start(spawn, pty)?;
        Ok(TerminalProgram::Pty(process, input))
    }

    async fn drive(self, timeout: Option<Duration>, input: Messages, out: &impl Out) -> Outcome {
        match self {
            TerminalProgram::Pty(process, stdin) => crate::drive::drive(process, stdin, timeout, input, out).await,
            TerminalProgram::Docker(exec, stdin) => crate::drive::drive(exec, stdin, timeout, input, out).await,
        }
    }
}

/// All sessions on this node.
pub struct Sessions {
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Sessions that ended since the last heartbeat, with why.
    ended_reports: Mutex<Vec<SessionReport>>,
    /// Notified when a session ends, so the heartbeat tells the control plane at once.
    pub ended: tokio::sync::Notify,
    idle_limit: Duration,
    /// Sessions with a shell one user may have at once.
    max_per_user: usize,
    /// Where the live sessions are written down (`sessions.json` in the agent's dir).
    store: PathBuf,
    /// Where shells' named pipes are (`shells/` in the agent's dir).
    shells: PathBuf,
    /// What is written there.
    live: Mutex<HashMap<Key, Remembered>>,
    /// Where jobs keep their output (`jobs/` in the agent's dir).
    jobs_dir: PathBuf,
    /// The jobs this run of the agent started, running or ended and not yet forgotten.
    jobs: Mutex<HashMap<Key, Arc<job::Running>>>,
}

/// How long a job's output is kept after it ended when its owner never says to forget it.
const KEEP_JOB_OUTPUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a session whose shell is gone is remembered, so that its next use can say
/// why the shell went; after that it is forgotten and the registry does not grow forever.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Sessions {
    /// The sessions of this node, written down in the agent's `dir`. Shells an earlier run
    /// left alive (it died) are taken up again; the sessions whose shells went with it are
    /// told so at their next use.
    pub async fn new(idle_limit: Duration, max_per_user: usize, dir: &Path) -> Arc<Sessions> {
        let store = dir.join("sessions.json");
        let shells = dir.join("shells");
        let earlier: Vec<Remembered> =
            std::fs::read(&store).ok().and_then(|text| serde_json::from_slice(&text).ok()).unwrap_or_default();
        let (mut slots, mut live, mut reports) = (HashMap::new(), HashMap::new(), Vec::new());
        for r in earlier {
            let key = (r.user.clone(), r.id.clone());
            let kept = r.shell.as_ref().filter(|k| k.is_under(&shells));
            let taken_up = match kept {
                Some(kept) => shell::take_up(kept).await.map_err(|why| {
                    tracing::info!(user = %r.user, session = %r.id, %why, "a session's shell could not be taken up");
                }),
                None => Err(()),
            };
            let isolation = r.isolation.parse::<Isolation>().unwrap_or_default();
            let slot = match taken_up {
                Ok(shell) => {
                    tracing::info!(user = %r.user, session = %r.id, "took up a session's shell left by an earlier run");
                    Slot {
                        shell: Some(shell),
                        owner: r.owner.clone(),
                        isolation,
                        confined: r.confined,
                        created: r.created,
                        last_used: proto::time::now(),
                        idle_since: Some(Instant::now()),
                        ..Slot::default()
                    }
                }
                Err(()) => {
                    // The directory hears at the first heartbeat that the shell is gone.
                    reports.push(SessionReport {
                        user: r.user.clone(),
                        id: r.id.clone(),
                        state: "exited".into(),
                        last_used: 0,
                    });
                    Slot {
                        owner: r.owner.clone(),
                        ended: Some(Ended::AgentRestarted),
                        idle_since: Some(Instant::now()),
                        ..Slot::default()
                    }
                }
            };
            let remembered = Remembered { shell: slot.shell.as_ref().and_then(Shell::kept), ..r };
            live.insert(key.clone(), remembered);
            slots.insert(key, Arc::new(tokio::sync::Mutex::new(slot)));
        }
        // Jobs that ran when the agent stopped: lost, and their sessions' shells with them
        // (a shell taken up mid-command cannot frame the next one).
        let jobs_dir = dir.join("jobs");
        for (user, id, dir) in job_dirs(&jobs_dir) {
            if dir.join("ended.json").exists() {
                continue;
            }
            job::write_end(&dir, &job::End::Lost("the node's agent stopped while it ran".into()));
            let key = (user, id);
            if let Some(slot) = slots.get_mut(&key).and_then(|s: &mut Arc<tokio::sync::Mutex<Slot>>| Arc::get_mut(s))
                && let Some(mut shell) = slot.get_mut().shell.take()
            {
                stop_shell(&mut shell).await;
                let slot = slot.get_mut();
                slot.ended = Some(Ended::AgentRestarted);
                live.remove(&key);
                reports.push(SessionReport {
                    user: key.0.clone(),
                    id: key.1.clone(),
                    state: "exited".into(),
                    last_used: 0,
                });
            }
        }
        // Pipes of shells that are gone, or never written down.
        let in_use: Vec<PathBuf> = live.values().filter_map(|r| r.shell.as_ref().map(shell::Kept::dir)).collect();
        for entry in std::fs::read_dir(&shells).into_iter().flatten().flatten() {
            if !in_use.contains(&entry.path()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let sessions = Arc::new(Sessions {
            slots: Mutex::new(slots),
            ended_reports: Mutex::new(reports),
            ended: tokio::sync::Notify::new(),
            idle_limit,
            max_per_user,
            store,
            shells,
            live: Mutex::new(live),
            jobs_dir,
            jobs: Mutex::default(),
        });
        sessions.write_down();
        sessions
    }

    /// How many sessions of `user` other than `except` have a shell (or are busy, which
    /// may be starting one).
    fn live_shells(&self, user: &str, except: &Key) -> usize {
        let theirs: Vec<Arc<tokio::sync::Mutex<Slot>>> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(k, _)| k.0 == user && *k != except)
            .map(|(_, slot)| slot.clone())
            .collect();
        theirs.iter().filter(|slot| slot.try_lock().map_or(true, |s| s.shell.is_some())).count()
    }

    fn slot(&self, key: &Key) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }

    /// Writes down which sessions have a shell (or lost one in a restart and have not
    /// been told yet): `what` for `key` now, or `None` to forget it.
    fn remember(&self, key: &Key, what: Option<Remembered>) {
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            match what {
                Some(what) => live.insert(key.clone(), what),
                None => live.remove(key),
            };
        }
        self.write_down();
    }

    fn write_down(&self) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<&Remembered> = live.values().collect();
        let text = serde_json::to_vec(&list).expect("serializable");
        if let Err(e) = paths::write_private(&self.store, &text) {
            tracing::warn!(path = %self.store.display(), error = %e, "could not write down the live sessions");
        }
    }

    fn report_end(&self, key: &Key, state: &str, slot: &Slot) {
        self.remember(key, None);
        self.ended_reports.lock().unwrap_or_else(|e| e.into_inner()).push(SessionReport {
            user: key.0.clone(),
            id: key.1.clone(),
            state: state.into(),
            last_used: slot.last_used,
        });
        self.ended.notify_one();
    }

    /// What the heartbeat tells the control plane: live shells, and ends since last time.
    pub fn reports(&self) -> Vec<SessionReport> {
        let mut out: Vec<SessionReport> =
            std::mem::take(&mut *self.ended_reports.lock().unwrap_or_else(|e| e.into_inner()));
        let slots: Vec<(Key, Arc<tokio::sync::Mutex<Slot>>)> =
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, slot) in slots {
            // A busy session is in use right now — unless it is busy reporting its end
            // (this heartbeat may have been woken by that very report).
            let (live, last_used) = match slot.try_lock() {
                Ok(s) => (s.shell.is_some(), s.last_used),
                Err(_) if out.iter().any(|r| r.user == key.0 && r.id == key.1) => (false, 0),
                Err(_) => (true, proto::time::now()),
            };
            if live {
                out.push(SessionReport { user: key.0, id: key.1, state: "active".into(), last_used });
            }
        }
        out
    }

    /// Stops shells idle longer than the limit; runs until the agent stops.
    pub async fn reap_forever(self: Arc<Self>) {
        let tick = (self.idle_limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            tokio::time::sleep(tick).await;
            let slots: Vec<(Key, Arc<tokio::sync::Mutex<Slot>>)> = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (key, slot) in slots {
                let Ok(mut s) = slot.try_lock() else { continue };
                if s.shell.is_some() && s.terminals == 0 && s.idle_since.is_some_and(|t| t.elapsed() >= self.idle_limit)
                {
                    if let Some(mut shell) = s.shell.take() {
                        stop_shell(&mut shell).await;
                    }
                    s.ended = Some(Ended::Reaped(self.idle_limit));
                    tracing::info!(user = %key.0, session = %key.1, "session reaped after idling");
                    self.report_end(&key, "reaped", &s);
                }
            }
            self.forget_old();
            self.forget_old_jobs();
        }
    }

    /// Deletes the output of jobs that ended long ago and were never forgotten.
    fn forget_old_jobs(&self) {
        for (user, id, dir) in job_dirs(&self.jobs_dir) {
            let ended = std::fs::metadata(dir.join("ended.json")).and_then(|m| m.modified());
            if ended.is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= KEEP_JOB_OUTPUT)) {
                let key = (user, id);
                let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                if jobs.get(&key).is_some_and(|j| j.dir == dir) {
                    jobs.remove(&key);
                }
                drop(jobs);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    /// Drops the sessions whose shell is gone and that nobody has used for a long time
    /// (or ever), and that no call holds now.
    fn forget_old(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| {
            let Ok(s) = slot.try_lock() else { return true };
            let spent = s.shell.is_none() && s.idle_since.is_none_or(|t| t.elapsed() >= FORGET_AFTER);
            !(spent && Arc::strong_count(slot) == 1)
        });
    }

    /// Ends every session's shell (and container) as the agent stops. A session busy for
    /// longer than a moment is left to the process exit, and its container to the next
    /// start's clean-up.
    pub async fn stop_all(&self) {
        let slots: Vec<Arc<tokio::sync::Mutex<Slot>>> =
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for slot in slots {
            let Ok(mut s) = tokio::time::timeout(Duration::from_secs(2), slot.lock()).await else { continue };
            if let Some(mut shell) = s.shell.take() {
                stop_shell(&mut shell).await;
            }
        }
    }

    /// Ends every session (shell and container) of the user `incarnation`, removed from
    /// the fleet; returns how many were idle and ended now. A session running a command
    /// is ended when that command is done (its user can start no other).
    pub async fn end_user(self: &Arc<Self>, incarnation: &str) -> usize {
        // Their jobs hold their sessions: stopped first, as calls given up on.
        let theirs: Vec<Arc<job::Running>> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|j| j.owner.as_deref() == Some(incarnation) && j.progress.borrow().ended.is_none())
            .cloned()
            .collect();
        for j in theirs {
            let _ = j.input.send(russh::ChannelMsg::Close);
        }
        let slots: Vec<(Key, Arc<tokio::sync::Mutex<Slot>>)> =
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut ended = 0;
        for (key, slot) in slots {
            match slot.clone().try_lock_owned() {
                Ok(mut s) => {
                    if s.owner.as_deref() == Some(incarnation) {
                        self.end_removed(&key, &mut s).await;
                        ended += 1;
                    }
                }
                Err(_) => {
                    let (this, incarnation) = (self.clone(), incarnation.to_owned());
                    tokio::spawn(async move {
                        let mut s = slot.lock().await;
                        if s.owner.as_deref() == Some(incarnation.as_str()) {
                            this.end_removed(&key, &mut s).await;
                        }
                    });
                }
            }
        }
        ended
    }

    async fn end_removed(&self, key: &Key, s: &mut Slot) {
        if let Some(mut shell) = s.shell.take() {
            stop_shell(&mut shell).await;
        }
        s.ended = Some(Ended::Removed);
        self.report_end(key, "ended", s);
    }

    /// Ends a session's shell (`openbox session rm`).
    pub async fn remove(&self, user: &str, id: &str) -> bool {
        let key = (user.to_owned(), id.to_owned());
        // A job holds the session while it runs: it is stopped first, as a call given up on.
        if let Some(running) = self.job(&key).filter(|j| j.progress.borrow().ended.is_none()) {
            let _ = running.input.send(russh::ChannelMsg::Close);
        }
        let slot = self.slot(&key);
        let mut s = slot.lock().await;
        let had = match s.shell.take() {
            Some(mut shell) => {
                stop_shell(&mut shell).await;
                true
            }
            None => false,
        };
        s.ended = Some(Ended::Removed);
        self.report_end(&key, "ended", &s);
        had
    }

    /// Runs `job` in the session's shell (starting one if needed) and reports its end.
    pub async fn run(&self, user: &str, id: &str, job: Job<'_>, out: &ChannelOut, input: russh::ChannelReadHalf) {
        let mut input = crate::channel::messages(input, out);
        let key = (user.to_owned(), id.to_owned());
        let slot = self.slot(&key);
        let mut s = slot.lock().await; // one command at a time, in arrival order
        if !self.ensure_shell(&mut s, &key, &job, out).await {
            return;
        }
        let Job { command, timeout, .. } = job;
        s.last_used = proto::time::now();
        s.idle_since = None;
        let shell = s.shell.as_mut().expect("just ensured");
        let framed = run_framed(shell, command, timeout, out, &mut input).await;
        let outcome = self.conclude(&mut s, &key, framed, out).await;
        drop(s);
        out.finish(outcome).await;
    }

    /// What a framed command's end means for the session (its shell may be gone) and the
    /// caller, who is told on `out` when it was more than the command's own status.
    async fn conclude(&self, s: &mut Slot, key: &Key, framed: Framed, out: &impl Out) -> Outcome {
        let id = key.1.as_str();
        s.last_used = proto::time::now();
        s.idle_since = Some(Instant::now());
        match framed {
            Framed::Done(code) => Outcome::Code(code),
            Framed::TimedOut(after) => {
                out.stderr(
                    format!("openbox: timed out after {}; the session is still there\n", proto::time::span(after))
                        .as_bytes(),
                )
                .await;
                Outcome::Code(124)
            }
            Framed::ShellEnded => {
                let mut shell = s.shell.take().expect("running");
                // Closed output with the shell still alive (`exec >/dev/null`) cannot be
                // framed any more: such a shell is ended.
                let code = match tokio::time::timeout(Duration::from_secs(2), shell.host.exit_code()).await {
                    Ok(code) => code,
                    Err(_) => {
                        shell.host.stop().await;
                        out.stderr(
                            format!("openbox: session {id}: the shell closed its output; it was ended\n").as_bytes(),
                        )
                        .await;
                        Some(255)
                    }
                };
                let status = code.map_or("status unknown".to_owned(), |c| format!("status {c}"));
                out.stderr(
                    format!("openbox: session {id}: the shell exited ({status}); the next command starts a new one\n")
                        .as_bytes(),
                )
                .await;
                s.ended = Some(Ended::Exited(code));
                self.report_end(key, "exited", s);
                Outcome::Code(code.unwrap_or(255) as u32)
            }
            Framed::Unresponsive(timed_out) => {
                let mut shell = s.shell.take().expect("running");
                shell.host.stop().await;
                out.stderr(
                    format!(
                        "openbox: session {id}: the shell did not answer after its command was stopped; it was ended, and the next command starts a new one\n"
                    )
                    .as_bytes(),
                )
                .await;
                s.ended = Some(Ended::Unresponsive);
                self.report_end(key, "exited", s);
                Outcome::Code(if timed_out.is_some() { 124 } else { 255 })
            }
        }
    }

    fn job(&self, key: &Key) -> Option<Arc<job::Running>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Starts `job` as the session's job `job_id` (starting its shell if needed) and answers
    /// the channel at once: the command runs on, its output kept here, until it ends. A
    /// session busy with a command or another job refuses it rather than starting it later,
    /// when its starter may have given up.
    pub async fn start_job(
        self: &Arc<Self>,
        user: &str,
        id: &str,
        start: JobStart<'_>,
        job: Job<'_>,
        mut out: ChannelOut,
    ) {
        let JobStart { id: job_id, stdin, terminal } = start;
        // Its screen is kept here, in memory: a size past the bounds is refused.
        if let Some(why) = terminal.as_ref().and_then(|t| proto::jobs::TerminalSize::check(t.rows, t.cols).err()) {
            return out.refuse(&format!("{why}; nothing was started")).await;
        }
        // A terminal's keys go to its stdin: it stays open.
        let stdin = stdin || terminal.is_some();
        let key = (user.to_owned(), id.to_owned());
        let slot = self.slot(&key);
        let Ok(mut s) = slot.try_lock_owned() else {
            let why = format!("session {id} is busy (a command or a job runs in it); nothing was started");
            return out.refuse(&why).await;
        };
        if !self.ensure_shell(&mut s, &key, &job, &out).await {
            return;
        }
        let dir = job::dir_of(&self.jobs_dir, user, id, job_id);
        let (progress, _) = tokio::sync::watch::channel(job::Progress::default());
        let screen = terminal.as_ref().map(job::new_screen);
        let spool = match job::prepare(&dir, job.owner) {
            Ok(()) => job::Spool::open(&dir, progress.clone(), screen.clone()).await,
            Err(e) => Err(e),
        };
        let spool = match spool {
            Ok(spool) => spool,
            Err(e) => return out.refuse(&format!("cannot keep the job's output ({e}); nothing was started")).await,
        };
        // A program in a terminal starts beside the session's shell (in its container, for
        // a container's session) — now, so that the caller hears when it cannot.
        let in_terminal = match (&terminal, s.shell.as_ref()) {
            (Some(pty), Some(shell)) => match TerminalProgram::start(&shell.host, &job, pty).await {
                Ok(program) => Some(program),
                Err(why) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return out.refuse(&why).await;
                }
            },
            _ => None,
        };
        let (input_tx, input_rx) = tokio::sync::mpsc::unbounded_channel();
        if !stdin {
            let _ = input_tx.send(russh::ChannelMsg::Eof);
        }
        let running = Arc::new(job::Running {
            id: job_id.to_owned(),
            owner: job.owner.map(str::to_owned),
            dir: dir.clone(),
            progress: progress.clone(),
            input: input_tx,
            screen,
        });
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), running);
        s.last_used = proto::time::now();
        s.idle_since = None;
        // The audit's record of the command ends when the job does, with its status.
        let record = out.record.take();
        let (command, timeout) = (job.command.to_owned(), job.timeout);
        let this = self.clone();
        tokio::spawn(async move {
            let mut input = Messages::queued(input_rx);
            let outcome = match in_terminal {
                // The session's shell is not touched: it stays as it was, idle from now.
                Some(program) => {
                    let outcome = program.drive(timeout, input, &spool).await;
                    s.last_used = proto::time::now();
                    s.idle_since = Some(Instant::now());
                    outcome
                }
                None => {
                    let shell = s.shell.as_mut().expect("just ensured");
                    let framed = run_framed(shell, &command, timeout, &spool, &mut input).await;
                    this.conclude(&mut s, &key, framed, &spool).await
                }
            };
            let end = match outcome {
                Outcome::Code(code) => job::End::Code(code),
                Outcome::Signal(sig, _) => job::End::Code(
                    crate::signals::name(&sig).map_or(255, |n| u32::from(proto::exec::signal_exit_code(n))),
                ),
            };
            drop(s);
            if let Some(record) = record {
                record.end(match &end {
                    job::End::Code(code) => code.to_string(),
                    job::End::Lost(why) => format!("lost: {why}"),
                });
            }
            job::write_end(&dir, &end);
            progress.send_modify(|p| p.ended = Some(end));
        });
        out.finish(Outcome::Code(0)).await;
    }

    /// Carries out `op` on the session's job for a channel of `user` (incarnation `owner`):
    /// only the job it names, and only when that incarnation started it.
    pub async fn job_op(
        &self,
        user: &str,
        owner: Option<&str>,
        id: &str,
        op: proto::exec::JobOp,
        read: russh::ChannelReadHalf,
        out: ChannelOut,
    ) {
        use proto::exec::JobAct;
        let key = (user.to_owned(), id.to_owned());
        let dir = job::dir_of(&self.jobs_dir, user, id, &op.id);
        let running = self.job(&key).filter(|j| j.id == op.id);
        let theirs = match &running {
            Some(j) => j.owner.as_deref() == owner,
            None => job::owned_by(&dir, owner),
        };
        if !theirs {
            return out.refuse(&format!("session {id} has no job {}", op.id)).await;
        }
        let live = running.as_ref().filter(|j| j.progress.borrow().ended.is_none());
        match op.act {
            JobAct::Read { stdout, stderr } => {
                let progress = match &running {
                    Some(j) => j.progress.subscribe(),
                    // Ended in an earlier run of the agent: its files say it all.
                    None => match job::from_disk(&dir) {
                        Some(last) => tokio::sync::watch::channel(last).1,
                        None => return out.refuse(&format!("session {id} has no job {}", op.id)).await,
                    },
                };
                job::read(&dir, progress, (stdout, stderr), out).await;
            }
            JobAct::Input { close } => {
                let Some(j) = live else { return out.refuse(&format!("job {} is not running", op.id)).await };
                let mut messages = crate::channel::messages(read, &out);
                while let Some(msg) = messages.recv().await {
                    match msg {
                        russh::ChannelMsg::Data { data } => {
                            messages.window.used(data.len());
                            let _ = j.input.send(russh::ChannelMsg::Data { data });
                        }
                        russh::ChannelMsg::Eof => {
                            if close {
                                let _ = j.input.send(russh::ChannelMsg::Eof);
                            }
                            break;
                        }
                        russh::ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                out.finish(Outcome::Code(0)).await;
            }
            JobAct::Signal(name) => {
                let Some(j) = live else { return out.refuse(&format!("job {} is not running", op.id)).await };
                let number = proto::exec::signal_number(&name).map_or(15, i32::from);
                let _ = j.input.send(russh::ChannelMsg::Signal { signal: crate::signals::from_raw(number) });
                out.finish(Outcome::Code(0)).await;
            }
            JobAct::Stop => {
                if let Some(j) = live {
                    let _ = j.input.send(russh::ChannelMsg::Close);
                }
                out.finish(Outcome::Code(0)).await;
            }
            JobAct::Forget => {
                if live.is_some() {
                    return out.refuse(&format!("job {} still runs: stop it first", op.id)).await;
                }
                if running.is_some() {
                    self.jobs.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                }
                let _ = std::fs::remove_dir_all(&dir);
                out.finish(Outcome::Code(0)).await;
            }
            JobAct::Screen => match running.as_ref().and_then(|j| j.screen.as_ref()) {
                Some(screen) => {
                    let text = serde_json::to_vec(&job::snapshot(screen)).expect("serializable");
                    out.stdout(&text).await;
                    out.finish(Outcome::Code(0)).await;
                }
                None if running.is_some() => out.refuse(&format!("job {} runs without a terminal", op.id)).await,
                None => {
                    let why = format!("job {} ended before the node's agent restarted: its screen is gone", op.id);
                    out.refuse(&why).await;
                }
            },
            JobAct::Start { .. } => out.refuse("a job is started with its command (exec)").await,
        }
    }

    /// Runs `visit` with the session's files (starting the session if needed): the node's
    /// own for a native session, else its container's root, seen from here. The session is
    /// in use, and is not reaped, while `visit` runs.
    pub async fn visit<F, Fut>(&self, user: &str, id: &str, job: Job<'_>, out: ChannelOut, visit: F)
    where
        F: FnOnce(Files, ChannelOut) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let files = |host: &shell::ShellHost| {
            match host {
                shell::ShellHost::Container(c) => c.pid.map(Files::Root),
                shell::ShellHost::Process { nspawn: true, root, .. } => root.map(Files::Root),
                shell::ShellHost::Process { nspawn: false, .. } => Some(Files::Host),
            }
            .ok_or_else(|| NotHere::Files(id.to_owned()))
        };
        self.in_use(user, id, &job, out, files, visit).await;
    }

    /// Opens a terminal in the session's container (starting the session if needed): a
    /// login shell, or `job.command` when it is not empty, beside the session's shell — it
    /// shares the container's files and processes, not the shell's variables. The session
    /// is in use, and is not reaped, while a terminal is open.
    pub async fn terminal(
        &self,
        user: &str,
        id: &str,
        job: Job<'_>,
        pty: &crate::pty::PtyRequest,
        input: russh::ChannelReadHalf,
        out: ChannelOut,
    ) {
        if *job.isolation == Isolation::Native {
            return out
                .refuse("a native session has no container to open a terminal in; leave out -s for a shell on the node")
                .await;
        }
        let place = |host: &shell::ShellHost| match host {
            shell::ShellHost::Container(c) => Ok(Place::Docker(c.engine.clone(), c.id.clone())),
            shell::ShellHost::Process { root: Some(init), nspawn: true, .. } => Ok(Place::Nspawn(*init)),
            shell::ShellHost::Process { .. } => Err(NotHere::Container(id.to_owned())),
        };
        let command = Some(job.command).filter(|c| !c.is_empty());
        let (env, login, timeout) = (job.env, job.login, job.timeout);
        let open = |place, out| async move {
            match place {
                Place::Docker(engine, container) => {
                    let entry = crate::docker::Entry { engine: &engine, container: &container, env, login };
                    crate::docker::exec_in_terminal(entry, command, pty, input, out).await;
                }
                Place::Nspawn(init) => {
                    if !init.is_running() {
                        return out.refuse(&format!("session {id}'s container has ended")).await;
                    }
                    let (cmd, fresh) = shell::enter_nspawn(init.pid, command, env);
                    let spawn = crate::pty::Spawn {
                        cmd,
                        env: crate::pty::Env::Fresh(fresh),
                        arg0: None,
                        login: None,
                        tree: crate::procs::Tree::Group,
                    };
                    crate::pty::run(spawn, pty, timeout, input, out).await;
                }
            }
        };
        self.in_use(user, id, &job, out, place, open).await;
    }

    /// Runs `then` with what `pick` finds in the session's shell (starting the session if
    /// needed), the session kept in use — not reaped — meanwhile; refuses with what `pick`
    /// says when it finds nothing.
    async fn in_use<T, F, Fut>(
        &self,
        user: &str,
        id: &str,
        job: &Job<'_>,
        out: ChannelOut,
        pick: impl FnOnce(&shell::ShellHost) -> Result<T, NotHere>,
        then: F,
    ) where
        F: FnOnce(T, ChannelOut) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let key = (user.to_owned(), id.to_owned());
        let slot = self.slot(&key);
        let mut s = slot.lock().await;
        if !self.ensure_shell(&mut s, &key, job, &out).await {
            return;
        }
        let found = match s.shell.as_ref().map(|shell| pick(&shell.host)) {
            Some(Ok(found)) => found,
            Some(Err(why)) => return out.refuse(&why.to_string()).await,
            None => return, // ensure_shell leaves a shell, or has told the caller why not
        };
        s.terminals += 1;
        s.last_used = proto::time::now();
        drop(s);
        then(found, out).await;
        let mut s = slot.lock().await;
        s.terminals -= 1;
        s.last_used = proto::time::now();
        s.idle_since = Some(Instant::now());
    }

    /// Makes sure the session has a live shell for `job` (starting one if needed), under
    /// the slot's lock `s`; `false` once the caller has been told why not.
    async fn ensure_shell(&self, s: &mut Slot, key: &Key, job: &Job<'_>, out: &ChannelOut) -> bool {
        let id = key.1.as_str();
        let Job { isolation, sandbox, owner, env, login, .. } = *job;
        if s.owner.as_deref() != owner {
            // A removed user's session, under a name someone else has now: never theirs,
            // nor anything about it.
            if let Some(mut shell) = s.shell.take() {
                stop_shell(&mut shell).await;
                tracing::info!(session = %id, "ended a shell left by an earlier user of this name");
            }
            s.ended = None;
        }
        // A shell that ended unasked: this call is told so and runs nothing; the next one
        // starts a new shell. Nobody works on in the wrong directory unawares.
        if s.shell.is_none()
            && let Some(told) = s.ended.take().as_ref().and_then(Ended::told)
        {
            self.remember(key, None);
            let why = format!(
                "session {id}: {told}, and its directory and variables with it; nothing was run. Run again to start \
                 a new shell, or end the session with `openbox session rm {id}`"
            );
            out.refuse_with(&why, u32::from(proto::EXIT_SESSION_LOST)).await;
            return false;
        }
        if s.shell.is_some() && s.confined != sandbox.hold.confined {
            // Started while its user was an admin (or before he became one): the shell
            // holds what it held then.
            let why = format!(
                "session {id} was started when your admin role was {}; nothing was run (end it with `openbox session rm {id}`)",
                if s.confined { "absent" } else { "present" }
            );
            out.refuse(&why).await;
            return false;
        }
        if s.shell.is_some() && s.isolation != *isolation {
            let why = format!(
                "session {id} runs {}, not {isolation}; nothing was run (end it with `openbox session rm {id}`)",
                s.isolation
            );
            out.refuse(&why).await;
            return false;
        }
        if s.shell.is_none() {
            s.ended = None;
            let live = self.live_shells(&key.0, key);
            if live >= self.max_per_user {
                let why = format!(
                    "you have {live} sessions on this node, the most it allows (openbox agent --max-sessions N); \
                     end one with `openbox session rm ID` (`openbox sessions` lists them); nothing was run"
                );
                out.refuse(&why).await;
                return false;
            }
            match spawn_shell(sandbox, env, login, id, &self.shells).await {
                Ok(shell) => {
                    let remembered = Remembered {
                        user: key.0.clone(),
                        id: key.1.clone(),
                        owner: owner.map(str::to_owned),
                        isolation: isolation.to_string(),
                        confined: sandbox.hold.confined,
                        created: proto::time::now(),
                        shell: shell.kept(),
                    };
                    s.shell = Some(shell);
                    s.owner = remembered.owner.clone();
                    s.isolation = isolation.clone();
                    s.confined = remembered.confined;
                    s.created = remembered.created;
                    self.remember(key, Some(remembered));
                }
                Err(e) => {
                    out.refuse(&format!("cannot start a shell for session {id}: {e}; nothing was run")).await;
                    return false;
                }
            }
        }
        true
    }
}

/// The job directories under `jobs` (`USER/SESSION`), with their user and session.
fn job_dirs(jobs: &Path) -> Vec<(String, String, PathBuf)> {
    let mut found = Vec::new();
    for user in std::fs::read_dir(jobs).into_iter().flatten().flatten() {
        for session in std::fs::read_dir(user.path()).into_iter().flatten().flatten() {
            let (Some(u), Some(id)) =
                (user.file_name().to_str().map(str::to_owned), session.file_name().to_str().map(str::to_owned))
            else {
                continue;
            };
            found.push((u, id, session.path()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_whose_shell_went_with_the_agent_is_reported_gone_and_stray_pipes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let shells = dir.path().join("shells");
        std::fs::create_dir_all(shells.join("stray")).unwrap();
        let gone = shell_record(&shells.join("gone"));
        let earlier = serde_json::json!([
            {"user": "bob", "id": "build", "owner": "bob-1", "isolation": "native", "created": 5, "shell": gone},
            {"user": "eve", "id": "docker", "owner": null, "isolation": "docker:img"},
        ]);
        std::fs::write(dir.path().join("sessions.json"), earlier.to_string()).unwrap();

        let sessions = Sessions::new(Duration::from_secs(60), 8, dir.path()).await;
        let mut reports = sessions.reports();
        reports.sort_by(|a, b| a.id.cmp(&b.id));
        let said: Vec<(&str, &str)> = reports.iter().map(|r| (r.id.as_str(), r.state.as_str())).collect();
        assert_eq!(said, [("build", "exited"), ("docker", "exited")], "neither shell could be taken up");
        assert!(!shells.join("stray").exists(), "pipes of no session are removed");
        // Still written down, to tell their next use what happened.
        let kept: Vec<Remembered> =
            serde_json::from_slice(&std::fs::read(dir.path().join("sessions.json")).unwrap()).unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|r| r.shell.is_none()));
    }

    /// A shell record for a process that does not run (pid 0 never is a process).
    fn shell_record(dir: &Path) -> serde_json::Value {
        serde_json::json!({"process": "0:1", "nspawn": false, "root": null, "dir": dir})
    }

    #[test]
    fn the_next_use_is_told_why_the_shell_went_unless_it_was_removed() {
        assert!(Ended::AgentRestarted.told().unwrap().contains("agent stopped"));
        assert!(Ended::Exited(Some(3)).told().unwrap().contains("status 3"));
        assert!(Ended::Reaped(Duration::from_secs(60)).told().unwrap().contains("60s idle"));
        assert!(Ended::Removed.told().is_none(), "a removed session starts afresh silently");
    }
}
