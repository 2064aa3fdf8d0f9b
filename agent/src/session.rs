//! Persistent shells, one per (user, session id): `cd` and `export` in one command are seen
//! by the next. The shell reads commands from a pipe; each command is followed by a
//! marker line carrying a fresh random nonce and the exit status, on stdout (and a marker
//! on stderr), so output streams live and the status is exact. Output that imitates a
//! marker cannot know the nonce. Commands on one session run one at a time, in order.
//!
//! Under isolation the shell is the first process of the session's container (Docker or
//! nspawn), so the same framing works there and the container lives as long as the shell.

use std::collections::HashMap;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use proto::Isolation;
use proto::api::SessionReport;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::channel::{ChannelOut, Outcome};
use crate::docker::SessionContainer;
use crate::procs;
use crate::runtimes::Runtimes;

type Key = (String, String);

/// Why a session's previous shell is gone; told to the next caller.
#[derive(Clone, Debug)]
enum Ended {
    Exited(i32),
    Reaped(Duration),
    Removed,
}

struct Shell {
    stdin: Pin<Box<dyn AsyncWrite + Send>>,
    stdout: Pin<Box<dyn AsyncRead + Send>>,
    stderr: Pin<Box<dyn AsyncRead + Send>>,
    host: ShellHost,
}

/// What the shell runs in.
enum ShellHost {
    /// A process here: the shell itself, or (`nspawn`) the container whose pid 1 it is.
    Process { child: Child, pid: u32, nspawn: bool },
    /// A container on the Docker engine whose pid 1 is the shell.
    Container(SessionContainer),
}

impl ShellHost {
    /// Stops the command running in the shell, keeping the shell.
    async fn interrupt(&self) {
        match self {
            ShellHost::Process { pid, nspawn: false, .. } => interrupt(*pid),
            ShellHost::Process { pid, nspawn: true, .. } => {
                if let Some(init) = procs::container_init(*pid) {
                    interrupt(init);
                }
            }
            ShellHost::Container(c) => c.interrupt().await,
        }
    }

    /// Passes the caller's signal to what the session's command started (not the shell).
    async fn signal(&self, sig: Signal) {
        let kill_below = |pid: u32| procs::descendants(pid).into_iter().for_each(|p| procs::signal(p, sig));
        match self {
            ShellHost::Process { pid, nspawn: false, .. } => kill_below(*pid),
            ShellHost::Process { pid, nspawn: true, .. } => {
                if let Some(init) = procs::container_init(*pid) {
                    kill_below(init);
                }
            }
            ShellHost::Container(c) => {
                if let Some(name) = crate::signals::signal_name(sig) {
                    c.signal(name).await;
                }
            }
        }
    }

    /// Ends the shell and whatever it runs in.
    async fn stop(&mut self) {
        match self {
            ShellHost::Process { child, pid, nspawn } => {
                if *nspawn && let Some(init) = procs::container_init(*pid) {
                    procs::signal(init, Signal::KILL); // takes the whole container down
                }
                if let Some(p) = Pid::from_raw(*pid as i32) {
                    let _ = kill_process_group(p, Signal::KILL);
                }
                let _ = child.wait().await;
            }
            ShellHost::Container(c) => c.stop().await,
        }
    }

    /// The exit status of a shell that has ended; its container is removed.
    async fn exit_code(&mut self) -> i32 {
        match self {
            ShellHost::Process { child, .. } => match child.wait().await {
                Ok(st) => st.code().unwrap_or(255),
                Err(_) => 255,
            },
            ShellHost::Container(c) => {
                let code = c.engine.exit_code(&c.id).await.unwrap_or(255);
                c.stop().await;
                code.clamp(0, 255) as i32
            }
        }
    }
}

#[derive(Default)]
struct Slot {
    shell: Option<Shell>,
    /// What the shell runs under.
    isolation: Isolation,
    ended: Option<Ended>,
    created: u64,
    last_used: u64,
    /// Monotonic time of last use, for reaping.
    idle_since: Option<Instant>,
}

