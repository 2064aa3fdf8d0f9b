//! A session's shell and what it runs in: a process here, an nspawn container whose pid 1
//! it is, or a Docker container whose pid 1 it is. Starting it, stopping the command it
//! runs (keeping the shell), passing signals on, and ending it.
//!
//! A shell on this host talks to the agent through named pipes of its own, so it can
//! outlive an agent that dies (a crash, a kill, out of memory) and be taken up again by
//! the agent's next start, its directory and variables intact ([`take_up`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Child;

use crate::docker::SessionContainer;
use crate::procs;
use crate::run_as::Login;
use crate::runtimes::{Runtime, RuntimeError, Sandbox};

/// A session's shell: the pipes it reads commands from and writes output to, and what it
/// runs in.
pub struct Shell {
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    pub host: ShellHost,
    /// The named pipes of a shell on this host (none for a Docker session's).
    fifos: Option<Fifos>,
}

impl Shell {
    /// What the agent's next start needs to take this shell up again, if it can be.
    pub fn kept(&self) -> Option<Kept> {
        match (&self.host, &self.fifos) {
            (ShellHost::Process { process: Some(process), nspawn, root, .. }, Some(fifos)) => Some(Kept {
                process: process.to_string(),
                nspawn: *nspawn,
                root: root.map(|r| r.to_string()),
                dir: fifos.dir.clone(),
            }),
            _ => None,
        }
    }
}

impl Kept {
    /// Whether its pipes are where this agent keeps shells' pipes (anything else in the
    /// file is not taken up, nor removed).
    pub fn is_under(&self, shells: &Path) -> bool {
        self.dir.parent() == Some(shells)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }
}

/// A shell on this host as the agent writes it down, to take it up after a restart.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    /// The shell's process (systemd-nspawn's, for an nspawn session), as `PID:STARTED`.
    process: String,
    nspawn: bool,
    /// The container's first process, for an nspawn session.
    root: Option<String>,
    /// Where its named pipes are.
    dir: PathBuf,
}

/// What the shell runs in.
pub enum ShellHost {
    /// A process here: the shell itself, or (`nspawn`) the container whose pid 1 it is;
    /// `root` is the process whose root is the shell's filesystem. `child` is none for a
    /// shell taken up after a restart: another process is its parent now.
    Process { child: Option<Child>, pid: u32, process: Option<procs::Proc>, nspawn: bool, root: Option<procs::Proc> },
    /// A container on the Docker engine whose pid 1 is the shell.
    Container(SessionContainer),
}

impl ShellHost {
    /// The process whose root is the shell's filesystem (the shell, or the container's
    /// first process), when it is on this host.
    pub fn root_pid(&self) -> Option<procs::Proc> {
        match self {
            ShellHost::Process { root, .. } => *root,
            ShellHost::Container(c) => c.pid,
        }
    }

