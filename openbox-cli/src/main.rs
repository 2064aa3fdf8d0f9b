//! `openbox`: the one command people and scripts type. It parses and validates the command
//! line, then hands the work to openboxd over its socket (or to the control-plane or agent
//! binary). It has no async runtime and no SSH: it must start in about a millisecond.

mod args;
mod context;
mod daemon;
mod manual;
mod prompt;
mod service;
mod terminal;

use std::ffi::OsString;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

use paths::Context;
use proto::request::{CALL_ENV, Call, Request};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if args::asks_version(&argv) {
        print!("{}", args::version());
        return ExitCode::SUCCESS;
    }
    let cli = args::Cli::from_argv(argv);
    let flag = cli.context.clone();
    let action = match cli.into_action() {
        Ok(action) => action,
        Err(msg) => return usage_error(&msg),
    };
    // The control plane, the agent and the machine's services are nobody's context.
    let action = match action {
        args::Action::Exec(binary @ ("openbox-control" | "openbox-agent"), rest) => {
            return exec(Command::new(paths::sibling_binary(binary)).args::<_, OsString>(rest), binary);
        }
        args::Action::Service { command, json } => return service::command(command, json),
        args::Action::Completions(shell) => return manual::completions(shell),
        args::Action::Man(dir) => return manual::man_pages(&dir),
        action => action,
    };
    let selected = match context::select(flag) {
        Ok(selected) => selected,
        Err(msg) => return usage_error(&msg),
    };
    match action {
        args::Action::Context { command, json } => context::command(command, &selected, json),
        args::Action::Complete(kind) => complete(kind, &selected.context),
        // A login is what makes a context: it may name one that does not exist yet.
        args::Action::Call { request: request @ Request::Login { .. }, json, verbosity, .. }
            if !selected.context.exists() =>
        {
            first_login(Call { request, json, verbosity }, &selected.context)
        }
        action => match selected.existing() {
            Ok(context) => act(action, context),
            Err(msg) => usage_error(&msg),
        },
    }
}

/// `openbox __complete KIND`: names for a shell's completion, one per line, at once: from
/// the running openboxd's copy of the fleet, never starting one; nothing when none runs.
fn complete(kind: args::CompleteKind, context: &Context) -> ExitCode {
    use proto::request::NameKind;
    let kind = match kind {
        args::CompleteKind::Contexts => {
            for c in paths::contexts() {
                println!("{}", c.name());
            }
            return ExitCode::SUCCESS;
        }
        args::CompleteKind::Nodes => NameKind::Nodes,
        args::CompleteKind::Tags => NameKind::Tags,
        args::CompleteKind::Sessions => NameKind::Sessions,
    };
    if !context.exists() {
        return ExitCode::SUCCESS;
    }
    let call = Call { request: Request::Names { kind }, json: false, verbosity: 0 };
    ExitCode::from(daemon::call_if_running(&call, context).unwrap_or(0))
}

/// A command line that cannot be carried out as written: exit 2, as for clap's own.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("openbox: {msg}");
    ExitCode::from(2)
}

