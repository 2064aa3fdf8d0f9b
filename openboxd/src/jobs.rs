//! Jobs: commands that run on a node whether or not anyone is connected, owned by openboxd. Started by
//! `openbox --detach` or the MCP server's `start`, each runs in a session of its own on
//! its node (or the one named) as that session's job; the node keeps its output until it
//! is read. Here each job has a record and its output spooled under the state directory
//! (`jobs/ID/`: head and tail kept, what was dropped counted), and a follower task that
//! reads the node's output into the spool until the job ends — again after openboxd
//! restarts, from where the spool stopped, so nothing the job printed meanwhile is lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use net::ssh::PtySpec;
use net::ssh::{ExitStatus, NoInput};
use proto::api::Target;
use proto::exec::{JobAct, JobOp};
use proto::jobs::{JobInfo, JobRead, Screen, TerminalSize};
use proto::request::RunRequest;
use proto::time::Seconds;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Daemon;
use crate::connect::{Want, What};
use crate::io::{CallInput, CallOutput};
use crate::spool::Spool;

/// How long an ended job is kept (`OPENBOX_JOB_RETENTION` changes it, e.g. `1d`).
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const RETENTION_ENV: &str = "OPENBOX_JOB_RETENTION";
/// A job's terminal when `-i` asks for one and gives no size.
const DEFAULT_TERMINAL: TerminalSize = TerminalSize { rows: 24, cols: 80 };
/// A terminal job's screen at its end, in its directory.
const LAST_SCREEN: &str = "screen.json";
/// A follower that cannot reach the node tries again after at most this long.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A job's record, `job.json` in its directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    node: String,
    node_id: String,
    session: String,
    /// The session was made for the job, and goes when the job has ended.
    own_session: bool,
    command: String,
    isolation: proto::Isolation,
    started: u64,
    stdin: bool,
    /// The size of the terminal it runs in, if it runs in one.
    #[serde(default)]
    terminal: Option<TerminalSize>,
    /// Whose job it is: the login it was started with.
    user: String,
    state: State,
    #[serde(default)]
    exit_code: Option<u8>,
    #[serde(default)]
    ended: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Running,
    Exited,
    Lost,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Exited => "exited",
            State::Lost => "lost",
        }
    }
}

pub struct Job {
    dir: PathBuf,
    record: Mutex<Record>,
    /// Its stdout and stderr, as far as they came.
    streams: Mutex<(Spool, Spool)>,
    /// Bumped at every change (output, end), for those waiting on it.
    changed: watch::Sender<u64>,
}

impl Job {
    fn record(&self) -> Record {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn ended(&self) -> bool {
        self.record().state != State::Running
    }

    fn info(&self) -> JobInfo {
        let r = self.record();
        let s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        JobInfo {
            id: r.id,
            node: r.node,
            node_id: r.node_id,
            session: r.session,
            command: r.command,
            isolation: r.isolation.to_string(),
            started: r.started,
            state: r.state.word().to_owned(),
            exit_code: r.exit_code,
            ended: r.ended,
            error: r.error,
            stdin: r.stdin,
            terminal: r.terminal,
            stdout_bytes: s.0.len(),
            stderr_bytes: s.1.len(),
            stdout_dropped: s.0.dropped(),
            stderr_dropped: s.1.dropped(),
        }
    }

    fn lens(&self) -> (u64, u64) {
        let s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        (s.0.len(), s.1.len())
    }

    fn update(&self, change: impl FnOnce(&mut Record)) {
        let text = {
            let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut r);
            serde_json::to_vec_pretty(&*r).expect("serializable")
        };
        if let Err(e) = paths::write_private(&self.dir.join("job.json"), &text) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write a job's record");
        }
        self.changed.send_modify(|g| *g += 1);
    }

    fn append(&self, stderr: bool, data: &[u8]) -> std::io::Result<()> {
        let appended = {
            let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let stream = if stderr { &mut s.1 } else { &mut s.0 };
            let appended = stream.append(data);
            if appended.is_err() {
                // Written partway (a full disk): the files say how far it came, and the
                // next read from the node goes on from there.
                *stream = Spool::open(&self.dir, if stderr { "stderr" } else { "stdout" })?;
            }
            appended
        };
        self.changed.send_modify(|g| *g += 1);
        appended
    }

    fn want(&self) -> (Target, String, proto::Isolation) {
        let r = self.record();
        (Target::Node(r.node_id), r.session, r.isolation)
    }
}