    /// Stops the command running in the shell, keeping the shell.
    pub async fn interrupt(&self) {
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
    pub async fn signal(&self, sig: Signal) {
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
    pub async fn stop(&mut self) {
        match self {
            ShellHost::Process { child, pid, process, nspawn, .. } => {
                if child.is_none() && !process.is_some_and(|p| p.is_running()) {
                    return; // taken up, and gone since: its pid may be another's now
                }
                if *nspawn && let Some(init) = procs::container_init(*pid) {
                    procs::signal(init, Signal::KILL); // takes the whole container down
                }
                if let Some(p) = Pid::from_raw(*pid as i32) {
                    let _ = kill_process_group(p, Signal::KILL);
                }
                match child {
                    Some(child) => drop(child.wait().await),
                    None => gone(process.as_ref()).await,
                }
            }
            ShellHost::Container(c) => c.stop().await,
        }
    }

    /// The exit status of a shell that has ended (none when it cannot be known: a shell
    /// taken up after a restart is not the agent's child); its container is removed.
    pub async fn exit_code(&mut self) -> Option<i32> {
        match self {
            ShellHost::Process { child: Some(child), .. } => match child.wait().await {
                Ok(st) => Some(st.code().unwrap_or(255)),
                Err(_) => Some(255),
            },
            ShellHost::Process { child: None, process, .. } => {
                gone(process.as_ref()).await;
                None
            }
            ShellHost::Container(c) => {
                let code = c.engine.exit_code(&c.id).await.unwrap_or(255);
                c.stop().await;
                Some(code.clamp(0, 255) as i32)
            }
        }
    }
}

/// Waits for a process that is not the agent's child to end (there is nothing to wait on
/// but its /proc entry).
async fn gone(process: Option<&procs::Proc>) {
    let Some(process) = process else { return };
    while process.is_running() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the command running in the shell `pid`: tells the shell to abandon the rest of it
/// (SIGUSR1 first, so nothing after a killed process runs), then kills what it started.
pub fn interrupt(pid: u32) {
    procs::signal(pid, Signal::USR1);
    procs::kill_descendants(pid);
}

/// Starts the session's shell in `sandbox`; a shell on this host gets its named pipes in a
/// directory of its own under `shells`.
pub async fn spawn_shell(
    sandbox: &Sandbox,
    env: &[(&str, &str)],
    login: Option<&Login>,
    id: &str,
    shells: &Path,
) -> Result<Shell, RuntimeError> {
    let hold = sandbox.hold;
    let (mut cmd, nspawn) = match &sandbox.runtime {
        Runtime::Native => (crate::exec::native_shell(env, login), false),
        Runtime::Nspawn { dir, limits } => (crate::nspawn::command(dir, limits, hold, env, &["/bin/sh"]), true),
        Runtime::Docker { engine, image, limits } => {
            let spec = crate::docker::Spec { image, limits, hold, env, session: Some(id), login, tty: None };
            let (container, io) = SessionContainer::start(engine, spec).await?;
            return Ok(Shell {
                stdin: io.stdin,
                stdout: Box::pin(io.stdout),
                stderr: Box::pin(io.stderr),
                host: ShellHost::Container(container),
                fifos: None,
            });
        }
    };
    let fifos = Fifos::make(shells).map_err(RuntimeError::Spawn)?;
    let [stdin, stdout, stderr] = fifos.shell_ends().map_err(RuntimeError::Spawn)?;
    cmd.stdin(Stdio::from(stdin)).stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
    cmd.process_group(0).kill_on_drop(true);
    let child = cmd.spawn().map_err(RuntimeError::Spawn)?;
    drop(cmd); // its copies of the shell's ends
    let pid = child.id().unwrap_or(0);
    let (stdin, stdout, stderr) = fifos.agent_ends().map_err(RuntimeError::Spawn)?;
    let mut shell = Shell {
        stdin: Box::pin(stdin),
        stdout: Box::pin(stdout),
        stderr: Box::pin(stderr),
        host: ShellHost::Process {
            pid,
            child: Some(child),
            process: procs::Proc::now(pid),
            nspawn,
            root: if nspawn { None } else { procs::Proc::now(pid) },
        },
        fifos: Some(fifos),
    };
    if nspawn {
        // The container's first process has its final root once its shell reads commands.
        let root = if answers(&mut shell, Duration::from_secs(30)).await {
            procs::container_init(pid).and_then(procs::Proc::now)
        } else {
            None
        };
        if let ShellHost::Process { root: r, .. } = &mut shell.host {
            *r = root;
        }
    }
    Ok(shell)
}

/// Why a shell an earlier run left was not taken up.
#[derive(Debug, thiserror::Error)]
pub enum NotTakenUp {
    #[error("it had ended")]
    Ended,
    #[error("its pipes cannot be opened: {0}")]
    Pipes(std::io::Error),
    #[error("it did not answer")]
    Silent,
    #[error("its record is not understood: {0}")]
    Record(String),
}

/// Takes up a shell that an earlier run of the agent left (it died with the shell alive):
/// stops whatever command that run left in it, and makes sure it answers, with nothing
/// of the old command's output left in its pipes.
pub async fn take_up(kept: &Kept) -> Result<Shell, NotTakenUp> {
    let parse = |text: &str| text.parse::<procs::Proc>().map_err(NotTakenUp::Record);
    let process = parse(&kept.process)?;
    let root = kept.root.as_deref().map(parse).transpose()?;
    let fifos = Fifos { dir: kept.dir.clone() };
    if !process.is_running() || root.is_some_and(|r| !r.is_running()) {
        return Err(NotTakenUp::Ended);
    }
    let (stdin, stdout, stderr) = fifos.agent_ends().map_err(NotTakenUp::Pipes)?;
    let root = if kept.nspawn { root } else { Some(process) };
    let host = ShellHost::Process { child: None, pid: process.pid, process: Some(process), nspawn: kept.nspawn, root };
    let mut shell =
        Shell { stdin: Box::pin(stdin), stdout: Box::pin(stdout), stderr: Box::pin(stderr), host, fifos: Some(fifos) };
    shell.host.interrupt().await;
    if !answers(&mut shell, Duration::from_secs(5)).await {
        shell.host.stop().await;
        return Err(NotTakenUp::Silent);
    }
    Ok(shell)
}

/// Whether the shell answers a no-op on both its outputs within `limit`: then it runs
/// (in the root it will run commands in), and everything it wrote before has been read.
async fn answers(shell: &mut Shell, limit: Duration) -> bool {
    use tokio::io::AsyncWriteExt as _;
    let marker = format!("OBX-ready-{}\n", trust::token::random_id());
    let command = format!("echo {m}\necho {m} >&2\n", m = marker.trim_end());
    let answered = async {
        // Read while writing: a shell blocked on full pipes reads nothing until drained.
        let (written, out, err) = tokio::join!(
            shell.stdin.write_all(command.as_bytes()),
            read_to_marker(&mut shell.stdout, &marker),
            read_to_marker(&mut shell.stderr, &marker)
        );
        written.is_ok() && out && err
    };
    tokio::time::timeout(limit, answered).await.unwrap_or(false)
}

/// Reads `stream` up to `marker`; `false` if it ends first.
async fn read_to_marker(stream: &mut Pin<Box<dyn AsyncRead + Send>>, marker: &str) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut scanner = super::framing::Scanner::new(marker.to_owned());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(k) if scanner.feed(&buf[..k]).1.is_some() => return true,
            Ok(_) => {}
        }
    }
}