/// One command for a session.
pub struct Job<'a> {
    pub command: &'a str,
    /// What a shell started for it runs under; must match the session's.
    pub isolation: &'a Isolation,
    pub runtimes: &'a Runtimes,
    /// Environment for a shell started for it.
    pub env: &'a [(&'a str, &'a str)],
    pub timeout: Option<Duration>,
}

/// All sessions on this node.
pub struct Sessions {
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Sessions that ended since the last heartbeat, with why.
    ended_reports: Mutex<Vec<SessionReport>>,
    idle_limit: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn nonce() -> String {
    trust::token::random_id()
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Finds `marker` in a byte stream fed in pieces, holding back bytes that might be the
/// start of it.
struct Scanner {
    marker: Vec<u8>,
    held: Vec<u8>,
}

impl Scanner {
    fn new(marker: String) -> Scanner {
        Scanner { marker: marker.into_bytes(), held: Vec::new() }
    }

    /// Returns the bytes that are certainly output, and what follows the marker if it was
    /// found.
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        self.held.extend_from_slice(data);
        if let Some(pos) = self.held.windows(self.marker.len()).position(|w| w == self.marker.as_slice()) {
            let after = self.held.split_off(pos + self.marker.len());
            self.held.truncate(pos);
            return (std::mem::take(&mut self.held), Some(after));
        }
        // Keep the longest tail that is a prefix of the marker.
        let keep = (1..self.marker.len().min(self.held.len() + 1))
            .rev()
            .find(|&n| self.held.ends_with(&self.marker[..n]))
            .unwrap_or(0);
        let emit = self.held.drain(..self.held.len() - keep).collect();
        (emit, None)
    }
}

/// Stops the command running in the shell `pid`: tells the shell to abandon the rest of it
/// (SIGUSR1 first, so nothing after a killed process runs), then kills what it started.
fn interrupt(pid: u32) {
    procs::signal(pid, Signal::USR1);
    procs::kill_descendants(pid);
}

impl Sessions {
    pub fn new(idle_limit: Duration) -> Arc<Sessions> {
        Arc::new(Sessions { slots: Mutex::default(), ended_reports: Mutex::default(), idle_limit })
    }

    fn slot(&self, key: &Key) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }

    fn report_end(&self, key: &Key, state: &str, slot: &Slot) {
        self.ended_reports.lock().unwrap_or_else(|e| e.into_inner()).push(SessionReport {
            user: key.0.clone(),
            id: key.1.clone(),
            state: state.into(),
            last_used: slot.last_used,
        });
    }

    /// What the heartbeat tells the control plane: live shells, and ends since last time.
    pub async fn reports(&self) -> Vec<SessionReport> {
        let mut out: Vec<SessionReport> =
            std::mem::take(&mut *self.ended_reports.lock().unwrap_or_else(|e| e.into_inner()));
        let slots: Vec<(Key, Arc<tokio::sync::Mutex<Slot>>)> =
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, slot) in slots {
            // A busy session is in use right now.
            let (live, last_used) = match slot.try_lock() {
                Ok(s) => (s.shell.is_some(), s.last_used),
                Err(_) => (true, unix_now()),
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
                if s.shell.is_some() && s.idle_since.is_some_and(|t| t.elapsed() >= self.idle_limit) {
                    if let Some(mut shell) = s.shell.take() {
                        stop_shell(&mut shell).await;
                    }
                    s.ended = Some(Ended::Reaped(self.idle_limit));
                    tracing::info!(user = %key.0, session = %key.1, "session reaped after idling");
                    self.report_end(&key, "reaped", &s);
                }
            }
        }
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

