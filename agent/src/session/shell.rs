//! A session's shell and what it runs in: a process here, an nspawn container whose pid 1
//! it is, or a Docker container whose pid 1 it is. Starting it, stopping the command it
//! runs (keeping the shell), passing signals on, and ending it.

use std::pin::Pin;
use std::process::Stdio;

use proto::Isolation;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Child;

use crate::docker::SessionContainer;
use crate::procs;
use crate::run_as::Login;
use crate::runtimes::{RuntimeError, Runtimes, Sandbox};

/// A session's shell: the pipes it reads commands from and writes output to, and what it
/// runs in.
pub struct Shell {
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    pub host: ShellHost,
}

/// What the shell runs in.
pub enum ShellHost {
    /// A process here: the shell itself, or (`nspawn`) the container whose pid 1 it is;
    /// `root` is the process whose root is the shell's filesystem.
    Process { child: Child, pid: u32, nspawn: bool, root: Option<procs::Proc> },
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
            ShellHost::Process { child, pid, nspawn, .. } => {
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
    pub async fn exit_code(&mut self) -> i32 {
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

/// Stops the command running in the shell `pid`: tells the shell to abandon the rest of it
/// (SIGUSR1 first, so nothing after a killed process runs), then kills what it started.
pub fn interrupt(pid: u32) {
    procs::signal(pid, Signal::USR1);
    procs::kill_descendants(pid);
}

/// Starts the session's shell under `isolation`.
pub async fn spawn_shell(
    sandbox: &Sandbox,
    runtimes: &Runtimes,
    env: &[(&str, &str)],
    login: Option<&Login>,
    id: &str,
) -> Result<Shell, RuntimeError> {
    let hold = sandbox.hold;
    let (mut cmd, nspawn) = match &sandbox.isolation {
        Isolation::Native => (crate::exec::native_shell(env, login), false),
        Isolation::Nspawn { dir, limits } => (crate::nspawn::command(dir, limits, hold, env, &["/bin/sh"]), true),
        Isolation::Docker { image, limits } => {
            let engine = runtimes.docker()?;
            let spec = crate::docker::Spec { image, limits, hold, env, session: Some(id), login, tty: None };
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
    let mut child = cmd.spawn().map_err(RuntimeError::Spawn)?;
    let pid = child.id().unwrap_or(0);
    let mut shell = Shell {
        stdin: Box::pin(child.stdin.take().expect("piped")),
        stdout: Box::pin(child.stdout.take().expect("piped")),
        stderr: Box::pin(child.stderr.take().expect("piped")),
        host: ShellHost::Process { pid, child, nspawn, root: if nspawn { None } else { procs::Proc::now(pid) } },
    };
    if nspawn {
        // The container's first process has its final root once its shell reads commands.
        let root =
            if shell_answers(&mut shell).await { procs::container_init(pid).and_then(procs::Proc::now) } else { None };
        if let ShellHost::Process { root: r, .. } = &mut shell.host {
            *r = root;
        }
    }
    Ok(shell)
}

/// Whether the shell answers a no-op: then it runs, in the root it will run commands in.
async fn shell_answers(shell: &mut Shell) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let marker = format!("OBX-ready-{}", trust::token::random_id());
    if shell.stdin.write_all(format!("echo {marker}\n").as_bytes()).await.is_err() {
        return false;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match shell.stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => seen.extend_from_slice(&buf[..k]),
            }
            if seen.ends_with(format!("{marker}\n").as_bytes()) {
                return true;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read).await.unwrap_or(false)
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