/// The jobs of this openboxd's context.
pub struct Jobs {
    dir: PathBuf,
    table: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    /// The jobs recorded under `dir`; those ended longer ago than the retention are deleted.
    pub fn open(dir: PathBuf) -> Arc<Jobs> {
        let mut table = HashMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match load(&entry.path()) {
                Ok(job) => {
                    table.insert(job.record().id, Arc::new(job));
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(dir = %entry.path().display(), %error, "a job's record is unreadable; left alone");
                }
            }
        }
        let jobs = Arc::new(Jobs { dir, table: Mutex::new(table) });
        jobs.sweep();
        jobs
    }

    /// Follows every running job again (after openboxd started), and sweeps old ones now
    /// and then.
    pub fn resume(self: &Arc<Self>, d: &Arc<Daemon>) {
        for job in self.all() {
            if !job.ended() {
                tokio::spawn(follow(d.clone(), job));
            }
        }
        let jobs = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let Some(jobs) = jobs.upgrade() else { return };
                jobs.sweep();
            }
        });
    }

    fn all(&self) -> Vec<Arc<Job>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Deletes jobs that ended longer ago than the retention.
    fn sweep(&self) {
        let keep = std::env::var(RETENTION_ENV)
            .ok()
            .and_then(|v| proto::parse_secs(&v).ok())
            .map_or(RETENTION, Duration::from_secs);
        let now = proto::time::now();
        let old: Vec<Arc<Job>> = self
            .all()
            .into_iter()
            .filter(|j| j.record().ended.is_some_and(|t| now.saturating_sub(t) >= keep.as_secs()))
            .collect();
        for job in old {
            tracing::info!(job = %job.record().id, "job removed after its retention");
            self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.record().id);
            let _ = std::fs::remove_dir_all(&job.dir);
        }
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Arc<Job>> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .with_context(|| format!("no job {id:?}; `openbox jobs` lists them"))
    }

    /// The jobs, oldest first.
    pub fn list(&self) -> Vec<JobInfo> {
        self.sweep();
        let mut all: Vec<JobInfo> = self.all().iter().map(|j| j.info()).collect();
        all.sort_by(|a, b| (a.started, &a.id).cmp(&(b.started, &b.id)));
        all
    }

    /// Starts `run` as a job on its node and follows it; returns once the node has it.
    /// With `terminal` (or `-i`: 24×80), in a terminal of that size: its output is the
    /// terminal's, and its screen is kept (see [`Jobs::screen`]).
    pub async fn start(
        self: &Arc<Self>,
        d: &Arc<Daemon>,
        run: RunRequest,
        stdin: bool,
        terminal: Option<TerminalSize>,
    ) -> anyhow::Result<JobInfo> {
        if !run.forwards.is_empty() {
            bail!("a job runs without forwards (leave out -L and -R)");
        }
        let terminal = terminal.or_else(|| run.tty.as_ref().map(|_| DEFAULT_TERMINAL));
        if let Some(t) = terminal {
            TerminalSize::check(t.rows.into(), t.cols.into()).map_err(anyhow::Error::msg)?;
        }
        let term = run.tty.as_ref().map_or("xterm-256color", |t| t.term.as_str());
        let pty = terminal.map(|t| PtySpec { term: term.to_owned(), cols: t.cols.into(), rows: t.rows.into() });
        // Keys go to a terminal's stdin.
        let stdin = stdin || terminal.is_some();
        if run.command.is_empty() {
            bail!("no command given: openbox -t TAG --detach CMD [ARGS…]");
        }
        let acct = d.account()?;
        let id = trust::token::random_id()[..10].to_owned();
        let (session, own_session) = match &run.session {
            Some(s) => (s.clone(), false),
            None => (format!("job-{id}"), true),
        };
        let command = run.command.join(" ");
        // In a session of its own, the job's `exit` ends the job, not the session's shell.
        let line = if own_session { format!("(\n{command}\n)") } else { command.clone() };
        let want = Want { target: &run.target, session: Some(&session), isolation: &run.isolation };
        let what = What { command: Some(&line), pty: pty.as_ref(), subsystem: None };
        let op = JobOp::new(&id, JobAct::Start { stdin }).value();
        let timeout = run.timeout_secs.map(|t| proto::exec::timeout_value(t.0));
        let mut env = vec![(proto::exec::JOB_ENV, op.as_str())];
        if let Some(t) = &timeout {
            env.push((proto::exec::TIMEOUT_ENV, t.as_str()));
        }
        let starting = async {
            let (node, started) = crate::connect::start(d, &acct, want, what, &env).await?;
            let mut said = crate::io::Held::default();
            let status = started.finish(NoInput, &mut HeldOutput(&mut said), std::future::pending()).await?;
            anyhow::Ok((node, status, said))
        };
        let (node, status, said) = tokio::time::timeout(Duration::from_secs(60), starting)
            .await
            .context("the node did not take the job within 60s")??;
        if status.exit_code() != 0 {
            let why = String::from_utf8_lossy(&said.stderr);
            let why = why.trim().trim_start_matches("openbox agent: ");
            bail!("node {} did not start the job: {why}", node.name);
        }
        let dir = self.dir.join(&id);
        let record = Record {
            id: id.clone(),
            node: node.name.clone(),
            node_id: node.id,
            session,
            own_session,
            command,
            isolation: run.isolation.clone(),
            started: proto::time::now(),
            stdin,
            terminal,
            user: acct.login.user.clone(),
            state: State::Running,
            exit_code: None,
            ended: None,
            error: None,
        };
        let job = Arc::new(new_job(&dir, record)?);
        job.update(|_| {}); // written down before anything else may happen to it
        self.table.lock().unwrap_or_else(|e| e.into_inner()).insert(id, job.clone());
        tokio::spawn(follow(d.clone(), job.clone()));
        Ok(job.info())
    }

    /// At most `max` bytes of each stream from the offsets given.
    pub fn read(&self, id: &str, stdout: u64, stderr: u64, max: usize) -> anyhow::Result<JobRead> {
        use base64::Engine as _;
        let job = self.get(id)?;
        let (out, err, more) = {
            let s = job.streams.lock().unwrap_or_else(|e| e.into_inner());
            let (out, err) = (s.0.read(stdout, max)?, s.1.read(stderr, max)?);
            let more = out.next < s.0.len() || err.next < s.1.len();
            (out, err, more)
        };
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        Ok(JobRead {
            job: job.info(),
            stdout: b64(&out.bytes),
            stderr: b64(&err.bytes),
            stdout_from: out.from,
            stderr_from: err.from,
            stdout_next: out.next,
            stderr_next: err.next,
            more,
        })
    }

    /// Waits until the job ends, at most `timeout`.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> anyhow::Result<JobInfo> {
        let job = self.get(id)?;
        let mut changed = job.changed.subscribe();
        let ended = async {
            while !job.ended() {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, ended).await;
            }
            None => ended.await,
        }
        Ok(job.info())
    }

    /// Stops the job on its node, and waits (a moment) until it has ended.
    pub async fn stop(&self, d: &Daemon, id: &str) -> anyhow::Result<JobInfo> {
        let job = self.get(id)?;
        if job.ended() {
            return Ok(job.info());
        }
        on_node(d, &job, JobAct::Stop, NoInput).await?;
        self.wait(id, Some(Duration::from_secs(10))).await
    }

    /// Sends `input` to the job's stdin; with `close`, its end closes the job's stdin.
    pub async fn send(&self, d: &Daemon, id: &str, input: CallInput, close: bool) -> anyhow::Result<JobInfo> {
        let job = self.get(id)?;
        if job.ended() {
            bail!("job {id} has ended");
        }
        if !job.record().stdin {
            bail!("job {id} was started without stdin: start it with --stdin (MCP: `stdin: true`) to send it input");
        }
        if close && job.record().terminal.is_some() {
            bail!(
                "a terminal job's input is its keyboard and stays open: send Ctrl-D (\\x04) to end a program's input"
            );
        }
        on_node(d, &job, JobAct::Input { close }, input).await?;
        Ok(job.info())
    }

    /// A job's terminal screen: from its node while it runs, else as it was at its end.
    pub async fn screen(&self, d: &Daemon, id: &str) -> anyhow::Result<Screen> {
        let job = self.get(id)?;
        if job.record().terminal.is_none() {
            bail!("job {id} runs without a terminal: start it with a terminal (MCP: `terminal`; CLI: -i --detach)");
        }
        if !job.ended() {
            return screen_on_node(d, &job).await;
        }
        let text = std::fs::read(job.dir.join(LAST_SCREEN))
            .with_context(|| format!("job {id} ended before its last screen could be kept"))?;
        Ok(serde_json::from_slice(&text)?)
    }

    /// Forgets an ended job: its output here and on the node goes.
    pub async fn forget(&self, d: &Daemon, id: &str) -> anyhow::Result<()> {
        let job = self.get(id)?;
        if !job.ended() {
            bail!("job {id} is still running: stop it first (openbox job stop {id})");
        }
        // The node may have dropped it already (a job is forgotten there once followed to
        // its end); a node out of reach deletes it itself after a week.
        let _ = tokio::time::timeout(Duration::from_secs(10), on_node(d, &job, JobAct::Forget, NoInput)).await;
        self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        std::fs::remove_dir_all(&job.dir).with_context(|| format!("removing {}", job.dir.display()))?;
        Ok(())
    }

    /// Writes the job's output so far to the call's stdout and stderr — with `follow`, then
    /// what comes until it ends. A dropped stretch is marked where it was. Returns the
    /// exit code the call ends with: the job's, once followed to its end.
    pub async fn logs(&self, id: &str, follow: bool, out: &mut CallOutput) -> anyhow::Result<u8> {
        use net::ssh::Output as _;
        let job = self.get(id)?;
        let mut changed = job.changed.subscribe();
        let (mut at_out, mut at_err) = (0u64, 0u64);
        loop {
            let ended = job.ended();
            loop {
                let (o, e) = {
                    let s = job.streams.lock().unwrap_or_else(|e| e.into_inner());
                    (s.0.read(at_out, 256 << 10)?, s.1.read(at_err, 256 << 10)?)
                };
                if o.bytes.is_empty() && e.bytes.is_empty() && o.from == at_out && e.from == at_err {
                    break;
                }
                for (piece, at, stderr) in [(&o, &mut at_out, false), (&e, &mut at_err, true)] {
                    let mut text = Vec::new();
                    if piece.from > *at {
                        text.extend_from_slice(format!("\n[… {} bytes dropped …]\n", piece.from - *at).as_bytes());
                    }
                    text.extend_from_slice(&piece.bytes);
                    if !text.is_empty() {
                        if stderr { out.stderr(&text).await? } else { out.stdout(&text).await? }
                    }
                    *at = piece.next;
                }
            }
            if !follow || ended {
                break;
            }
            if changed.changed().await.is_err() {
                break;
            }
        }
        let r = job.record();
        Ok(match (follow, r.state) {
            (false, _) => 0,
            (true, State::Exited) => r.exit_code.unwrap_or(0),
            (true, _) => proto::EXIT_OPENBOX_FAILURE,
        })
    }
}

