//! Carries out a [`Plan`]: starts what it names — a command or a login shell, natively or
//! in a container, in a terminal or not, alone or in a session's shell — or serves SFTP,
//! or ends a session. Nothing is decided here any more; `plan` has decided it.

use trust::UserGrant;

use crate::channel::{ChannelOut, Outcome};
use crate::exec;
use crate::plan::{Plan, Run};
use crate::runtimes::Runtime;
use crate::session::{Files, Job, Sessions};

/// What launching reads of the node beside the plan.
pub struct Context<'a> {
    pub sessions: &'a std::sync::Arc<Sessions>,
    pub node_id: &'a str,
}

/// Starts what `plan` says for a channel of `grant`'s connection, and returns when it has
/// ended and the caller has been told how.
pub async fn launch(plan: Plan, grant: &UserGrant, cx: Context<'_>, read: russh::ChannelReadHalf, out: ChannelOut) {
    match plan {
        Plan::EndSession { session } => {
            let had = cx.sessions.remove(&grant.user, &session).await;
            tracing::info!(user = %grant.user, %session, had_shell = had, "session ended");
            out.finish(Outcome::Code(0)).await;
        }
        Plan::Sftp { login, into, timeout } => {
            tracing::info!(user = %grant.user, key_id = %grant.key_id, session = ?grant.session, "sftp");
            let Some((session, sandbox)) = into else {
                return start_sftp(None, login.as_ref(), timeout, read, out).await;
            };
            let job = Job {
                command: "",
                isolation: &grant.isolation,
                sandbox: &sandbox,
                owner: grant.incarnation.as_deref(),
                env: &[],
                timeout,
                login: login.as_ref(),
            };
            let login = login.as_ref();
            let serve = |files, out: ChannelOut| async move {
                match files {
                    Files::Host => start_sftp(None, login, timeout, read, out).await,
                    // A container's files are its root's: the server serves them as that root.
                    Files::Root(_) if login.is_some_and(|l| l.uid != 0) => {
                        out.refuse(
                            "file transfer into a container runs as its root, which this node does not map you to",
                        )
                        .await;
                    }
                    Files::Root(pid) => start_sftp(Some(pid), None, timeout, read, out).await,
                }
            };
            cx.sessions.visit(&grant.user, &session, job, out, serve).await;
        }
        Plan::Job { session, op } => {
            let owner = grant.incarnation.as_deref();
            cx.sessions.job_op(&grant.user, owner, &session, op, read, out).await;
        }
        Plan::Run(run) => start(run, grant, cx, read, out).await,
    }
}

/// Runs a command or a login shell.
async fn start(run: Run, grant: &UserGrant, cx: Context<'_>, read: russh::ChannelReadHalf, out: ChannelOut) {
    let Run { command, terminal, session, sandbox, login, timeout, detach } = run;
    // The command itself may hold secrets (a token in a curl header): only its size and a
    // short hash at info, the text at debug.
    let text = command.as_deref().unwrap_or_default();
    let command_hash = &trust::token::hash(text)[..16];
    let isolation = &grant.isolation;
    tracing::info!(user = %grant.user, key_id = %grant.key_id, session = ?session, %isolation, terminal = terminal.is_some(), shell = command.is_none(), command_bytes = text.len(), %command_hash, "exec");
    tracing::debug!(command = %telemetry::untrusted(text), "exec");
    let env = [(proto::exec::USER_ENV, grant.user.as_str()), (proto::exec::NODE_ENV, cx.node_id)];
    let (hold, login) = (sandbox.hold, login.as_ref());
    let job = |command| Job {
        command,
        isolation,
        sandbox: &sandbox,
        owner: grant.incarnation.as_deref(),
        env: &env,
        timeout,
        login,
    };
    if let (Some(session), Some((id, stdin)), Some(command)) = (&session, &detach, &command) {
        let start = crate::session::JobStart { id, stdin: *stdin, terminal };
        let owner = grant.incarnation.as_deref();
        let job = Job { command, isolation, sandbox: &sandbox, owner, env: &env, timeout, login };
        return cx.sessions.start_job(&grant.user, session, start, job, out).await;
    }
    if let Some(pty) = terminal {
        if let Some(session) = &session {
            // An empty command: a login shell.
            let job = job(command.as_deref().unwrap_or_default());
            return cx.sessions.terminal(&grant.user, session, job, &pty, read, out).await;
        }
        if let Runtime::Docker { engine, image, limits } = &sandbox.runtime {
            let spec =
                crate::docker::Spec { image, limits, hold, env: &env, session: None, login, tty: Some(&pty.term) };
            let size = (pty.cols, pty.rows);
            return crate::docker::run_in_terminal(engine, spec, command.as_deref(), size, timeout, read, out).await;
        }
        let spawn = in_terminal(command.as_deref(), &sandbox, &env, login);
        return crate::pty::run(spawn, &pty, timeout, read, out).await;
    }
    let Some(command) = command else { return }; // a shell is planned only with a terminal
    if let Some(session) = &session {
        return cx.sessions.run(&grant.user, session, job(&command), &out, read).await;
    }
    match &sandbox.runtime {
        Runtime::Native => exec::run_native(&command, &env, login, hold, timeout, read, out).await,
        Runtime::Nspawn { dir, limits } => {
            let argv = crate::nspawn::one_shot_argv(&command, hold.process_limit());
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let cmd = crate::nspawn::command(dir, limits, hold, &env, &argv);
            exec::run_process(cmd, crate::procs::Tree::Nspawn, None, timeout, read, out).await;
        }
        Runtime::Docker { engine, image, limits } => {
            let spec = crate::docker::Spec { image, limits, hold, env: &env, session: None, login, tty: None };
            crate::docker::run_once(engine, spec, &command, timeout, read, out).await;
        }
    }
}

