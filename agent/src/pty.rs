//! Commands in a pseudo-terminal, for `openbox -i`: the caller asked for a terminal
//! (`pty-req`) before its command, or before asking for a shell. The command — or the
//! account's login shell — runs as the session leader of a new pty on this host (an
//! nspawn container runs inside one, and passes it on to its own console), driven by the
//! same loop as any one-shot command; terminal output is all on stdout, as with ssh, and
//! the caller's window changes resize the pty.

use std::ffi::OsString;
use std::time::Duration;

use russh::{ChannelReadHalf, Sig};
use tokio::io::AsyncReadExt;
use tokio::process::Child;

use crate::channel::{ChannelOut, messages};
use crate::drive::{self, Process, Step};
use crate::procs::Tree;
use crate::run_as::Login;

/// What the caller's `pty-req` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtyRequest {
    /// The caller's `TERM`.
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

impl PtyRequest {
    fn size(&self) -> pty_process::Size {
        pty_process::Size::new(clamp(self.rows), clamp(self.cols))
    }
}

/// A terminal dimension as the kernel holds it.
fn clamp(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX).max(1)
}

/// The shell to start when the caller asked for one: the account's login shell.
pub fn login_shell(login: Option<&Login>) -> std::path::PathBuf {
    use uzers::os::unix::UserExt as _;
    let own = || uzers::get_user_by_uid(rustix::process::geteuid().as_raw()).map(|u| u.shell().to_path_buf());
    login
        .map(|l| l.shell.clone())
        .or_else(own)
        .filter(|s| s.is_absolute() && s.exists())
        .unwrap_or_else(|| "/bin/sh".into())
}

/// `cmd` (built for pipes) rebuilt to run in a pty, as `login` when given.
fn in_pty(cmd: &tokio::process::Command, spawn_env: &Env, login: Option<&Login>, term: &str) -> pty_process::Command {
    let std = cmd.as_std();
    let mut pcmd = pty_process::Command::new(std.get_program()).args(std.get_args());
    // `get_envs` below does not show a fresh start (`env_clear`) made on `cmd`.
    let fresh = match (spawn_env, login) {
        (Env::Fresh(vars), _) => Some(vars.clone()),
        (Env::Inherit, Some(login)) => Some(login.environment()),
        (Env::Inherit, None) => None,
    };
    if let Some(vars) = fresh {
        pcmd = pcmd.env_clear().envs(vars);
    }
    for (key, value) in std.get_envs() {
        pcmd = match value {
            Some(value) => pcmd.env(key, value),
            None => pcmd.env_remove(key),
        };
    }
    if let Some(dir) = std.get_current_dir() {
        pcmd = pcmd.current_dir(dir);
    }
    if let Some(login) = login {
        pcmd = pcmd.uid(login.uid).gid(login.gid);
    }
    pcmd.env("TERM", term).kill_on_drop(true)
}