/// Carries out `action` in `context`, which exists.
fn act(action: args::Action, context: &Context) -> ExitCode {
    match action {
        args::Action::Call { request, json, no_daemon, verbosity } => {
            // Stopping the fleet never starts a daemon just to do it.
            let no_daemon = no_daemon || (matches!(request, Request::Down) && !daemon_running(context));
            let call = Call { request, json, verbosity };
            if no_daemon || std::env::var_os("OPENBOX_NO_DAEMON").is_some_and(|v| !v.is_empty() && v != "0") {
                return exec(&mut direct(&call, context), "openboxd");
            }
            if matches!(&call.request, Request::Run(r) if r.tty.is_some()) {
                let _kept = terminal::Kept::now();
                let resizes = terminal::resizes().ok();
                return through_daemon(daemon::call_in_terminal(&call, context, resizes.as_ref().map(|r| r.as_fd())));
            }
            through_daemon(daemon::call(&call, context))
        }
        args::Action::Dashboard { json, no_open } => dashboard(json, no_open, context),
        args::Action::StopDaemon { json } => {
            if !daemon_running(context) {
                println!("{}", if json { r#"{"stopping":false}"# } else { "openboxd is not running." });
                return ExitCode::SUCCESS;
            }
            through_daemon(daemon::call(&Call { request: Request::DaemonStop, json, verbosity: 0 }, context))
        }
        args::Action::Exec(binary, rest) => exec(
            Command::new(paths::sibling_binary(binary))
                .args::<_, OsString>(rest)
                .env(paths::CONTEXT_ENV, context.name()),
            binary,
        ),
        args::Action::Context { .. }
        | args::Action::Service { .. }
        | args::Action::Completions(_)
        | args::Action::Complete(_)
        | args::Action::Man(_) => unreachable!("handled before a context is chosen"),
    }
}

fn through_daemon(answer: Result<u8, String>) -> ExitCode {
    match answer {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("openbox: {msg}");
            ExitCode::from(proto::EXIT_OPENBOX_FAILURE)
        }
    }
}

/// openboxd carrying out `call` itself, in `context`, without a daemon.
fn direct(call: &Call, context: &Context) -> Command {
    let text = serde_json::to_string(call).expect("requests serialize");
    let mut cmd = Command::new(paths::sibling_binary("openboxd"));
    cmd.env(CALL_ENV, text).env(paths::CONTEXT_ENV, context.name());
    cmd
}

/// The login that makes a new context runs without a daemon (none is started for a
/// context that may never come to be); when it fails, what it left is removed, so a
/// mistyped URL or token leaves no context behind.
fn first_login(call: Call, context: &Context) -> ExitCode {
    let code = match direct(&call, context).status() {
        Ok(status) => status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(proto::EXIT_OPENBOX_FAILURE),
        Err(e) => {
            eprintln!("openbox: cannot start openboxd ({e}); it is installed next to `openbox` — reinstall openbox");
            proto::EXIT_OPENBOX_FAILURE
        }
    };
    if code != 0
        && let Err(msg) = context::remove_files(context)
    {
        eprintln!("openbox: {msg}");
    }
    ExitCode::from(code)
}

/// Prints a one-time dashboard link from openboxd and opens it in the browser.
fn dashboard(json: bool, no_open: bool, context: &Context) -> ExitCode {
    let (code, out) =
        match daemon::call_capturing(&Call { request: Request::Dashboard, json: true, verbosity: 0 }, context) {
            Ok(answer) => answer,
            Err(msg) => {
                eprintln!("openbox: {msg}");
                return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
            }
        };
    let link = serde_json::from_slice::<proto::api::WebLink>(&out).ok().filter(|_| code == 0);
    let Some(link) = link else {
        // openboxd said what went wrong on stderr already.
        return ExitCode::from(code.max(1));
    };
    if json {
        println!("{}", String::from_utf8_lossy(&out).trim_end());
    } else {
        println!("{link}");
    }
    if !no_open && let Err(why) = open_in_browser(&link.url) {
        eprintln!("openbox: could not open a browser ({why}); open the link yourself");
    }
    ExitCode::SUCCESS
}

/// Hands `url` to the desktop's opener, without waiting for the browser.
fn open_in_browser(url: &str) -> Result<(), String> {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    if cfg!(target_os = "linux")
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        return Err("no graphical session here".into());
    }
    Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("{opener}: {e}"))
}

/// Whether the context's openboxd answers on its socket.
fn daemon_running(context: &Context) -> bool {
    std::os::unix::net::UnixStream::connect(context.daemon_socket()).is_ok()
}

/// Replaces this process with `cmd`; returns only if that fails.
fn exec(cmd: &mut Command, what: &str) -> ExitCode {
    let err = cmd.exec();
    eprintln!("openbox: cannot start {what} ({err}); it is installed next to `openbox` — reinstall openbox");
    ExitCode::from(proto::EXIT_OPENBOX_FAILURE)
}