/// What runs `command` (or the login shell) in a terminal of its own, natively or in an
/// nspawn container (a Docker engine makes the terminal itself).
fn in_terminal<'a>(
    command: Option<&str>,
    sandbox: &crate::runtimes::Sandbox,
    env: &[(&str, &str)],
    login: Option<&'a crate::run_as::Login>,
) -> crate::pty::Spawn<'a> {
    match &sandbox.runtime {
        Runtime::Nspawn { dir, limits } => {
            let argv: Vec<String> = match command {
                Some(command) => crate::nspawn::one_shot_argv(command, sandbox.hold.process_limit()),
                None => vec!["/bin/sh".into(), "-l".into()],
            };
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let cmd = crate::nspawn::command_in_terminal(dir, limits, sandbox.hold, env, &argv);
            // Mapped accounts other than root were refused nspawn by the plan.
            // nspawn passes the container only what --setenv gives.
            crate::pty::Spawn {
                cmd,
                env: crate::pty::Env::Inherit,
                arg0: None,
                login: None,
                tree: crate::procs::Tree::Nspawn,
            }
        }
        Runtime::Docker { .. } => unreachable!("a Docker engine makes its own terminal"),
        Runtime::Native => {
            let (cmd, arg0) = match command {
                Some(command) => {
                    let mut cmd = exec::native_shell(env, login);
                    cmd.arg("-c").arg(command);
                    (cmd, None)
                }
                None => {
                    // A login shell, as sshd starts one: its name with a leading dash.
                    let shell = crate::pty::login_shell(login);
                    let name = shell.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    (exec::native_command(&shell, env, login), Some(format!("-{name}").into()))
                }
            };
            crate::pty::Spawn { cmd, env: crate::pty::Env::Inherit, arg0, login, tree: crate::procs::Tree::Group }
        }
    }
}

/// Starts the agent's SFTP server for the channel: as `login`, over the node's files, or
/// (as root) over the filesystem of the process `root`'s container.
async fn start_sftp(
    root: Option<crate::procs::Proc>,
    login: Option<&crate::run_as::Login>,
    timeout: Option<std::time::Duration>,
    read: russh::ChannelReadHalf,
    out: ChannelOut,
) {
    if root.is_none() && login.is_none() {
        return crate::sftp::serve_in_agent(read, out).await;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return out.refuse(&format!("cannot find the agent's own binary for SFTP: {e}")).await,
    };
    let mut cmd = exec::native_command(&exe, &[], login);
    cmd.arg(crate::sftp::SERVER_ARG);
    if let Some(shell) = root {
        cmd.arg(shell.to_string());
    }
    exec::run_process(cmd, crate::procs::Tree::Group, None, timeout, read, out).await;
}
