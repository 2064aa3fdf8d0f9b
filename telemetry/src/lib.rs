//! How openbox's services log, in one place: human-readable lines on stderr (colour only
//! on a terminal), at a level chosen by `-v` flags and overridden by `OPENBOX_LOG` (an
//! `EnvFilter` such as `debug` or `openbox_agent=trace`).
//!
//! Only binaries call this; libraries emit `tracing` events and never install anything.
//! Beside logging: the open-file limit a service raises at start, and the manual pages a
//! service binary writes when `openbox man` asks for them (`--man-pages DIR`).

/// The variable that overrides the level, for every openbox process.
pub const LOG_ENV: &str = "OPENBOX_LOG";

/// Installs the subscriber: `info` by default, `debug` with one `-v`, `trace` with two.
pub fn init(verbose: u8) {
    init_at(["info", "debug", "trace"][usize::from(verbose.min(2))]);
}

/// Installs the subscriber at `default` unless `OPENBOX_LOG` says otherwise — `warn` for
/// a process whose stderr is the user's own (a call run without openboxd).
pub fn init_at(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// As [`init_at`], with `extra` seeing events too, under a filter of its own (the level
/// set here does not hold them back).
pub fn init_at_with<L>(default: &str, extra: L)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| default.into());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    tracing_subscriber::registry().with(extra).with(log).init();
}

/// Raises this process's limit on open files to the most it may have, so that a flood of
/// connections does not leave a service unable to open the files and sockets real work
/// needs (the usual soft limit is 1024). Services call it first thing.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
}

/// How much of an untrusted value a log line shows.
const UNTRUSTED_MAX: usize = 200;

/// Text from outside (a user name or key id a client sent, a node id in a request) made
/// safe for a log line: control characters such as newline and ESC are shown escaped, so
/// nobody can forge a line or send a terminal sequence to whoever reads the log; and it is
/// cut short.
pub fn untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(UNTRUSTED_MAX));
    for (i, c) in text.chars().enumerate() {
        if i == UNTRUSTED_MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `DIR` when this process was started as `BINARY FLAG DIR` (`proto::MAN_PAGES_ARG`:
/// checked before the binary's own flags are parsed, so it needs none of them).
pub fn man_pages_dir(flag: &str) -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    (args.next()? == flag).then(|| args.next().map(Into::into)).flatten()
}

/// Writes `cmd`'s manual page and one per subcommand into `dir` (named after the command's
/// display name: `openbox-control.1`, `openbox-control-migrate.1`).
pub fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> std::process::ExitCode {
    match std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the manual pages into {}: {e}", dir.display());
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn untrusted_text_cannot_forge_a_log_line_or_a_terminal_sequence() {
        let forged = super::untrusted("bob\n2026-01-01T00:00:00Z  INFO accepted\u{1b}[2J");
        assert!(!forged.chars().any(char::is_control), "{forged}");
        assert_eq!(forged, "bob\\n2026-01-01T00:00:00Z  INFO accepted\\u{1b}[2J");
        assert_eq!(super::untrusted(&"x".repeat(500)).chars().count(), 201);
        assert_eq!(super::untrusted("plain-name_1"), "plain-name_1");
    }
}