/// The named pipes of a shell on this host: `in`, `out` and `err` in a directory of its
/// own. The shell holds each open for reading and writing, so it never sees the end of
/// its input, nor a broken pipe, when the agent is gone; the agent opens its own ends,
/// again after a restart. The directory goes with this value — unless the agent dies
/// first, which is when it is needed.
struct Fifos {
    dir: PathBuf,
}

impl Fifos {
    const NAMES: [&str; 3] = ["in", "out", "err"];

    fn make(shells: &Path) -> std::io::Result<Fifos> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(shells)?;
        let dir = shells.join(trust::token::random_id());
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let fifos = Fifos { dir };
        for name in Self::NAMES {
            make_fifo(&fifos.dir.join(name))?;
        }
        Ok(fifos)
    }

    fn open(&self, name: &str, flags: rustix::fs::OFlags) -> std::io::Result<OwnedFd> {
        use rustix::fs::OFlags;
        Ok(rustix::fs::open(
            self.dir.join(name),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?)
    }

    /// The shell's stdin, stdout and stderr.
    fn shell_ends(&self) -> std::io::Result<[OwnedFd; 3]> {
        let rw = rustix::fs::OFlags::RDWR;
        Ok([self.open("in", rw)?, self.open("out", rw)?, self.open("err", rw)?])
    }

    /// The agent's ends: it writes `in` and reads `out` and `err`. Fails when nothing
    /// holds `in` open to read (the shell is gone).
    fn agent_ends(
        &self,
    ) -> std::io::Result<(
        tokio::net::unix::pipe::Sender,
        tokio::net::unix::pipe::Receiver,
        tokio::net::unix::pipe::Receiver,
    )> {
        use rustix::fs::OFlags;
        use tokio::net::unix::pipe::{Receiver, Sender};
        let read = OFlags::RDONLY | OFlags::NONBLOCK;
        Ok((
            Sender::from_owned_fd(self.open("in", OFlags::WRONLY | OFlags::NONBLOCK)?)?,
            Receiver::from_owned_fd(self.open("out", read)?)?,
            Receiver::from_owned_fd(self.open("err", read)?)?,
        ))
    }
}

/// A FIFO at `path` that only this user may open.
#[cfg(target_os = "linux")]
fn make_fifo(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{FileType, Mode};
    Ok(rustix::fs::mknodat(rustix::fs::CWD, path, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)?)
}

/// A FIFO at `path` that only this user may open.
#[cfg(not(target_os = "linux"))]
fn make_fifo(path: &Path) -> std::io::Result<()> {
    use nix::sys::stat::Mode;
    Ok(nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)?)
}

impl Drop for Fifos {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a shell's pipes");
        }
    }
}

/// A command that joins the nspawn container whose first process is `init` (its
/// namespaces, root and working directory) to run `command`, else a login shell.
/// It starts in a fresh environment (returned beside it, for a terminal): nsenter passes
/// its own on, and the agent's must not reach the container.
pub fn enter_nspawn(
    init: u32,
    command: Option<&str>,
    env: &[(&str, &str)],
) -> (tokio::process::Command, Vec<(&'static str, std::ffi::OsString)>) {
    let fresh: Vec<(&'static str, std::ffi::OsString)> =
        vec![("PATH", crate::run_as::ROOT_PATH.into()), ("HOME", "/root".into()), ("USER", "root".into())];
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.env_clear().envs(fresh.iter().cloned());
    let target = init.to_string();
    cmd.args(["--target", &target, "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd"]);
    // A container with a user namespace of its own (a confined user's) is entered as its
    // root, which is an unprivileged user outside: never as the host's root.
    if own_user_namespace(init) {
        cmd.arg("--user");
    }
    cmd.arg("--");
    match command {
        Some(command) => cmd.args(["/bin/sh", "-c", command]),
        None => cmd.args(["/bin/sh", "-l"]),
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd, fresh)
}

/// Whether process `pid` lives in a user namespace other than the agent's (or cannot be
/// told, which is taken as yes: entering it then fails rather than running as root).
fn own_user_namespace(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    match (ns(&pid.to_string()), ns("self")) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => true,
    }
}

pub async fn stop_shell(shell: &mut Shell) {
    shell.host.stop().await;
}