    /// Ends a session's shell (`openbox session rm`).
    pub async fn remove(&self, user: &str, id: &str) -> bool {
        let key = (user.to_owned(), id.to_owned());
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
        let mut input = crate::channel::messages(input);
        let Job { command, isolation, runtimes, env, timeout } = job;
        let key = (user.to_owned(), id.to_owned());
        let slot = self.slot(&key);
        let mut s = slot.lock().await; // one command at a time, in arrival order
        if s.shell.is_some() && s.isolation != *isolation {
            let why = format!(
                "session {id} runs {}, not {isolation}; nothing was run (end it with `openbox session rm {id}`)",
                s.isolation
            );
            return out.refuse(&why).await;
        }
        if s.shell.is_none() {
            if let Some(why) = s.ended.take() {
                let why = match why {
                    Ended::Exited(code) => format!("its shell had exited (status {code})"),
                    Ended::Reaped(after) => format!("it was reaped after {}s idle", after.as_secs()),
                    Ended::Removed => "it had been removed".to_owned(),
                };
                out.stderr(format!("openbox: session {id}: {why}; started a new shell\n").as_bytes()).await;
            }
            match spawn_shell(isolation, runtimes, env, id).await {
                Ok(shell) => {
                    s.shell = Some(shell);
                    s.isolation = isolation.clone();
                    s.created = unix_now();
                }
                Err(e) => {
                    return out.refuse(&format!("cannot start a shell for session {id}: {e}; nothing was run")).await;
                }
            }
        }
        s.last_used = unix_now();
        s.idle_since = None;
        let shell = s.shell.as_mut().expect("just ensured");
        let outcome = run_framed(shell, command, timeout, out, &mut input).await;
        s.last_used = unix_now();
        s.idle_since = Some(Instant::now());
        let outcome = match outcome {
            Framed::Done(code) => Outcome::Code(code),
            Framed::TimedOut(after) => {
                out.stderr(
                    format!("openbox: timed out after {}s; the session is still there\n", after.as_secs()).as_bytes(),
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
                        255
                    }
                };
                out.stderr(
                    format!(
                        "openbox: session {id}: the shell exited (status {code}); the next command starts a new one\n"
                    )
                    .as_bytes(),
                )
                .await;
                s.ended = Some(Ended::Exited(code));
                self.report_end(&key, "exited", &s);
                Outcome::Code(code as u32)
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
                s.ended = Some(Ended::Exited(255));
                self.report_end(&key, "exited", &s);
                Outcome::Code(if timed_out.is_some() { 124 } else { 255 })
            }
        };
        drop(s);
        out.finish(outcome).await;
    }
}

