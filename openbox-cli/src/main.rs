//! `openbox`: the one command people and scripts type. It parses and validates the command
//! line, then hands the work to openboxd over its socket (or to the control-plane or agent
//! binary). It has no async runtime and no SSH: it must start in about a millisecond.

mod args;
mod daemon;

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