fn new_job(dir: &Path, record: Record) -> anyhow::Result<Job> {
    paths::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let streams = (Spool::open(dir, "stdout")?, Spool::open(dir, "stderr")?);
    Ok(Job {
        dir: dir.to_owned(),
        record: Mutex::new(record),
        streams: Mutex::new(streams),
        changed: watch::channel(0).0,
    })
}

fn load(dir: &Path) -> anyhow::Result<Job> {
    let text = std::fs::read(dir.join("job.json"))?;
    let record: Record = serde_json::from_slice(&text)?;
    new_job(dir, record)
}

/// Keeps a terminal job's last screen here (the node forgets it with the job); before its
/// end is recorded, so that whoever saw it end finds the screen.
async fn keep_last_screen(d: &Daemon, job: &Job) {
    let id = job.record().id;
    match tokio::time::timeout(Duration::from_secs(10), screen_on_node(d, job)).await {
        Ok(Ok(screen)) => {
            let text = serde_json::to_vec(&screen).expect("serializable");
            if let Err(e) = paths::write_private(&job.dir.join(LAST_SCREEN), &text) {
                tracing::warn!(job = %id, error = %e, "could not keep a job's last screen");
            }
        }
        Ok(Err(e)) => tracing::info!(job = %id, error = %format!("{e:#}"), "no last screen for a job"),
        Err(_) => tracing::info!(job = %id, "no last screen for a job: its node did not answer"),
    }
}