/// Starts the session's shell under `isolation`.
async fn spawn_shell(
    isolation: &Isolation,
    runtimes: &Runtimes,
    env: &[(&str, &str)],
    id: &str,
) -> Result<Shell, String> {
    let (mut cmd, nspawn) = match isolation {
        Isolation::Native => {
            let mut cmd = Command::new("/bin/sh");
            if let Some(home) = std::env::var_os("HOME") {
                cmd.current_dir(home);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            (cmd, false)
        }
        Isolation::Nspawn { dir, limits } => {
            crate::nspawn::check_tree(dir)?;
            (crate::nspawn::command(dir, limits, env, &["/bin/sh"]), true)
        }
        Isolation::Docker { image, limits } => {
            let engine = runtimes.docker()?;
            let spec = crate::docker::Spec { image, limits, env, session: Some(id) };
            let (container, io) = SessionContainer::start(&engine, spec).await?;
            return Ok(Shell {
                stdin: io.stdin,
                stdout: Box::pin(io.stdout),
                stderr: Box::pin(io.stderr),
                host: ShellHost::Container(container),
            });
        }
    };
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    Ok(Shell {
        stdin: Box::pin(child.stdin.take().expect("piped")),
        stdout: Box::pin(child.stdout.take().expect("piped")),
        stderr: Box::pin(child.stderr.take().expect("piped")),
        host: ShellHost::Process { pid: child.id().unwrap_or(0), child, nspawn },
    })
}

async fn stop_shell(shell: &mut Shell) {
    shell.host.stop().await;
}

enum Framed {
    Done(u32),
    TimedOut(Duration),
    /// No end markers came after an interrupt (the timeout, if that was why).
    Unresponsive(Option<Duration>),
    ShellEnded,
}

/// Sends one command to the shell and streams its output until both markers arrive.
async fn run_framed(
    shell: &mut Shell,
    command: &str,
    timeout: Option<Duration>,
    out: &ChannelOut,
    input: &mut crate::channel::Messages,
) -> Framed {
    let n = nonce();
    // The command runs in a function of the session's own shell, so `cd` and `export`
    // stay. `command eval` keeps the shell alive through a syntax error; stdin is
    // /dev/null so a command cannot swallow the lines that follow it. SIGUSR1 makes the
    // function return, which stops what is left of the command — even a loop of builtins
    // — without losing the shell. That trap is armed and disarmed inside the function:
    // outside it, `return` would end the shell, so there USR1 does nothing (`:`).
    let script = format!(
        "trap : USR1\n__openbox_run() {{ trap 'return 124' USR1; command eval {} </dev/null\n__obx=$?; trap : USR1; return $__obx\n}}\n__openbox_run; __obx=$?\nprintf 'OBX:{n}:%d\\n' \"$__obx\"\nprintf 'OBX:{n}\\n' >&2\n",
        quote(command)
    );
    if shell.stdin.write_all(script.as_bytes()).await.is_err() {
        return Framed::ShellEnded;
    }
    let mut out_scan = Scanner::new(format!("OBX:{n}:"));
    let mut err_scan = Scanner::new(format!("OBX:{n}\n"));
    let (mut status_text, mut code, mut err_done) = (None::<Vec<u8>>, None::<u32>, false);
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = None;
    let mut caller_gone = false;
    // After an interrupt the markers must come soon; a shell that sends none (its output
    // redirected away by `exec >…`, say) is given up on.
    let mut give_up_at = None;
    let grace = Duration::from_secs(5);
    while code.is_none() || !err_done {
        tokio::select! {
            _ = async { tokio::time::sleep_until(give_up_at.expect("guarded")).await }, if give_up_at.is_some() => {
                return Framed::Unresponsive(timed_out);
            },
            r = shell.stdout.read(&mut out_buf), if code.is_none() => match r {
                Ok(0) | Err(_) => return Framed::ShellEnded,
                Ok(k) => {
                    if let Some(text) = status_text.as_mut() {
                        text.extend_from_slice(&out_buf[..k]);
                    } else {
                        let (emit, after) = out_scan.feed(&out_buf[..k]);
                        if !emit.is_empty() && !caller_gone {
                            out.stdout(&emit).await;
                        }
                        status_text = after;
                    }
                    if let Some(text) = &status_text
                        && let Some(end) = text.iter().position(|b| *b == b'\n')
                    {
                        code = std::str::from_utf8(&text[..end]).ok().and_then(|t| t.parse().ok()).or(Some(255));
                    }
                }
            },
            r = shell.stderr.read(&mut err_buf), if !err_done => match r {
                Ok(0) | Err(_) => return Framed::ShellEnded,
                Ok(k) => {
                    let (emit, after) = err_scan.feed(&err_buf[..k]);
                    if !emit.is_empty() && !caller_gone {
                        out.stderr(&emit).await;
                    }
                    err_done = after.is_some();
                }
            },
            msg = input.recv(), if !caller_gone => match msg {
                Some(russh::ChannelMsg::Close) | None => {
                    // Nobody waits for this command any more: stop it, keep the shell.
                    caller_gone = true;
                    shell.host.interrupt().await;
                    give_up_at.get_or_insert(tokio::time::Instant::now() + grace);
                }
                Some(russh::ChannelMsg::Signal { signal }) => {
                    if let Some(sig) = crate::signals::to_signal(&signal) {
                        shell.host.signal(sig).await;
                    }
                }
                Some(_) => {}
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && timed_out.is_none() => {
                timed_out = timeout;
                shell.host.interrupt().await;
                give_up_at.get_or_insert(tokio::time::Instant::now() + grace);
            },
        }
    }
    match timed_out {
        Some(after) => Framed::TimedOut(after),
        None => Framed::Done(code.expect("loop ends with a code")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_finds_a_marker_split_across_reads_and_holds_back_only_a_possible_prefix() {
        let mut s = Scanner::new("OBX:ab:".into());
        assert_eq!(s.feed(b"hello OB"), (b"hello ".to_vec(), None));
        assert_eq!(s.feed(b"X:a"), (Vec::new(), None));
        assert_eq!(s.feed(b"b:0\n"), (Vec::new(), Some(b"0\n".to_vec())));
        let mut s = Scanner::new("OBX:ab:".into());
        assert_eq!(s.feed(b"OBX:zz:1\nmore"), (b"OBX:zz:1\nmore".to_vec(), None));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("echo 'a'"), r"'echo '\''a'\'''");
    }
}
