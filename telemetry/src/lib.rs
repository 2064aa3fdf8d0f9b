//! How openbox's services log, in one place: human-readable lines on stderr (colour only
//! on a terminal), at a level chosen by `-v` flags and overridden by `OPENBOX_LOG` (an
//! `EnvFilter` such as `debug` or `openbox_agent=trace`).
//!
//! Only binaries call this; libraries emit `tracing` events and never install anything.

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