/// The job's screen as its node sees it now.
async fn screen_on_node(d: &Daemon, job: &Job) -> anyhow::Result<Screen> {
    let answer = on_node(d, job, JobAct::Screen, NoInput).await?;
    serde_json::from_slice(&answer).context("the node's answer for the job's screen")
}

/// Asks the job's node to do `act` to it, with `input` as the channel's data; what the
/// node answered on stdout.
async fn on_node(d: &Daemon, job: &Job, act: JobAct, input: impl net::ssh::Input) -> anyhow::Result<Vec<u8>> {
    let started = job_channel(d, job, act).await?;
    let mut said = crate::io::Held::default();
    let status = started.finish(input, &mut HeldOutput(&mut said), std::future::pending()).await?;
    if status.exit_code() != 0 {
        let why = String::from_utf8_lossy(&said.stderr);
        bail!("{}", why.trim().trim_start_matches("openbox agent: "));
    }
    Ok(said.stdout)
}

/// A channel to the job's node asking `act` of it (the job subsystem, in its session).
async fn job_channel(d: &Daemon, job: &Job, act: JobAct) -> anyhow::Result<net::ssh::Started> {
    let acct = account_of(d, job)?;
    let (target, session, isolation) = job.want();
    let want = Want { target: &target, session: Some(&session), isolation: &isolation };
    let what = What { command: None, pty: None, subsystem: Some(proto::exec::JOB_SUBSYSTEM) };
    let value = JobOp::new(&job.record().id, act).value();
    let (_, started) = crate::connect::start(d, &acct, want, what, &[(proto::exec::JOB_ENV, &value)]).await?;
    Ok(started)
}

