//! `openbox`: the one command people and scripts type. It parses and validates the command
//! line, then hands the work to openboxd over its socket (or to the control-plane or agent
//! binary). It has no async runtime and no SSH: it must start in about a millisecond.

mod args;
mod daemon;
mod prompt;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

use proto::request::{CALL_ENV, Call, Request};

fn main() -> ExitCode {
    match args::Cli::from_argv(std::env::args_os().collect()).into_action() {
        Ok(args::Action::Call { request, json, no_daemon }) => {
            // Stopping the fleet never starts a daemon just to do it.
            let no_daemon = no_daemon || (matches!(request, Request::Down) && !daemon_running());
            let call = Call { request, json };
            if no_daemon || std::env::var_os("OPENBOX_NO_DAEMON").is_some_and(|v| !v.is_empty() && v != "0") {
                let text = serde_json::to_string(&call).expect("requests serialize");
                return exec(Command::new(paths::sibling_binary("openboxd")).env(CALL_ENV, text), "openboxd");
            }
            match daemon::call(&call) {
                Ok(code) => ExitCode::from(code),
                Err(msg) => {
                    eprintln!("openbox: {msg}");
                    ExitCode::from(proto::EXIT_OPENBOX_FAILURE)
                }
            }
        }
        Ok(args::Action::Dashboard { json, no_open }) => dashboard(json, no_open),
        Ok(args::Action::StopDaemon { json }) => {
            if !daemon_running() {
                println!("{}", if json { r#"{"stopping":false}"# } else { "openboxd is not running." });
                return ExitCode::SUCCESS;
            }
            match daemon::call(&Call { request: Request::DaemonStop, json }) {
                Ok(code) => ExitCode::from(code),
                Err(msg) => {
                    eprintln!("openbox: {msg}");
                    ExitCode::from(proto::EXIT_OPENBOX_FAILURE)
                }
            }
        }
        Ok(args::Action::Exec(binary, rest)) => {
            exec(Command::new(paths::sibling_binary(binary)).args::<_, OsString>(rest), binary)
        }
        Err(msg) => {
            eprintln!("openbox: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Prints a one-time dashboard link from openboxd and opens it in the browser.
fn dashboard(json: bool, no_open: bool) -> ExitCode {
    let (code, out) = match daemon::call_capturing(&Call { request: Request::Dashboard, json: true }) {
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

/// Whether an openboxd answers on the socket.
fn daemon_running() -> bool {
    std::os::unix::net::UnixStream::connect(paths::daemon_socket()).is_ok()
}

/// Replaces this process with `cmd`; returns only if that fails.
fn exec(cmd: &mut Command, what: &str) -> ExitCode {
    let err = cmd.exec();
    eprintln!("openbox: cannot start {what} ({err}); it is installed next to `openbox` — reinstall openbox");
    ExitCode::from(proto::EXIT_OPENBOX_FAILURE)
}
