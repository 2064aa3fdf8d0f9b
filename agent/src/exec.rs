//! Runs one command for one SSH channel as a process here: `sh -c CMD` in its own process
//! group (or an nspawn container), driven by [`crate::drive`] — stdin fed from the
//! channel, stdout and stderr streamed back separately, and the exit status (or the
//! signal) reported last. If the caller goes away, the whole process group is killed.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use russh::{ChannelReadHalf, Sig};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::channel::{ChannelOut, Outcome, messages};
use crate::confine::Confinement;
use crate::drive::{self, Process, StatusError, Step};
use crate::procs::{Tree, signal_tree, tear_down};
use crate::run_as::Login;
use crate::signals;

/// Runs `command` natively on this host for the channel; returns when it has ended and its
/// status has been sent.
pub async fn run_native(
    command: &str,
    env: &[(&str, &str)],
    login: Option<&Login>,
    hold: Confinement,
    timeout: Option<std::time::Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let mut cmd = native_shell(env, login);
    cmd.arg("-c").arg(command);
    // A mapped account other than root is held to the process limit (see
    // `confine::limit_processes`), when the agent runs as root.
    let watch = login
        .filter(|l| l.uid != 0 && rustix::process::geteuid().is_root())
        .map(|l| ProcessWatch { uid: l.uid, max: hold.max_processes });
    run_process(cmd, Tree::Group, watch, timeout, input, out).await;
}

/// An account whose processes a limit counts: when a command run as it fails, the
/// caller is told if the count had reached the limit.
#[derive(Clone, Copy, Debug)]
pub struct ProcessWatch {
    pub uid: u32,
    pub max: u64,
}

impl ProcessWatch {
    /// The line to tell the caller, when the account's processes are at the limit.
    fn hint(&self) -> Option<Vec<u8>> {
        let near = self.max.saturating_sub(1).max(1);
        (crate::procs::count_of_user(self.uid) >= near)
            .then(|| format!("{}\n", crate::confine::process_limit_hint(self.max)).into_bytes())
    }
}

/// `/bin/sh` on this host, for a one-shot command or a session: in the home directory, with
/// `env`, none of the agent's own credentials, and as `login` when the node maps its user.
pub fn native_shell(env: &[(&str, &str)], login: Option<&Login>) -> Command {
    native_command("/bin/sh".as_ref(), env, login)
}

/// `program` on this host, set up as [`native_shell`] is.
pub fn native_command(program: &std::path::Path, env: &[(&str, &str)], login: Option<&Login>) -> Command {
    let mut cmd = Command::new(program);
    crate::hide_secrets(&mut cmd);
    if let Some(home) = std::env::var_os("HOME") {
        cmd.current_dir(home);
    }
    if let Some(login) = login {
        login.apply(&mut cmd);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a prepared command (`sh -c …`, or `systemd-nspawn …`) for the channel.
pub async fn run_process(
    mut cmd: Command,
    tree: Tree,
    watch: Option<ProcessWatch>,
    timeout: Option<std::time::Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let input = messages(input, &out);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let program = cmd.as_std().get_program().to_string_lossy().into_owned();
            return out.refuse(&format!("cannot start {program}: {e}")).await;
        }
    };
    let stdin = child.stdin.take().expect("piped");
    let pid = child.id().unwrap_or(0);
    let process = Spawned {
        _noted: crate::leftovers::note(pid, tree),
        // Kept from the start: once the spawned process has been waited for, `child.id()`
        // is gone, but what it left running (`server &`) must still be stoppable.
        pid,
        tree,
        stdout: child.stdout.take().expect("piped"),
        stderr: child.stderr.take().expect("piped"),
        child,
        out_buf: Vec::with_capacity(128 * 1024),
        err_buf: Vec::with_capacity(32 * 1024),
        out_open: true,
        err_open: true,
        status: None,
        watch,
        hint: Vec::new(),
        hint_pending: false,
    };
    drive::run(process, stdin, timeout, input, out).await;
}

/// A spawned command as the loop drives it: its two output pipes, and its exit status,
/// which is known only once both pipes have closed (what it left running may still write).
struct Spawned {
    /// Written down while it runs, for the agent's next start should this one die.
    _noted: crate::leftovers::Noted,
    child: Child,
    pid: u32,
    tree: Tree,
    stdout: ChildStdout,
    stderr: ChildStderr,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    out_open: bool,
    err_open: bool,
    status: Option<std::io::Result<ExitStatus>>,
    /// Counted when the command fails, while what it left running still runs.
    watch: Option<ProcessWatch>,
    /// The process-limit line, once it has been found to apply, and whether it is still
    /// to be sent.
    hint: Vec<u8>,
    hint_pending: bool,
}

impl Process for Spawned {
    async fn next(&mut self) -> Step<'_> {
        loop {
            if self.hint_pending {
                self.hint_pending = false;
                return Step::Stderr(&self.hint);
            }
            if !self.out_open
                && !self.err_open
                && let Some(status) = self.status.take()
            {
                return Step::Ended(outcome(status));
            }
            // Read into the buffers' spare room: nothing is zeroed first, and a command with
            // little output touches little memory.
            self.out_buf.clear();
            self.err_buf.clear();
            tokio::select! {
                r = self.stdout.read_buf(&mut self.out_buf), if self.out_open => match r {
                    Ok(0) | Err(_) => self.out_open = false,
                    Ok(_) => return Step::Stdout(&self.out_buf),
                },
                r = self.stderr.read_buf(&mut self.err_buf), if self.err_open => match r {
                    Ok(0) | Err(_) => self.err_open = false,
                    Ok(_) => return Step::Stderr(&self.err_buf),
                },
                s = self.child.wait(), if self.status.is_none() => {
                    let failed = s.as_ref().is_ok_and(|s| !s.success());
                    if failed
                        && let Some(watch) = self.watch.take()
                        && let Some(hint) = watch.hint()
                    {
                        (self.hint, self.hint_pending) = (hint, true);
                    }
                    self.status = Some(s);
                }
            }
        }
    }

    async fn signal(&mut self, sig: &Sig) {
        if let Some(s) = signals::to_signal(sig) {
            signal_tree(self.pid, self.tree, s);
        }
    }

    async fn stop(&mut self) {
        tear_down(self.pid, self.tree);
    }

    /// Nobody reads the rest of stdout: the command is ended, and its stdout no longer
    /// waited for.
    async fn stdout_lost(&mut self) {
        tear_down(self.pid, self.tree);
        self.out_open = false;
    }
}

/// How a command that has been waited for ended: its code, or the signal that killed it.
pub(crate) fn outcome(status: std::io::Result<ExitStatus>) -> Result<Outcome, StatusError> {
    let s = status.map_err(StatusError::Wait)?;
    Ok(match (s.code(), s.signal()) {
        (Some(c), _) => Outcome::Code(c as u32),
        (None, Some(sig)) => Outcome::Signal(signals::from_raw(sig), s.core_dumped()),
        (None, None) => Outcome::Code(255),
    })
}