/// Reads the job's output from its node into the spool until it ends, reaching the node
/// again whenever the connection goes (openboxd's own restarts included: each start
/// follows on from what the spool holds). Then the node forgets it, and its own session
/// goes.
async fn follow(d: Arc<Daemon>, job: Arc<Job>) {
    let mut wait = Duration::from_secs(1);
    while !job.ended() {
        match follow_once(&d, &job).await {
            Ok(()) => break,
            Err(e) => {
                let why = format!("{e:#}");
                tracing::info!(job = %job.record().id, error = %why, "a job's node is out of reach; trying again");
                if job.record().error.as_deref() != Some(why.as_str()) {
                    job.update(|r| r.error = Some(why));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
    let r = job.record();
    let _ = tokio::time::timeout(Duration::from_secs(10), on_node(&d, &job, JobAct::Forget, NoInput)).await;
    if r.own_session {
        let _ = tokio::time::timeout(Duration::from_secs(10), crate::commands::session_remove(&d, &r.session)).await;
    }
}

/// One connection's worth of following: `Ok` once the job ended (and its record says how).
async fn follow_once(d: &Daemon, job: &Arc<Job>) -> anyhow::Result<()> {
    let (out, err) = job.lens();
    let started = job_channel(d, job, JobAct::Read { stdout: out, stderr: err }).await?;
    let mut output = FollowOutput { job: job.clone(), said: None };
    // A connection lost under it is an error: the next try reads on from where this stopped.
    let status = started.finish(NoInput, &mut output, std::future::pending()).await?;
    let code = status.exit_code();
    let said = output.said.as_deref().map(|s| s.trim().trim_start_matches("openbox agent: "));
    match (&status, said) {
        // The node no longer has it (its agent restarted under it).
        (ExitStatus::Code(255), Some(said)) if said.starts_with(proto::exec::JOB_LOST) => {
            let why = said.trim_start_matches(proto::exec::JOB_LOST).to_owned();
            job.update(|r| {
                r.state = State::Lost;
                r.error = Some(why);
                r.ended = Some(proto::time::now());
            });
        }
        // Any other refusal (a certificate that lapsed meanwhile, …): asked again later.
        (ExitStatus::Code(255), Some(said)) => bail!("node {}: {said}", job.record().node),
        _ => {
            if job.record().terminal.is_some() {
                keep_last_screen(d, job).await;
            }
            job.update(|r| {
                r.state = State::Exited;
                r.exit_code = Some(code);
                r.error = None;
                r.ended = Some(proto::time::now());
            });
        }
    }
    Ok(())
}

/// Where the node's output of a job goes: its spool. The agent's own word (a line starting
/// `openbox agent: `, when it cannot serve the job) is kept apart.
struct FollowOutput {
    job: Arc<Job>,
    said: Option<String>,
}

impl net::ssh::Output for FollowOutput {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.job.append(false, data)
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.starts_with(b"openbox agent: ") {
            self.said = Some(String::from_utf8_lossy(data).into_owned());
            return Ok(());
        }
        self.job.append(true, data)
    }
}

/// The account the job's node is reached with: the current login's, when it is the job's
/// user (after logging in as someone else, that user's jobs wait for them).
fn account_of(d: &Daemon, job: &Job) -> anyhow::Result<Arc<crate::account::Account>> {
    let acct = d.account()?;
    let user = job.record().user;
    if acct.login.user != user {
        bail!("job {} is {user}'s; log in as {user} to reach it", job.record().id);
    }
    Ok(acct)
}

/// Output kept whole, for the few bytes the node says to a job request.
struct HeldOutput<'a>(&'a mut crate::io::Held);

impl net::ssh::Output for HeldOutput<'_> {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.stdout.extend_from_slice(data);
        Ok(())
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.stderr.extend_from_slice(data);
        Ok(())
    }
}