/// The environment a terminal's program starts with, beside what `cmd` sets.
pub enum Env {
    /// The agent's (without its secrets), or the mapped account's fresh one.
    Inherit,
    /// Only these.
    Fresh(Vec<(&'static str, OsString)>),
}

/// What to start in a terminal: `sh -c CMD`, a login shell, or `systemd-nspawn …`.
pub struct Spawn<'a> {
    pub cmd: tokio::process::Command,
    pub env: Env,
    /// The name it is started under (`-bash` for a login shell).
    pub arg0: Option<OsString>,
    pub login: Option<&'a Login>,
    pub tree: Tree,
}

/// Starts `spawn` in a new pty of the requested size and drives it for the channel.
pub async fn run(
    spawn: Spawn<'_>,
    pty: &PtyRequest,
    timeout: Option<Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let input = messages(input, &out);
    match start(spawn, pty) {
        Ok((process, write)) => drive::run(process, write, timeout, input, out).await,
        Err(why) => out.refuse(&why).await,
    }
}

/// Starts `spawn` in a new pty of the requested size: the process, for the loop to drive,
/// and the pty's input.
pub fn start(spawn: Spawn<'_>, pty: &PtyRequest) -> Result<(InPty, pty_process::OwnedWritePty), String> {
    let Spawn { cmd, env, arg0, login, tree } = spawn;
    let spawned = (|| {
        let (master, pts) = pty_process::open()?;
        master.resize(pty.size())?;
        let mut pcmd = in_pty(&cmd, &env, login, &pty.term);
        if let Some(arg0) = arg0 {
            pcmd = pcmd.arg0(arg0);
        }
        let child = pcmd.spawn(pts)?;
        Ok::<_, pty_process::Error>((master, child))
    })();
    let (master, child) = spawned.map_err(|e| format!("cannot start a command in a terminal: {e}"))?;
    // A second handle on the terminal, to resize it while the write half feeds it.
    let resize = std::os::fd::AsFd::as_fd(&master)
        .try_clone_to_owned()
        .map_err(|e| format!("cannot start a command in a terminal: {e}"))?;
    let (read, write) = master.into_split();
    let pid = child.id().unwrap_or(0);
    let process = InPty {
        _noted: crate::leftovers::note(pid, tree),
        pid,
        child,
        tree,
        read,
        resize,
        buf: vec![0u8; 64 * 1024],
        open: true,
        status: None,
    };
    Ok((process, write))
}

/// A command in a pty as the loop drives it.
pub struct InPty {
    /// Written down while it runs, for the agent's next start should this one die.
    _noted: crate::leftovers::Noted,
    child: Child,
    pid: u32,
    tree: Tree,
    read: pty_process::OwnedReadPty,
    resize: std::os::fd::OwnedFd,
    buf: Vec<u8>,
    /// Until the pty says no process holds its terminal any more.
    open: bool,
    status: Option<std::io::Result<std::process::ExitStatus>>,
}

/// How long a terminal's shell gets to end on SIGHUP before SIGKILL.
const HANG_UP_GRACE: Duration = Duration::from_millis(300);

/// After the command exits, what it wrote last is still read; a background process that
/// keeps the terminal open does not hold the call past this.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

impl Process for InPty {
    async fn next(&mut self) -> Step<'_> {
        loop {
            if let Some(status) = self.status.take_if(|_| !self.open) {
                return Step::Ended(crate::exec::outcome(status));
            }
            let drain = async {
                match self.status {
                    Some(_) => tokio::time::sleep(DRAIN_AFTER_EXIT).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // EIO: the last process holding the terminal closed it.
                r = self.read.read(&mut self.buf), if self.open => match r {
                    Ok(0) | Err(_) => self.open = false,
                    Ok(n) => return Step::Stdout(&self.buf[..n]),
                },
                s = self.child.wait(), if self.status.is_none() => self.status = Some(s),
                () = drain => self.open = false,
            }
        }
    }

    async fn signal(&mut self, sig: &Sig) {
        if let Some(s) = crate::signals::to_signal(sig) {
            crate::procs::signal_tree(self.pid, self.tree, s);
        }
    }

    async fn stop(&mut self) {
        // As a terminal that hangs up (what sshd does): SIGHUP to everything the shell
        // started — its jobs run in process groups of their own — so that each can clean
        // up (a lock file, a temporary file) or, under nohup, carry on; then SIGKILL for the
        // shell's own group.
        if self.tree == Tree::Group {
            for p in crate::procs::descendants(self.pid) {
                crate::procs::signal(p, rustix::process::Signal::HUP);
            }
            crate::procs::signal_tree(self.pid, self.tree, rustix::process::Signal::HUP);
            let _ = tokio::time::timeout(HANG_UP_GRACE, self.child.wait()).await;
        }
        crate::procs::tear_down(self.pid, self.tree);
    }

    async fn resize(&mut self, cols: u32, rows: u32) {
        let size = rustix::termios::Winsize { ws_row: clamp(rows), ws_col: clamp(cols), ws_xpixel: 0, ws_ypixel: 0 };
        if let Err(e) = rustix::termios::tcsetwinsize(&self.resize, size) {
            tracing::debug!(error = %e, "could not resize a terminal");
        }
    }
}
