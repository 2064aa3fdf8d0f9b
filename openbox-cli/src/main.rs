//! `openbox`: the one command people and scripts type. It parses and validates the command
//! line, then hands the work to openboxd (or to the control-plane or agent binary). It has
//! no async runtime and no SSH: it must start in about a millisecond.

mod args;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser as _;
use proto::request::{CALL_ENV, Call};

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match cli.into_action() {
        Ok(args::Action::Call { request, json }) => {
            let call = serde_json::to_string(&Call { request, json }).expect("requests serialize");
            exec(
                Command::new(sibling("openboxd")).env(CALL_ENV, call),
                "openboxd",
            )
        }
        Ok(args::Action::Exec(binary, rest)) => exec(
            Command::new(sibling(binary)).args::<_, OsString>(rest),
            binary,
        ),
        Err(msg) => {
            eprintln!("openbox: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Replaces this process with `cmd`; returns only if that fails.
fn exec(cmd: &mut Command, what: &str) -> ExitCode {
    let err = cmd.exec();
    eprintln!(
        "openbox: cannot start {what} ({err}); it is installed next to `openbox` — reinstall openbox"
    );
    ExitCode::from(proto::EXIT_OPENBOX_FAILURE)
}

/// The other binaries are installed next to this one; else they are looked up in PATH.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