/// `openbox --detach`: the id on stdout (for scripts), how to go on on stderr.
pub fn started(info: &JobInfo) -> crate::commands::Reply {
    let mut reply = crate::commands::Reply::new(crate::commands::to_json(info), info.id.clone());
    reply.warnings.push(format!(
        "job {} started on {}; `openbox job logs -f {}` follows it, `openbox job wait {}` waits for it",
        info.id, info.node, info.id, info.id
    ));
    reply
}

/// One job in a line: id, node, state (and exit code), age, command.
fn line(j: &JobInfo) -> String {
    let state = match (j.state.as_str(), j.exit_code, &j.error) {
        ("exited", Some(code), _) => format!("exit {code}"),
        ("running", _, Some(_)) => "unreachable".to_owned(),
        (state, _, _) => state.to_owned(),
    };
    let age = proto::time::ago(proto::time::now(), Some(j.started));
    format!("{:<10}  {:<14} {:<11} {:>9}  {}", j.id, j.node, state, age, j.command)
}

/// `openbox jobs`
pub fn listed(jobs: &[JobInfo]) -> crate::commands::Reply {
    let text = if jobs.is_empty() {
        "No jobs. Start one with `openbox -t TAG --detach CMD`.".to_owned()
    } else {
        let mut t = format!("{:<10}  {:<14} {:<11} {:>9}  COMMAND\n", "ID", "NODE", "STATE", "STARTED");
        for j in jobs {
            t += &line(j);
            t.push('\n');
        }
        t
    };
    crate::commands::Reply::new(crate::commands::to_json(&jobs), text)
}

/// A job after something was done to it.
/// `openbox job screen ID`: the screen's lines as they show.
pub fn screened(screen: &Screen) -> crate::commands::Reply {
    let text = screen.lines.join("\n");
    crate::commands::Reply::new(crate::commands::to_json(screen), text.trim_end_matches('\n').to_owned())
}

pub fn described(info: &JobInfo) -> crate::commands::Reply {
    crate::commands::Reply::new(crate::commands::to_json(info), line(info))
}

/// `openbox job logs [-f] ID`: exits with the job's code when followed to its end.
pub async fn logs_command(d: &Daemon, id: &str, follow: bool, out: &mut CallOutput) -> u8 {
    let done = match d.jobs() {
        Ok(jobs) => jobs.logs(id, follow, out).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(code) => code,
        Err(e) => {
            out.eprint(&format!("openbox: {e:#}\n")).await;
            crate::COMMAND_FAILED
        }
    }
}

/// `openbox job wait ID [--timeout DUR]`: exits with the job's code, 124 when it still
/// runs at the timeout, 255 when it was lost.
pub async fn wait_command(d: &Daemon, id: &str, timeout: Option<Seconds>, json: bool, out: &mut CallOutput) -> u8 {
    let done = match d.jobs() {
        Ok(jobs) => jobs.wait(id, timeout.map(|t| t.0)).await,
        Err(e) => Err(e),
    };
    let info = match done {
        Ok(info) => info,
        Err(e) => {
            out.eprint(&format!("openbox: {e:#}\n")).await;
            return crate::COMMAND_FAILED;
        }
    };
    if json {
        out.print(&format!("{}\n", serde_json::to_string_pretty(&info).unwrap_or_default())).await;
    }
    match (info.state.as_str(), info.exit_code) {
        ("exited", Some(code)) => code,
        ("running", _) => {
            out.eprint(&format!("openbox: job {id} still runs after {}\n", timeout.unwrap_or_default())).await;
            crate::run::TIMED_OUT
        }
        _ => {
            let why = info.error.as_deref().unwrap_or("its node no longer has it");
            out.eprint(&format!("openbox: job {id} was lost: {why}\n")).await;
            proto::EXIT_OPENBOX_FAILURE
        }
    }
}
